"""Quantizer state of a group of tensors: the one state the training callbacks use, sync-free per step.

All quantized tensors of a model form one group. Its element-wise state lives in flat buffers of one
:class:`~ecqx.layout.FlatLayout` (shadow weights, quantized values, cluster indices, ECQx running relevance),
its per-tensor state in ``[T]`` device tensors (λ, sparsity, EC2T magnitudes and levels), and one training
step is a fixed sequence of tensor operations that never waits for the device:

    group = UniformGroup(names, shapes, bits=4, lam=0.05)  # ECQ / ECQx (relevance=True); EC2T: TernaryGroup
    group.initialise(weights)       # grids from the weights, shadows = weights, first assignment
    ...                             # forward/backward on the quantized values (group.quantized_views)
    torch._foreach_copy_(group.grad_views, grads)
    group.shadow_gradient()         # in place: group.grad becomes the shadow gradient (EC2T: magnitudes)
    ...                             # the optimizer steps the shadows; copy them to group.shadow_views
    group.update_relevance(flat)    # ECQx: a flat relevance buffer (group.layout.flatten)
    group.clamp_magnitudes()        # EC2T, after its optimizer stepped group.magnitudes
    group.requantize()              # entropy-constrained re-assignment; group.quantized holds the new values
    ...                             # export: group.export() -> {name: QuantizedTensor}; group.statistics()

Both kinds of group implement the :class:`QuantizerGroup` protocol; only :meth:`export`,
:meth:`statistics`, :meth:`levels` and :meth:`state_dict` bring values to the host (export, logging and
checkpoint time). The results equal those of the per-tensor maths (:func:`ecqx.assign.assign`,
:mod:`ecqx.ec2t`) bit for bit. **What is trained is what is exported**: grids are snapped to NNC step sizes,
so ``export()[name].dequantize()`` equals that tensor's part of ``quantized``.

``state_dict()`` holds plain tensors and Python scalars keyed by tensor name (one entry per tensor: shadow,
levels, grid, decay and the method's fields), and :meth:`load_state_dict` restores it exactly, so a checkpoint
does not depend on the layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ecqx._checks import check_choice, check_mode, check_nonnegative
from ecqx.assign import DEFAULT_P
from ecqx.ec2t import (
    DEFAULT_INIT_SCALE,
    DEFAULT_RESOLUTION,
    FLOOR_FACTOR,
    NEGATIVE,
    POSITIVE,
    init_magnitudes,
    ternary_step,
)
from ecqx.entropy import size_decay
from ecqx.grid import DEFAULT_PERCENTILE, Grid, snap_grid, uniform_grid
from ecqx.grouped import GroupAssignment, group_assign
from ecqx.layout import FlatLayout
from ecqx.quantized import QuantizedTensor
from ecqx.ste import STE_SCALES, default_ste_scale
from ecqx.stepsize import DEFAULT_SNAP_RTOL

DEFAULT_ALPHA = 0.1


@dataclass
class TensorStatistics:
    """Host statistics of one tensor's latest assignment (for logging)."""

    numel: int
    zeros: int
    entropy_bits: float
    lam: float
    relevance_flips: int = 0


class QuantizerGroup(Protocol):
    """What the callbacks use of a group state (:class:`UniformGroup`, :class:`TernaryGroup`)."""

    names: list[str]
    layout: FlatLayout
    shadow: torch.Tensor
    quantized: torch.Tensor
    grad: torch.Tensor
    shadow_views: list[torch.Tensor]
    quantized_views: list[torch.Tensor]
    grad_views: list[torch.Tensor]

    def initialise(self, weights: Sequence[torch.Tensor]) -> None: ...
    def shadow_gradient(self) -> bool: ...
    def requantize(self) -> None: ...
    def export(self) -> dict[str, QuantizedTensor]: ...
    def levels(self) -> dict[str, torch.Tensor]: ...
    def statistics(self) -> dict[str, TensorStatistics]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def to(self, device) -> QuantizerGroup: ...


