"""Test oracle: the per-tensor quantizer state the callbacks used before the grouped state (ecqx.group_state).

Kept unchanged (apart from this paragraph) as the reference that :class:`ecqx.group_state.UniformGroup` and
:class:`ecqx.group_state.TernaryGroup` must reproduce bit for bit; it is not part of the package.

Per-tensor quantizer state: :class:`TensorState`.

One object per quantized tensor holds everything a training step needs and a checkpoint must keep: the grid
(levels, Δ, qp, qp_density), global Λ/γ, the size decay δ_l, the last λ, the ECQx running relevance, the EC2T
magnitudes and phase, and the last assignment. A training step (what :mod:`ecqx.callbacks` does) is::

    state = TensorState.for_ecq(weight, bits=4, lam=0.05, decay=size_decay(n, n_max))   # or for_ec2t(...)
    shadow = make_shadow(weight)                                  # once, own storage
    ...  # forward/backward on the quantized weight
    shadow.grad = state.shadow_gradient(weight.grad, weight)      # EC2T: also fills state.w_n/w_p.grad;
                                                                  # None in EC2T's frozen phase
    ...  # optimizer steps on shadow (EC2T: also on [state.w_n, state.w_p])
    state.clamp_magnitudes(shadow)                                # EC2T only (no-op otherwise)
    state.update_relevance(relevances[name])                      # ECQx only
    weight.data.copy_(state.requantize(shadow))                   # entropy-constrained re-assignment
    ...  # export: state.export() -> QuantizedTensor for ecqx.coding

**What is trained is what is exported**, in both modes: the grid is always snapped to an NNC step size
(``faithful`` mode selects only the reference's pmf update, λ_max rule, gradient sign conventions), and EC2T
trains on the snapped ternary values {−a, 0, b}·Δ, so ``export().dequantize()`` equals the last
:meth:`TensorState.requantize` output bit for bit.

``state_dict()`` holds only tensors and Python scalars and :meth:`load_state_dict` restores it exactly;
``to(device)`` moves the tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ecqx._checks import check_choice, check_mode, check_nonnegative
from ecqx.assign import DEFAULT_P, assign, values_of
from ecqx.ec2t import (
    DEFAULT_INIT_SCALE,
    DEFAULT_RESOLUTION,
    clamp_magnitudes,
    ec2t_assign,
    ec2t_gradients,
    frozen_values,
    init_magnitudes,
    magnitude_floor,
    ternary_grid,
    ternary_step,
)
from ecqx.grid import DEFAULT_PERCENTILE, Grid, snap_grid, uniform_grid
from ecqx.quantized import QuantizedTensor
from ecqx.ste import STE_SCALES, default_ste_scale, ste_gradient
from ecqx.stepsize import DEFAULT_SNAP_RTOL

METHODS = ("ecq", "ecqx", "ec2t")
PHASES = ("assign", "frozen")
DEFAULT_ALPHA = 0.1
_TENSOR_FIELDS = ("relevance", "w_n", "w_p", "indices")
_SCALAR_FIELDS = ("method", "mode", "lam", "decay", "p", "ste_scale", "relevance_alpha", "lam_layer", "phase",
                  "zero_fraction", "relevance_flips")


@dataclass
class TensorState:
    """Quantizer state of one tensor (see the module docstring for the training-step protocol)."""

    method: str
    mode: str
    grid: Grid
    lam: float
    decay: float = 1.0
    p: float = DEFAULT_P
    ste_scale: str = "abs"
    relevance_alpha: float = DEFAULT_ALPHA
    lam_layer: float = 0.0
    phase: str = "assign"
    zero_fraction: float = 0.0
    relevance_flips: int = 0
    relevance: torch.Tensor | None = None
    w_n: torch.Tensor | None = None
    w_p: torch.Tensor | None = None
    indices: torch.Tensor | None = None

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        check_mode(self.mode)
        check_choice("ste_scale", self.ste_scale, STE_SCALES)
        check_choice("phase", self.phase, PHASES)
        check_nonnegative("lam", self.lam)
        check_nonnegative("p", self.p)
        if not 0 <= self.relevance_alpha <= 1:
            raise ValueError(f"relevance_alpha must be in [0, 1], got {self.relevance_alpha!r}")
        if not self.grid.snapped:
            raise ValueError(
                f"grid step {self.grid.step!r} is not snapped to an NNC step (qp is None); a TensorState "
                "trains exactly the values it exports. HINT: ecqx.grid.snap_grid(grid)"
            )

    # construction -------------------------------------------------------------------------------------------
    @classmethod
    def for_ecq(cls, weight: torch.Tensor, bits: int = 4, lam: float = 0.05, decay: float = 1.0,
                mode: str = "clean", relevance: bool = False, p: float = DEFAULT_P,
                ste_scale: str | None = None, percentile: float = DEFAULT_PERCENTILE,
                snap_rtol: float = DEFAULT_SNAP_RTOL, relevance_alpha: float = DEFAULT_ALPHA) -> TensorState:
        """State for ECQ (``relevance=False``) or ECQx (``relevance=True``), grid built from ``weight``.

        The grid is snapped to an NNC step in both modes (the faithful reference step, snapped), so the
        trained values are exactly the exported ones.
        """
        grid = uniform_grid(weight, bits, mode, percentile=percentile, snap_rtol=snap_rtol)
        grid = snap_grid(grid, snap_rtol)
        return cls(method="ecqx" if relevance else "ecq", mode=mode, grid=grid, lam=lam, decay=decay, p=p,
                   ste_scale=ste_scale or default_ste_scale(mode), relevance_alpha=relevance_alpha)

    @classmethod
    def for_ec2t(cls, weight: torch.Tensor, gamma: float = 0.15, decay: float = 1.0, mode: str = "clean",
                 init_scale: float = DEFAULT_INIT_SCALE, resolution: int = DEFAULT_RESOLUTION,
                 snap_rtol: float = DEFAULT_SNAP_RTOL) -> TensorState:
        """State for EC2T: magnitudes from ``weight`` (leaf tensors to optimise), Δ fixed for export."""
        w_n, w_p = init_magnitudes(weight, init_scale)
        qp, qp_density, step = ternary_step(w_n, w_p, resolution, snap_rtol=snap_rtol)
        grid = ternary_grid(w_n, w_p, qp, qp_density, step)
        magnitudes = [torch.tensor(v, dtype=torch.float32, device=weight.device, requires_grad=True)
                      for v in (w_n, w_p)]
        return cls(method="ec2t", mode=mode, grid=grid, lam=gamma, decay=decay, ste_scale="abs",
                   w_n=magnitudes[0], w_p=magnitudes[1])

    # training step ------------------------------------------------------------------------------------------
    def ternary_values(self) -> torch.Tensor:
        """EC2T values (−a·Δ, 0, b·Δ) of the last :meth:`requantize` (the snapped grid's, in both modes)."""
        return self.grid.values(self.w_n.device)

    def _refresh_ternary_grid(self, shadow: torch.Tensor) -> None:
        self.grid = ternary_grid(self.w_n.item(), self.w_p.item(), self.grid.qp, self.grid.qp_density,
                                 self.grid.step, magnitude_floor(shadow))

    def requantize(self, shadow: torch.Tensor) -> torch.Tensor:
        """Re-assign from the shadow weights; returns the quantized tensor (shadow's shape, dtype, device).

        EC2T re-rounds the grid to the current magnitudes first; in the frozen phase it keeps the assignment
        (``lam_layer`` is then 0: no entropy-constrained assignment ran).
        """
        if self.method == "ec2t":
            self._refresh_ternary_grid(shadow)
            values = self.grid.values(shadow.device)
            if self.phase == "assign" or self.indices is None:
                self._record(ec2t_assign(shadow, values, self.lam, self.decay, self.mode))
            else:
                self.lam_layer, self.relevance_flips = 0.0, 0
            return frozen_values(self.indices, values).to(shadow.dtype)
        relevance = self.relevance if self.method == "ecqx" else None
        result = assign(shadow, self.grid, self.lam, self.decay, self.mode, relevance=relevance, p=self.p)
        self._record(result)
        return values_of(result, self.grid).to(shadow.dtype)

    def _record(self, result) -> None:
        self.indices = result.indices
        self.lam_layer = result.lam
        self.zero_fraction = result.zero_fraction
        self.relevance_flips = result.relevance_flips

    def levels(self) -> torch.Tensor:
        """Integer levels (int32) of the last :meth:`requantize`."""
        if self.indices is None:
            raise RuntimeError("no assignment yet: call requantize() first")
        return levels_of_indices(self.indices, self.grid)

    def shadow_gradient(self, grad: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor | None:
        """Shadow-weight gradient; for EC2T also sets (accumulates) ``w_n.grad`` / ``w_p.grad``.

        ``None`` in EC2T's frozen phase: the shadow is not stepped there, only the magnitudes are.
        """
        if self.method != "ec2t":
            return ste_gradient(grad, quantized, self.ste_scale)
        if self.indices is None:
            raise RuntimeError("call requantize() before shadow_gradient() for an EC2T state")
        # the magnitudes the forward pass used: the snapped grid's a·Δ and b·Δ
        a, b = -self.grid.levels[0] * self.grid.step, self.grid.levels[2] * self.grid.step
        shadow_grad, grad_n, grad_p = ec2t_gradients(grad, self.indices, a, b, self.mode)
        for magnitude, g in ((self.w_n, grad_n), (self.w_p, grad_p)):
            g = g.detach().to(magnitude.dtype).reshape(magnitude.shape)
            magnitude.grad = g.clone() if magnitude.grad is None else magnitude.grad + g
        return None if self.phase == "frozen" else shadow_grad

    def clamp_magnitudes(self, shadow: torch.Tensor) -> None:
        """EC2T: w_n, w_p ≥ 0.675·std(shadow), in place (no-op for ECQ/ECQx)."""
        if self.method == "ec2t":
            clamp_magnitudes(self.w_n, self.w_p, shadow)

    def freeze(self) -> None:
        """Enter EC2T's frozen-assignment phase: the assignment is kept, only the magnitudes train."""
        if self.method != "ec2t":
            raise ValueError(f"only EC2T states have a frozen-assignment phase, this one is {self.method!r}")
        self.phase = "frozen"

    def update_relevance(self, relevance: torch.Tensor) -> None:
        """Running relevance R ← (1 − α)·R_batch + α·R (α = ``relevance_alpha``); the first batch sets R."""
        if self.relevance is not None and relevance.shape != self.relevance.shape:
            raise ValueError(f"relevance shape {tuple(relevance.shape)} != {tuple(self.relevance.shape)}")
        relevance = relevance.detach().to(torch.float32)
        if self.relevance is None:
            self.relevance = relevance.clone()
        else:
            self.relevance = (1 - self.relevance_alpha) * relevance + self.relevance_alpha * self.relevance

    def reset_relevance(self) -> None:
        """Forget the running relevance (the reference does this at every epoch start)."""
        self.relevance = None

    # export and checkpointing -------------------------------------------------------------------------------
    def export(self) -> QuantizedTensor:
        """The last assignment as a :class:`QuantizedTensor`; ``dequantize()`` is the trained tensor exactly.

        EC2T tensors always carry their codebook ``[−a, 0, b]``; uniform grids carry none.
        """
        codebook = self.grid.level_tensor() if self.method == "ec2t" else None
        return QuantizedTensor(self.levels(), self.grid.qp, self.grid.qp_density, codebook=codebook)

    def state_dict(self) -> dict:
        """Plain tensors and Python scalars only (fits a Lightning checkpoint)."""
        out = {name: getattr(self, name) for name in _SCALAR_FIELDS}
        out["grid"] = self.grid.to_dict()
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            out[name] = None if value is None else value.detach().clone()
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore exactly what :meth:`state_dict` returned (magnitudes stay the same leaf tensors)."""
        missing = {"grid", *_SCALAR_FIELDS, *_TENSOR_FIELDS} - set(state)
        if missing:
            raise KeyError(f"TensorState.load_state_dict: missing keys {sorted(missing)}")
        for name in _SCALAR_FIELDS:
            setattr(self, name, state[name])
        self.grid = Grid.from_dict(state["grid"])
        self.relevance = None if state["relevance"] is None else state["relevance"].clone()
        self.indices = None if state["indices"] is None else state["indices"].clone()
        for name in ("w_n", "w_p"):
            self._load_magnitude(name, state[name])
        self.__post_init__()

    def _load_magnitude(self, name: str, value: torch.Tensor | None) -> None:
        current = getattr(self, name)
        if value is None or current is None:
            setattr(self, name, None if value is None else value.clone().requires_grad_(True))
            return
        with torch.no_grad():
            current.copy_(value)

    @classmethod
    def from_state_dict(cls, state: dict) -> TensorState:
        """A new state restored from :meth:`state_dict` output."""
        obj = cls(method=state["method"], mode=state["mode"], grid=Grid.from_dict(state["grid"]),
                  lam=state["lam"])
        obj.load_state_dict(state)
        return obj

    def to(self, device) -> TensorState:
        """Move the tensors to ``device`` in place (EC2T magnitudes stay leaf tensors); returns self."""
        for name in ("relevance", "indices"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        for name in ("w_n", "w_p"):
            value = getattr(self, name)
            if value is not None and value.device != torch.device(device):
                setattr(self, name, value.detach().to(device).requires_grad_(True))
        return self


def levels_of_indices(indices: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Integer levels of grid cluster ``indices`` (int32)."""
    return grid.level_tensor(indices.device)[indices]


__all__ = ["TensorState", "levels_of_indices"]
