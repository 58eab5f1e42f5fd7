"""EC2T: entropy-constrained trained ternarization (spec ecqx-ec2t.md §4, §8b).

Each ternary tensor has three values {−w_n, 0, +w_p} with learned magnitudes w_n, w_p > 0:

* :func:`init_magnitudes` — w_p = s·max(W), w_n = s·|min(W)| (s = ``init_scale``, default 0.3);
* :func:`clamp_magnitudes` — after every centroid step, w_p, w_n ≥ 0.675·std(shadow)
  (:func:`magnitude_floor`);
* :func:`ec2t_assign` — entropy-constrained assignment to the three values: pmf with the 50 % zero floor
  (empty clusters count 1), λ = γ·δ_l·λ_max with the thesis λ_max and the min rule (both modes);
* :func:`frozen_values` — the frozen-assignment phase: T = w_p·[p] − w_n·[n] with the assignment kept;
* :func:`ec2t_gradients` — shadow gradient g·w_p / g·w_n / g (TTQ rule) and the magnitude gradients:
  ∂/∂w_p = Σ_p g; ∂/∂w_n = −Σ_n g in clean mode (the true derivative of the value −w_n), +Σ_n g in
  faithful mode.

NNC export (invariant "what you train is what you ship"): in clean mode the values used in training are
integer multiples of one NNC step Δ fixed per tensor (:func:`ternary_step`): the effective magnitudes are
a·Δ and b·Δ with a, b ≥ 1 the rounded latent magnitudes (never below the floor), so the tensor is exactly
``codebook[index] × Δ`` with the int32 codebook [−a, 0, b] (:func:`ternary_grid`). The latent float magnitudes
keep receiving the gradient (straight through the rounding). Faithful mode trains on the unsnapped magnitudes
and snaps only at export.
"""

from __future__ import annotations

import math

import torch

from ecqx._checks import check_float_tensor, check_mode, check_nonnegative
from ecqx.assign import DEFAULT_CHUNK, Assignment, ec_assign
from ecqx.grid import Grid
from ecqx.stepsize import DEFAULT_SNAP_RTOL, snap_step

FLOOR_FACTOR = 0.675
DEFAULT_INIT_SCALE = 0.3
#: the latent magnitudes are resolved to about 1/2^resolution of the larger one.
DEFAULT_RESOLUTION = 8
NEGATIVE, ZERO, POSITIVE = 0, 1, 2


def init_magnitudes(weights: torch.Tensor, init_scale: float = DEFAULT_INIT_SCALE) -> tuple[float, float]:
    """Initial magnitudes ``(w_n, w_p) = (s·|min W|, s·max W)``; W needs both signs."""
    check_float_tensor("weights", weights)
    if not 0 < init_scale <= 1:
        raise ValueError(f"init_scale must be in (0, 1], got {init_scale!r}")
    w_min, w_max = weights.min().item(), weights.max().item()
    if not (w_min < 0 < w_max):
        raise ValueError(f"EC2T needs weights of both signs to initialise w_n and w_p, "
                         f"got range [{w_min}, {w_max}]")
    return init_scale * abs(w_min), init_scale * w_max


def magnitude_floor(shadow: torch.Tensor) -> float:
    """0.675 · std(shadow) (unbiased std, taken in float64), the lower bound of both magnitudes.

    float64 makes the floor independent of the summation order, which differs between devices and between a
    whole-tensor and a grouped (:class:`ecqx.layout.FlatLayout`) reduction.
    """
    return FLOOR_FACTOR * shadow.detach().double().std().item()


def clamp_magnitudes(w_n: torch.Tensor, w_p: torch.Tensor, shadow: torch.Tensor) -> None:
    """In place: w_n, w_p ← max(·, 0.675·std(shadow))."""
    floor = magnitude_floor(shadow)
    with torch.no_grad():
        w_n.clamp_(min=floor)
        w_p.clamp_(min=floor)


def ternary_step(w_n: float, w_p: float, resolution: int = DEFAULT_RESOLUTION,
                 snap_rtol: float = DEFAULT_SNAP_RTOL) -> tuple[int, int, float]:
    """NNC ``(qp, qp_density, Δ)`` for a ternary tensor: about max(w_n, w_p) / 2^resolution, snapped."""
    if not (w_n > 0 and w_p > 0):
        raise ValueError(f"magnitudes must be positive, got w_n={w_n!r}, w_p={w_p!r}")
    if not 1 <= resolution <= 16:
        raise ValueError(f"resolution must be an integer in 1..16, got {resolution!r}")
    return snap_step(max(w_n, w_p) / 2 ** resolution, rtol=snap_rtol)


def _multiple(magnitude: float, step: float, floor: float) -> int:
    return max(1, round(magnitude / step), math.ceil(floor / step - 1e-9))


def ternary_grid(w_n: float, w_p: float, qp: int, qp_density: int, step: float, floor: float = 0.0) -> Grid:
    """Grid {−a, 0, b}·Δ for the latent magnitudes (a, b rounded, ≥ 1, a·Δ and b·Δ ≥ ``floor``)."""
    levels = (-_multiple(w_n, step, floor), 0, _multiple(w_p, step, floor))
    return Grid(levels=levels, step=step, qp=qp, qp_density=qp_density)


def ternary_values(w_n: float, w_p: float, grid: Grid | None) -> torch.Tensor:
    """The three float32 values (−w_n, 0, w_p) — from the snapped grid when given, else the raw magnitudes."""
    if grid is not None:
        return grid.values()
    return torch.tensor([-w_n, 0.0, w_p], dtype=torch.float32)


def ec2t_assign(shadow: torch.Tensor, values: torch.Tensor, gamma: float, decay: float = 1.0,
                mode: str = "clean", chunk_size: int = DEFAULT_CHUNK) -> Assignment:
    """Entropy-constrained ternary assignment (indices 0 = −w_n, 1 = 0, 2 = +w_p); ``gamma=0`` is nearest."""
    check_mode(mode)
    check_nonnegative("gamma", gamma)
    if values.numel() != 3:
        raise ValueError(f"EC2T needs exactly three values (-w_n, 0, w_p), got {values.tolist()}")
    return ec_assign(shadow, values, ZERO, gamma, decay, pmf_mode=mode, lambda_rule="thesis",
                     empty_clusters="count_one", chunk_size=chunk_size)


def frozen_values(indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Ternary tensor for a kept assignment: ``values[indices]`` (values = (−w_n, 0, w_p))."""
    return values.to(indices.device)[indices]


def ec2t_gradients(grad: torch.Tensor, indices: torch.Tensor, w_n: float, w_p: float,
                   mode: str = "clean") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(shadow_grad, grad_w_n, grad_w_p)`` from the gradient on the ternary tensor (module docstring)."""
    check_mode(mode)
    if grad.shape != indices.shape:
        raise ValueError(f"grad shape {tuple(grad.shape)} != indices shape {tuple(indices.shape)}")
    is_neg, is_pos = indices == NEGATIVE, indices == POSITIVE
    scale = torch.where(is_pos, w_p, torch.where(is_neg, w_n, 1.0)).to(grad.dtype)
    # sums in float64 (then rounded to the gradient's dtype): independent of the summation order
    sum_neg = grad[is_neg].double().sum().to(grad.dtype)
    grad_w_n = -sum_neg if mode == "clean" else sum_neg
    return grad * scale, grad_w_n, grad[is_pos].double().sum().to(grad.dtype)