class _GroupBase:
    """Buffers, statistics and checkpoint plumbing shared by both kinds of group."""

    method = "base"

    def __init__(
        self, names: Sequence[str], shapes: Sequence[torch.Size], lam: float, mode: str, device=None
    ) -> None:
        check_mode(mode)
        check_nonnegative("lam", lam)
        if len(names) != len(shapes) or len(set(names)) != len(names):
            raise ValueError(f"need one distinct name per shape, got {list(names)} for {len(shapes)} shapes")
        self.names = list(names)
        self.layout = FlatLayout(shapes, device=device)
        self.lam = float(lam)
        self.mode = mode
        largest = max(self.layout.numels)
        self.decays = [size_decay(n, largest) for n in self.layout.numels]
        self._lam_decay = torch.tensor(
            [self.lam * d for d in self.decays], dtype=torch.float64, device=self.layout.device
        )
        self._allocate()
        self.indices: torch.Tensor | None = None
        zeros = torch.zeros(len(self.names), dtype=torch.float64, device=self.layout.device)
        self.lam_layer = zeros.clone()
        self.zero_fraction = zeros.clone()
        self.relevance_flips = torch.zeros(len(self.names), dtype=torch.int64, device=self.layout.device)

    def _allocate(self) -> None:
        """Persistent flat buffers and their per-tensor views (built once: the step reuses them)."""
        self.shadow = self.layout.empty()
        self.quantized = self.layout.empty()
        self.grad = self.layout.empty()
        self.shadow_views = self.layout.views(self.shadow)
        self.quantized_views = self.layout.views(self.quantized)
        self.grad_views = self.layout.views(self.grad)
        self._floor_cache = None  # derived from the shadow buffer (TernaryGroup)

    @property
    def device(self) -> torch.device:
        return self.layout.device

    def set_shadow(self, weights: Sequence[torch.Tensor]) -> None:
        """Copy ``weights`` (layout order) into the shadow buffer."""
        torch._foreach_copy_(self.shadow_views, [w.detach() for w in weights])

    def _write_quantized(self, indices: torch.Tensor) -> None:
        self.quantized.copy_(self.layout.take(self._centroids(), indices))

    def _check_weights(self, weights: Sequence[torch.Tensor]) -> None:
        if len(weights) != len(self.names):
            raise ValueError(f"expected {len(self.names)} weight tensors, got {len(weights)}")
        for name, w, shape in zip(self.names, weights, self.layout.shapes, strict=True):
            if w.shape != shape:
                raise ValueError(
                    f"tensor {name!r} has shape {tuple(w.shape)}, the group expects {tuple(shape)}"
                )
            if not w.is_floating_point():
                raise TypeError(f"tensor {name!r} must be a float tensor, got {w.dtype}")
            if not bool(torch.isfinite(w).all()):
                raise ValueError(f"tensor {name!r} contains NaN or Inf; cannot build its quantization grid")

    def _record(self, result: GroupAssignment) -> None:
        self.indices = result.indices
        self.lam_layer = result.lam
        self.zero_fraction = result.zero_fraction
        self.relevance_flips = result.relevance_flips

    def _level_table(self) -> torch.Tensor:
        """``[T, K]`` int32 levels of every tensor's grid."""
        raise NotImplementedError

    def _level_buffer(self) -> torch.Tensor:
        if self.indices is None:
            raise RuntimeError("no assignment yet: call initialise() or requantize() first")
        return self.layout.take(self._level_table(), self.indices)

    def levels(self) -> dict[str, torch.Tensor]:
        """Integer levels (int32) of every tensor's current assignment, by name."""
        return dict(zip(self.names, self.layout.split(self._level_buffer()), strict=True))

    def statistics(self) -> dict[str, TensorStatistics]:
        """Per-tensor sparsity, empirical entropy, λ and relevance flips (brings values to the host)."""
        table = self._level_table()
        k = table.shape[1]
        counts = self.layout.count(self.indices, k).cpu()
        numel = self.layout.numels
        zero_index = (table == 0).int().argmax(dim=1).cpu()
        lam, flips = self.lam_layer.cpu().tolist(), self.relevance_flips.cpu().tolist()
        out = {}
        for t, name in enumerate(self.names):
            pmf = counts[t][counts[t] > 0].double() / numel[t]
            out[name] = TensorStatistics(
                numel=numel[t],
                zeros=int(counts[t, zero_index[t]]),
                entropy_bits=float(-(pmf * torch.log2(pmf)).sum()),
                lam=lam[t],
                relevance_flips=int(flips[t]),
            )
        return out

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and Python scalars, one entry per tensor name (see the module docstring)."""
        shadows = self.layout.split(self.shadow)
        levels = self.levels()
        tensors = {}
        for t, (name, entry) in enumerate(zip(self.names, self._tensor_entries(), strict=True)):
            tensors[name] = {"shadow": shadows[t], "levels": levels[name], "decay": self.decays[t], **entry}
        return {
            "method": self.method,
            "mode": self.mode,
            "lam": self.lam,
            "tensors": tensors,
            **self._group_entry(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (also the per-tensor entries of earlier checkpoints)."""
        tensors = state.get("tensors")
        if not isinstance(tensors, dict) or set(tensors) != set(self.names):
            found = sorted(tensors) if isinstance(tensors, dict) else tensors
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the state holds tensors {found}, the group "
                f"quantizes {self.names}"
            )
        entries = [tensors[name] for name in self.names]
        for name, entry in zip(self.names, entries, strict=True):
            missing = {"shadow", "levels", *self._entry_fields()} - set(entry)
            if missing:
                raise KeyError(
                    f"{type(self).__name__}.load_state_dict: tensor {name!r} lacks {sorted(missing)}"
                )
        self.decays = [float(e.get("decay", d)) for e, d in zip(entries, self.decays, strict=True)]
        self._lam_decay = torch.tensor(
            [self.lam * d for d in self.decays], dtype=torch.float64, device=self.device
        )
        self.set_shadow([e["shadow"].to(device=self.device, dtype=torch.float32) for e in entries])
        self._load_entries(entries, state)
        levels = self.layout.flatten([e["levels"].to(self.device) for e in entries], dtype=torch.int64)
        self.indices = self._indices_of_levels(levels)
        self._write_quantized(self.indices)

    def _indices_of_levels(self, levels: torch.Tensor) -> torch.Tensor:
        """Cluster indices of flat integer ``levels`` (padding: level 0)."""
        raise NotImplementedError

    def to(self, device):
        """Move every buffer and table to ``device`` in place; returns self."""
        device = torch.device(device)
        if device == self.device:
            return self
        self.layout = self.layout.to(device)
        buffers = {name: getattr(self, name) for name in ("shadow", "quantized", "grad")}
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor) and name not in buffers and name != "magnitudes":
                setattr(self, name, value.to(device))
        self._allocate()
        for name, value in buffers.items():
            getattr(self, name).copy_(value)
        self._moved_to(device)
        return self

    def _moved_to(self, device: torch.device) -> None:
        pass

    # subclass interface
    def _centroids(self) -> torch.Tensor:
        raise NotImplementedError

    def _tensor_entries(self) -> list[dict[str, Any]]:
        """The method's checkpoint fields of every tensor (besides shadow, levels and decay)."""
        raise NotImplementedError

    def _group_entry(self) -> dict[str, Any]:
        return {}

    def _entry_fields(self) -> tuple[str, ...]:
        return ()

    def _load_entries(self, entries: list[dict[str, Any]], state: dict[str, Any]) -> None:
        raise NotImplementedError


