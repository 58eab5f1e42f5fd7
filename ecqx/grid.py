"""Quantization grids: integer levels times one step size Δ, Δ snapped to an NNC-expressible step.

A :class:`Grid` is the codebook of one tensor: sorted integer ``levels`` that always contain 0 and a step
``step``; the quantized values are ``float32(level) * float32(step)``.

* :func:`uniform_grid` builds the ECQ/ECQx b-bit grid of the reference (spec ecqx-ec2t.md §2.2): Δ from the
  99.9th percentile of |W| (numpy ``linear`` interpolation), the extra level on the heavier side by a 5-vote
  majority, an unsigned grid when W has no negative entry. In ``clean`` mode Δ is snapped at once to
  Δ(qp, qp_density) (:func:`ecqx.stepsize.snap_step`), so training and export see the same values; in
  ``faithful`` mode Δ keeps the reference's unsnapped value (``qp is None``) and :func:`snap_grid` snaps it at
  export time, reporting the largest weight change this causes.
* Ternary EC2T grids {−a, 0, +b}·Δ are built in :mod:`ecqx.ec2t` with the same class.

Grids are immutable and hold only Python scalars, so they go into checkpoints as plain dicts
(:meth:`Grid.to_dict` / :meth:`Grid.from_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ecqx._checks import check_bits, check_float_tensor, check_mode
from ecqx.stepsize import DEFAULT_SNAP_RTOL, nnc_step_size, snap_step

DEFAULT_PERCENTILE = 99.9


@dataclass(frozen=True)
class Grid:
    """Integer levels (sorted, containing 0) times a step size; ``qp``/``qp_density`` None while unsnapped."""

    levels: tuple[int, ...]
    step: float
    qp: int | None = None
    qp_density: int | None = None
    raw_step: float | None = None

    def __post_init__(self):
        levels = tuple(int(v) for v in self.levels)
        if 0 not in levels or list(levels) != sorted(set(levels)):
            raise ValueError(f"grid levels must be strictly increasing integers containing 0, got {levels}")
        if not self.step > 0:
            raise ValueError(f"grid step must be positive, got {self.step!r}")
        if (self.qp is None) != (self.qp_density is None):
            raise ValueError("grid qp and qp_density must both be set or both be None")
        if self.qp is not None and nnc_step_size(self.qp, self.qp_density) != self.step:
            raise ValueError(f"grid step {self.step!r} is not Δ(qp={self.qp}, qp_density={self.qp_density})")
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "raw_step", float(self.step if self.raw_step is None else self.raw_step))

    @property
    def zero_index(self) -> int:
        return self.levels.index(0)

    @property
    def snapped(self) -> bool:
        return self.qp is not None

    @property
    def is_contiguous(self) -> bool:
        """True for a uniform grid (consecutive integers); False for a sparse codebook (EC2T)."""
        return self.levels == tuple(range(self.levels[0], self.levels[-1] + 1))

    def level_tensor(self, device=None) -> torch.Tensor:
        return torch.tensor(self.levels, dtype=torch.int32, device=device)

    def values(self, device=None) -> torch.Tensor:
        """The quantized values as float32: ``float32(level) * float32(step)`` (exact when snapped)."""
        if self.snapped:
            return self.level_tensor(device).to(torch.float32) * torch.tensor(self.step, dtype=torch.float32)
        return (torch.tensor(self.levels, dtype=torch.float64, device=device) * self.step).to(torch.float32)

    def to_dict(self) -> dict:
        return {"levels": list(self.levels), "step": self.step, "qp": self.qp, "qp_density": self.qp_density,
                "raw_step": self.raw_step}

    @classmethod
    def from_dict(cls, data: dict) -> Grid:
        return cls(levels=tuple(data["levels"]), step=float(data["step"]), qp=data["qp"],
                   qp_density=data["qp_density"], raw_step=data["raw_step"])


def percentile_abs(weights: torch.Tensor, percentile: float = DEFAULT_PERCENTILE) -> float:
    """``percentile``-th percentile of |weights|, numpy's default (linear) interpolation, float64."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
    values = weights.detach().abs().flatten().to(torch.float64).sort().values
    position = percentile / 100.0 * (values.numel() - 1)
    below = int(position)
    above = min(below + 1, values.numel() - 1)
    fraction = position - below
    low, high = values[below].item(), values[above].item()
    return low + (high - low) * fraction