class UniformGroup(_GroupBase):
    """ECQ (``relevance=False``) or ECQx (``relevance=True``) on a b-bit uniform grid per tensor.

    Args:
        names, shapes: the tensors of the group, in layout order.
        bits: grid bit width (2^bits levels including 0), the same for every tensor.
        lam: the global Λ. mode: ``"clean"`` or ``"faithful"`` (spec §7).
        relevance: ECQx (relevance-weighted zero cost, β search) instead of ECQ.
        p, relevance_alpha: ECQx's admissible sparsity band and weight of the previous running relevance.
        ste_scale: straight-through rule (default by mode). percentile, snap_rtol: grid construction.
    """

    def __init__(
        self,
        names: Sequence[str],
        shapes: Sequence[torch.Size],
        bits: int = 4,
        lam: float = 0.05,
        mode: str = "clean",
        relevance: bool = False,
        p: float = DEFAULT_P,
        relevance_alpha: float = DEFAULT_ALPHA,
        ste_scale: str | None = None,
        percentile: float = DEFAULT_PERCENTILE,
        snap_rtol: float = DEFAULT_SNAP_RTOL,
        device=None,
    ) -> None:
        super().__init__(names, shapes, lam, mode, device)
        check_nonnegative("p", p)
        if not 0 <= relevance_alpha <= 1:
            raise ValueError(f"relevance_alpha must be in [0, 1], got {relevance_alpha!r}")
        self.ste_scale = ste_scale or default_ste_scale(mode)
        check_choice("ste_scale", self.ste_scale, STE_SCALES)
        self.method = "ecqx" if relevance else "ecq"
        self.bits, self.p, self.relevance_alpha = bits, float(p), float(relevance_alpha)
        self.percentile, self.snap_rtol = percentile, snap_rtol
        self.grids: list[Grid] = []
        self.relevance: torch.Tensor | None = None

    def initialise(self, weights: Sequence[torch.Tensor]) -> None:
        """Grids (snapped to NNC steps) from ``weights``, shadows = weights, and the first assignment."""
        self._check_weights(weights)
        grids = [
            uniform_grid(
                w.detach(), self.bits, self.mode, percentile=self.percentile, snap_rtol=self.snap_rtol
            )
            for w in weights
        ]
        self._set_grids([snap_grid(g, self.snap_rtol) for g in grids])
        self.set_shadow(weights)
        self.requantize()

    def _set_grids(self, grids: list[Grid]) -> None:
        if len({len(g.levels) for g in grids}) != 1:
            raise ValueError("every grid of a UniformGroup needs the same number of levels")
        self.grids = grids
        device = self.device
        self._levels = torch.stack([g.level_tensor(device) for g in grids])
        self._centroid_table = torch.stack([g.values(device) for g in grids])
        self._zero_index = torch.tensor([g.zero_index for g in grids], dtype=torch.int64, device=device)

    def _level_table(self) -> torch.Tensor:
        return self._levels

    def _centroids(self) -> torch.Tensor:
        return self._centroid_table

    # ------------------------------------------------------------------ training step
    def shadow_gradient(self) -> bool:
        """Straight-through rule, in place: ``grad`` (on the quantized values) becomes the shadows' gradient.

        Returns True (the shadows are stepped).
        """
        if self.ste_scale != "identity":
            q = self.quantized
            factor = q.abs() if self.ste_scale == "abs" else q
            torch.where(q != 0, self.grad * factor, self.grad, out=self.grad)
        return True

    def update_relevance(self, relevance: torch.Tensor) -> None:
        """Running relevance R ← (1 − α)·R_batch + α·R from a flat relevance buffer; the first batch sets
        R."""
        if relevance.shape != self.shadow.shape:
            raise ValueError(
                f"relevance buffer has shape {tuple(relevance.shape)}, the group's is "
                f"{tuple(self.shadow.shape)}"
            )
        relevance = relevance.detach().to(torch.float32)
        if self.relevance is None:
            self.relevance = relevance.clone()
        else:
            self.relevance = (1 - self.relevance_alpha) * relevance + self.relevance_alpha * self.relevance

    def reset_relevance(self) -> None:
        """Forget the running relevance (the reference does this at every epoch start)."""
        self.relevance = None

    def requantize(self) -> None:
        """Entropy-constrained re-assignment of every tensor from the shadows; updates ``quantized``."""
        relevance = self.relevance if self.method == "ecqx" else None
        result = group_assign(
            self.shadow,
            self.layout,
            self._centroid_table,
            self._zero_index,
            self._lam_decay,
            pmf_mode=self.mode,
            lambda_rule="thesis" if self.mode == "clean" else "coded",
            empty_clusters="forbid",
            uniform=True,
            relevance=relevance,
            p=self.p,
        )
        self._record(result)
        self._write_quantized(result.indices)

    def _indices_of_levels(self, levels: torch.Tensor) -> torch.Tensor:
        return levels - self.layout.gather(self._levels[:, 0].to(torch.int64))

    def export(self) -> dict[str, QuantizedTensor]:
        """``{name: QuantizedTensor}`` of the current assignment (exactly the trained values)."""
        return {
            name: QuantizedTensor(levels, grid.qp, grid.qp_density)
            for (name, levels), grid in zip(self.levels().items(), self.grids, strict=True)
        }

    def relevances(self) -> dict[str, torch.Tensor]:
        """The running relevance of every tensor, by name (empty before the first update of an epoch)."""
        if self.relevance is None:
            return {}
        return dict(zip(self.names, self.layout.views(self.relevance), strict=True))

    # ------------------------------------------------------------------ checkpoint
    def _tensor_entries(self) -> list[dict[str, Any]]:
        entries = [{"grid": grid.to_dict()} for grid in self.grids]
        if self.method == "ecqx":
            relevances = (
                [None] * len(entries) if self.relevance is None else self.layout.split(self.relevance)
            )
            for entry, relevance in zip(entries, relevances, strict=True):
                entry["relevance"] = relevance
        return entries

    def _entry_fields(self) -> tuple[str, ...]:
        return ("grid",)

    def _load_entries(self, entries: list[dict[str, Any]], state: dict[str, Any]) -> None:
        self._set_grids([Grid.from_dict(e["grid"]) for e in entries])
        relevances = [e.get("relevance") for e in entries]
        if self.method == "ecqx" and all(r is not None for r in relevances):
            self.relevance = self.layout.flatten(relevances, dtype=torch.float32)
        else:
            self.relevance = None