def positive_side_heavier(weights: torch.Tensor) -> bool:
    """5-vote majority of spec §2.2 (extreme, mean, count, sum, std of each side); ties vote negative."""
    w = weights.detach().flatten().to(torch.float64)
    pos, neg = w[w > 0], w[w < 0]

    def stat(values, fn):
        return fn(values).item() if values.numel() else 0.0

    votes = [
        stat(pos, torch.max) > abs(stat(neg, torch.min)),
        stat(pos, torch.mean) > abs(stat(neg, torch.mean)),
        pos.numel() > neg.numel(),
        stat(pos, torch.sum) > abs(stat(neg, torch.sum)),
        stat(pos, lambda v: v.std(unbiased=False)) > stat(neg, lambda v: v.std(unbiased=False)),
    ]
    return sum(votes) >= 3


def uniform_levels(bits: int, signed: bool, positive_heavy: bool) -> tuple[int, ...]:
    """The 2^bits integer levels: 0…2^b−1 (unsigned), else −(2^(b−1)−1)…2^(b−1) or −2^(b−1)…2^(b−1)−1."""
    check_bits(bits)
    if not signed:
        return tuple(range(0, 2 ** bits))
    half = 2 ** (bits - 1)
    return tuple(range(-half + 1, half + 1)) if positive_heavy else tuple(range(-half, half))


def reference_step(weights: torch.Tensor, bits: int, signed: bool,
                   percentile: float = DEFAULT_PERCENTILE) -> float:
    """Unsnapped Δ of the reference: P(|W|)/(2^(b−1)−1) signed, P(|W|)/(2^b−1) unsigned; max|W| if P is 0."""
    top = percentile_abs(weights, percentile)
    if top == 0.0:
        top = weights.detach().abs().max().item()
    if top == 0.0:
        raise ValueError("cannot build a grid for an all-zero tensor: every step size would fit it")
    return top / (2 ** (bits - 1) - 1 if signed else 2 ** bits - 1)


def uniform_grid(weights: torch.Tensor, bits: int = 4, mode: str = "clean",
                 percentile: float = DEFAULT_PERCENTILE, unsigned: bool = True,
                 snap_rtol: float = DEFAULT_SNAP_RTOL) -> Grid:
    """Build the b-bit ECQ grid of one tensor (see module docstring); snapped to an NNC step in clean mode."""
    check_float_tensor("weights", weights)
    check_bits(bits)
    check_mode(mode)
    signed = not (unsigned and bool((weights >= 0).all()))
    levels = uniform_levels(bits, signed, positive_side_heavier(weights) if signed else True)
    raw = reference_step(weights, bits, signed, percentile)
    if mode == "faithful":
        return Grid(levels=levels, step=raw, raw_step=raw)
    qp, qp_density, step = snap_step(raw, rtol=snap_rtol)
    return Grid(levels=levels, step=step, qp=qp, qp_density=qp_density, raw_step=raw)


def snap_grid(grid: Grid, snap_rtol: float = DEFAULT_SNAP_RTOL) -> Grid:
    """``grid`` with its step snapped to the nearest NNC step (same levels); snapped grids unchanged."""
    if grid.snapped:
        return grid
    qp, qp_density, step = snap_step(grid.step, rtol=snap_rtol)
    return Grid(levels=grid.levels, step=step, qp=qp, qp_density=qp_density, raw_step=grid.raw_step)