class TernaryGroup(_GroupBase):
    """EC2T: ternary values {−a, 0, b}·Δ per tensor with learned magnitudes (spec ecqx-ec2t.md §4).

    The latent magnitudes of all tensors are one leaf tensor ``magnitudes`` (``[T, 2]``: w_n, w_p) for the
    callback's optimizer; Δ (qp, qp_density) is fixed per tensor at :meth:`initialise`; a, b ≥ 1 are the
    magnitudes rounded to multiples of Δ (never below the floor 0.675·std(shadow)).
    """

    method = "ec2t"

    def __init__(
        self,
        names: Sequence[str],
        shapes: Sequence[torch.Size],
        gamma: float = 0.15,
        mode: str = "clean",
        init_scale: float = DEFAULT_INIT_SCALE,
        resolution: int = DEFAULT_RESOLUTION,
        snap_rtol: float = DEFAULT_SNAP_RTOL,
        device=None,
    ) -> None:
        super().__init__(names, shapes, gamma, mode, device)
        self.init_scale, self.resolution, self.snap_rtol = init_scale, resolution, snap_rtol
        # ∂/∂w_n = −Σ_n g in clean mode (the value is −w_n), +Σ_n g in faithful mode (spec §7)
        self._gradient_sign = torch.tensor([-1.0 if mode == "clean" else 1.0, 1.0], device=self.device)
        self._sides = torch.tensor([-1, 1], dtype=torch.int64, device=self.device)
        self._order = torch.tensor([1, 0, 2], device=self.device)  # columns [−a, 0, b] from [0, −a, b]
        self.phase = "assign"
        self.magnitudes: torch.Tensor | None = None
        self.qp: list[int] = []
        self.qp_density: list[int] = []
        self.step: list[float] = []

    def initialise(self, weights: Sequence[torch.Tensor]) -> None:
        """Magnitudes and Δ from ``weights``, shadows = weights, and the first assignment."""
        self._check_weights(weights)
        magnitudes, steps = [], []
        for w in weights:
            w_n, w_p = init_magnitudes(w.detach())
            magnitudes.append((w_n, w_p))
            steps.append(ternary_step(w_n, w_p, self.resolution, snap_rtol=self.snap_rtol))
        self._set_steps(steps)
        self.magnitudes = torch.tensor(magnitudes, dtype=torch.float32, device=self.device).requires_grad_(
            True
        )
        self.set_shadow(weights)
        self.requantize()

    def _set_steps(self, steps: list[tuple[int, int, float]]) -> None:
        self.qp = [s[0] for s in steps]
        self.qp_density = [s[1] for s in steps]
        self.step = [s[2] for s in steps]
        self._step64 = torch.tensor(self.step, dtype=torch.float64, device=self.device)[:, None]
        self._step32 = self._step64.to(torch.float32)
        self._set_multiples(torch.ones(len(self.names), 2, dtype=torch.int64, device=self.device))

    def _set_multiples(self, multiples: torch.Tensor) -> None:
        """a, b per tensor, and the tables derived from them (levels, values, gradient scales)."""
        self._multiples = multiples
        self._signed = torch.nn.functional.pad(multiples * self._sides, (1, 0)).index_select(1, self._order)
        self._centroid_rows = self._signed.to(torch.float32) * self._step32
        # the TTQ gradient scale a·Δ, 1, b·Δ: a·Δ and b·Δ are exact in float32 (≤ 16 + 8 significant bits)
        self._scale_rows = self._centroid_rows.abs().index_fill_(1, self._order[:1], 1.0)

    def _floor(self) -> torch.Tensor:
        """0.675·std(shadow) per tensor (float64), computed once per version of the shadow buffer."""
        version = self.shadow._version
        if self._floor_cache is None or self._floor_cache[0] != version:
            self._floor_cache = (version, FLOOR_FACTOR * self.layout.std(self.shadow))
        return self._floor_cache[1]

    def _refresh_multiples(self) -> None:
        """a, b = max(1, round(w/Δ), ceil(floor/Δ − 1e-9)) from the current magnitudes and shadows."""
        step = self._step64
        rounded = torch.round(self.magnitudes.detach().double() / step)
        at_floor = torch.ceil(self._floor()[:, None] / step - 1e-9)
        self._set_multiples(torch.maximum(rounded, at_floor).clamp_(min=1.0).to(torch.int64))

    def _level_table(self) -> torch.Tensor:
        return self._signed.to(torch.int32)

    def _centroids(self) -> torch.Tensor:
        return self._centroid_rows

    # ------------------------------------------------------------------ training step
    def shadow_gradient(self) -> bool:
        """In place: ``grad`` becomes the shadows' gradient (TTQ rule); the magnitude gradients accumulate
        into ``magnitudes.grad``.

        Returns False in the frozen phase: the shadows are not stepped there, only the magnitudes are.
        """
        if self.indices is None:
            raise RuntimeError("call initialise() before shadow_gradient() for a TernaryGroup")
        grad = self.grad
        sides = torch.stack([self.indices == NEGATIVE, self.indices == POSITIVE], dim=1)
        sums = self.layout.sum(torch.where(sides, grad[:, None].double(), 0.0)).to(grad.dtype)
        magnitude_grad = sums * self._gradient_sign
        if self.magnitudes.grad is None:
            self.magnitudes.grad = magnitude_grad
        else:
            self.magnitudes.grad = self.magnitudes.grad + magnitude_grad
        if self.phase == "frozen":
            return False
        scale = self.layout.take(self._scale_rows, self.indices)
        torch.mul(grad, scale, out=grad)
        return True

    def clamp_magnitudes(self) -> None:
        """w_n, w_p ≥ 0.675·std(shadow) per tensor, in place."""
        floor = self._floor().to(torch.float32)
        with torch.no_grad():
            torch.maximum(self.magnitudes, floor[:, None], out=self.magnitudes)

    def freeze(self) -> None:
        """Enter the frozen-assignment phase: the assignment is kept, only the magnitudes train."""
        self.phase = "frozen"

    def requantize(self) -> None:
        """Re-round the grids to the magnitudes, then (assign phase) the entropy-constrained assignment."""
        self._refresh_multiples()
        centroids = self._centroids()
        if self.phase == "assign" or self.indices is None:
            zero_index = self._order[:1].expand(len(self.names))  # index 1: the zero value
            self._record(
                group_assign(
                    self.shadow,
                    self.layout,
                    centroids,
                    zero_index,
                    self._lam_decay,
                    pmf_mode=self.mode,
                    lambda_rule="thesis",
                    empty_clusters="count_one",
                    uniform=False,
                )
            )
        else:
            self.lam_layer = torch.zeros_like(self.lam_layer)
            self.relevance_flips = torch.zeros_like(self.relevance_flips)
        self._write_quantized(self.indices)

    def _indices_of_levels(self, levels: torch.Tensor) -> torch.Tensor:
        return torch.sign(levels) + 1

    def grids(self) -> list[Grid]:
        """The current ternary grid of every tensor (brings a, b to the host)."""
        multiples = self._multiples.cpu().tolist()
        return [
            Grid(levels=(-a, 0, b), step=s, qp=qp, qp_density=d)
            for (a, b), s, qp, d in zip(multiples, self.step, self.qp, self.qp_density, strict=True)
        ]

    def export(self) -> dict[str, QuantizedTensor]:
        """``{name: QuantizedTensor}`` with codebook ``[−a, 0, b]`` (exactly the trained values)."""
        return {
            name: QuantizedTensor(levels, grid.qp, grid.qp_density, codebook=grid.level_tensor())
            for (name, levels), grid in zip(self.levels().items(), self.grids(), strict=True)
        }

    # ------------------------------------------------------------------ checkpoint
    def _tensor_entries(self) -> list[dict[str, Any]]:
        magnitudes = self.magnitudes.detach()
        return [
            {"w_n": magnitudes[t, 0].clone(), "w_p": magnitudes[t, 1].clone(), "grid": grid.to_dict()}
            for t, grid in enumerate(self.grids())
        ]

    def _group_entry(self) -> dict[str, Any]:
        return {"phase": self.phase}

    def _entry_fields(self) -> tuple[str, ...]:
        return ("w_n", "w_p", "grid")

    def _load_entries(self, entries: list[dict[str, Any]], state: dict[str, Any]) -> None:
        grids = [Grid.from_dict(e["grid"]) for e in entries]
        self._set_steps([(g.qp, g.qp_density, g.step) for g in grids])
        self._set_multiples(
            torch.tensor([[-g.levels[0], g.levels[2]] for g in grids], dtype=torch.int64, device=self.device)
        )
        magnitudes = torch.stack([torch.stack([e["w_n"].reshape(()), e["w_p"].reshape(())]) for e in entries])
        magnitudes = magnitudes.to(device=self.device, dtype=torch.float32)
        if self.magnitudes is None:
            self.magnitudes = magnitudes.requires_grad_(True)
        else:
            with torch.no_grad():
                self.magnitudes.copy_(magnitudes)
        self.phase = state.get("phase", self.phase)

    def _moved_to(self, device: torch.device) -> None:
        self._set_multiples(self._multiples)  # derived tables on the new device
        if self.magnitudes is not None and self.magnitudes.device != device:
            self.magnitudes = self.magnitudes.detach().to(device).requires_grad_(True)


__all__ = ["QuantizerGroup", "TensorStatistics", "TernaryGroup", "UniformGroup"]
