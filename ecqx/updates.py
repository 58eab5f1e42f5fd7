"""Entropy-constrained quantization of model updates with error feedback (codec-free maths).

A sender (a federated client, or a training run that publishes its progress) transmits a sequence of
updates of the same named tensors. :class:`UpdateQuantizer` keeps the **reference**: exactly the state the
receiver holds after decoding every update sent so far. Each call of :meth:`UpdateQuantizer.quantize`

1. takes the difference d = current − reference per tensor,
2. quantizes it with ECQ (:func:`ecqx.assign.assign`, spec ecqx-ec2t.md §1) on a signed ``bits``-bit grid
   whose step is an NNC step Δ(qp, qp_density) (:func:`update_grid`), so the float32 values
   ``level · Δ`` are what any NNC decoder reconstructs,
3. advances the reference by exactly those values (``reference + float32(level) · Δ`` in float32 on the
   CPU, the operation the receiver performs, see ``ecqx.coding.apply_updates``).

Error feedback: what quantization dropped in one update (the entropy constraint's zeros, the rounding,
values beyond the grid) stays in ``current − reference`` and is therefore part of the next difference. This is
the classical error-accumulation scheme — with d_t the model change of step t and e the accumulated residual,
``current − reference = d_t + e`` — written without a separate residual buffer, so sender and receiver can
never drift apart: the residual after any update is :meth:`UpdateQuantizer.residual`, exactly
``current − reference``.

Integer tensors (BatchNorm's ``num_batches_tracked``) are sent as exact integer differences. Tensors of two or
more dimensions use ``bits`` and the entropy weight ``lam`` (scaled per tensor by
:func:`ecqx.entropy.size_decay`, as ECQ does, unless ``size_decay=False``: then every tensor gets the same
weight); the others (biases, norms) use ``nonweight_bits`` and
``nonweight_lam`` (default 0: the nearest grid level).

The result of :meth:`UpdateQuantizer.quantize` maps names to :class:`~ecqx.quantized.QuantizedTensor`
(float tensors) or int64 tensors (integer tensors): the description the codec's ``UpdateEncoder`` reads. This
module imports no codec (DESIGN.md §1).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ecqx._checks import check_bits, check_nonnegative
from ecqx.assign import assign, levels_of
from ecqx.entropy import size_decay
from ecqx.grid import DEFAULT_PERCENTILE, Grid, positive_side_heavier, reference_step, uniform_levels
from ecqx.quantized import QuantizedTensor
from ecqx.stepsize import QP_DENSITY_RANGE, nnc_step_size, snap_to_density

STATE_KIND = "ecqx-update-quantizer"
STATE_VERSION = 1
# options that state_dicts written before the option existed do not record: the behaviour they had
OPTIONS_BEFORE_THEY_WERE_RECORDED = {"size_decay": True}


def qp_limits(qp_density: int) -> tuple[int, int]:
    """The qps one NNC update stream can carry per tensor at ``qp_density`` (the model parameter set signals
    qp 0 and each tensor its offset, coded with ``6 + qp_density`` bits in two's complement)."""
    half = 1 << (5 + qp_density)
    return -half, half - 1


def update_grid(delta: torch.Tensor, bits: int, qp_density: int = 2,
                percentile: float = DEFAULT_PERCENTILE) -> Grid:
    """Signed ``bits``-bit grid for an update tensor: the reference's step rule (P(|d|)/(2^(b−1)−1),
    spec §2.2), snapped to the nearest Δ(qp, ``qp_density``) and clamped to the qps an update stream carries.

    ``delta`` must have a nonzero entry (an all-zero difference needs no grid).
    """
    check_bits(bits)
    if qp_density not in QP_DENSITY_RANGE:
        raise ValueError(f"qp_density must be an integer in 0..7, got {qp_density!r}")
    raw = reference_step(delta, bits, signed=True, percentile=percentile)
    qp, _ = snap_to_density(raw, qp_density)
    low, high = qp_limits(qp_density)
    qp = min(max(qp, low), high)
    levels = uniform_levels(bits, signed=True, positive_heavy=positive_side_heavier(delta))
    return Grid(levels=levels, step=nnc_step_size(qp, qp_density), qp=qp, qp_density=qp_density, raw_step=raw)


def _as_reference(value: torch.Tensor) -> torch.Tensor:
    value = value.detach().to("cpu")
    if value.is_floating_point():
        return value.to(torch.float32).clone()
    return value.to(torch.int64).clone()


class UpdateQuantizer:
    """ECQ of ``current − reference`` with error feedback (module docstring); checkpointable.

    Args:
        base: the state the receiver starts from (for example the decoded base model); float tensors are
            held as float32, integer tensors as int64, all on the CPU.
        bits: grid size of tensors with two or more dimensions (2..8).
        lam: entropy weight Λ of those tensors (0: nearest level).
        nonweight_bits, nonweight_lam: the same for 0-/1-D tensors (biases, norms).
        qp_density: the NNC qp_density of every step (the update encoder's).
        percentile: the percentile of |d| the step is derived from.
        size_decay: scale ``lam`` per tensor by its size relative to the largest (ECQ's layer rule, which
            makes large tensors sparsest); ``False`` applies ``lam`` unscaled to every tensor. With error
            feedback the unscaled weight keeps large layers learning: on federated MNIST/LeNet-5 it moved
            the accuracy–bytes trade-off (benchmarks/results/bench_federated_sweep.md).
    """

    def __init__(self, base: Mapping[str, torch.Tensor], *, bits: int = 4, lam: float = 0.05,
                 nonweight_bits: int = 8, nonweight_lam: float = 0.0, qp_density: int = 2,
                 percentile: float = DEFAULT_PERCENTILE, size_decay: bool = True) -> None:
        check_bits(bits)
        check_bits(nonweight_bits)
        if isinstance(qp_density, bool) or qp_density not in QP_DENSITY_RANGE:
            raise ValueError(f"qp_density must be an integer in 0..7, got {qp_density!r}")
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
        self.bits, self.nonweight_bits = int(bits), int(nonweight_bits)
        self.lam = check_nonnegative("lam", lam)
        self.nonweight_lam = check_nonnegative("nonweight_lam", nonweight_lam)
        self.qp_density = int(qp_density)
        self.percentile = float(percentile)
        if not isinstance(size_decay, bool):
            raise TypeError(f"size_decay must be a bool, got {type(size_decay).__name__}")
        self.size_decay = size_decay
        if not isinstance(base, Mapping):
            raise TypeError(f"base must be a mapping of names to tensors, got {type(base).__name__}")
        self.reference: dict[str, torch.Tensor] = {}
        for name, value in base.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"base tensor {name!r} is a {type(value).__name__}, not a torch.Tensor")
            self.reference[name] = _as_reference(value)
        self.updates = 0

    # -------------------------------------------------------------------------------------------- maths
    def _differences(self, current: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = sorted(set(self.reference) - set(current))
        extra = sorted(set(current) - set(self.reference))
        if missing or extra:
            raise ValueError(f"the current state does not match the reference: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
        out = {}
        for name, ref in self.reference.items():
            value = current[name].detach().to("cpu")
            if tuple(value.shape) != tuple(ref.shape):
                raise ValueError(f"tensor {name!r}: shape {tuple(value.shape)} differs from the reference's "
                                 f"{tuple(ref.shape)}")
            if ref.is_floating_point() != value.is_floating_point():
                raise ValueError(f"tensor {name!r}: dtype {value.dtype} does not match the reference's "
                                 f"{ref.dtype}")
            out[name] = value.to(ref.dtype) - ref
        return out

    def residual(self, current: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the receiver is still missing: ``current − reference`` per tensor (the error-feedback
        residual after the last update)."""
        return self._differences(current)

    def quantize(self, current: Mapping[str, torch.Tensor]) -> dict[str, QuantizedTensor | torch.Tensor]:
        """Quantizes ``current − reference``, advances the reference by exactly the quantized values and
        returns them: ``QuantizedTensor`` for float tensors, int64 differences for integer tensors."""
        deltas = self._differences(current)
        sizes = [d.numel() for d in deltas.values() if d.is_floating_point() and d.dim() >= 2]
        n_max = max(sizes, default=1)
        out: dict[str, QuantizedTensor | torch.Tensor] = {}
        for name, delta in deltas.items():
            if not delta.is_floating_point():
                out[name] = delta
                continue
            if not bool(torch.isfinite(delta).all()):
                raise ValueError(f"tensor {name!r}: the update contains NaN or infinite values")
            out[name] = self._quantize_tensor(delta, n_max)
        for name, value in out.items():  # commit only once every tensor quantized
            ref = self.reference[name]
            if isinstance(value, QuantizedTensor):
                if bool(value.levels.any()):
                    self.reference[name] = ref + value.dequantize()
            else:
                self.reference[name] = ref + value
        self.updates += 1
        return out

    def _quantize_tensor(self, delta: torch.Tensor, n_max: int) -> QuantizedTensor:
        if not bool(delta.any()):
            return QuantizedTensor(torch.zeros(delta.shape, dtype=torch.int32), qp=0,
                                   qp_density=self.qp_density)
        weight = delta.dim() >= 2
        bits = self.bits if weight else self.nonweight_bits
        lam = self.lam if weight else self.nonweight_lam
        decay = size_decay(delta.numel(), max(n_max, delta.numel())) if self.size_decay else 1.0
        grid = update_grid(delta, bits, self.qp_density, self.percentile)
        result = assign(delta.reshape(delta.shape if delta.dim() else (1,)), grid, lam, decay, "clean")
        levels = levels_of(result, grid).reshape(delta.shape).to(torch.int32)
        return QuantizedTensor(levels, qp=grid.qp, qp_density=grid.qp_density)

    # -------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Options, update count and the reference tensors (copies)."""
        return {
            "kind": STATE_KIND,
            "version": STATE_VERSION,
            "options": self._options(),
            "updates": self.updates,
            "reference": {name: t.clone() for name, t in self.reference.items()},
        }

    def _options(self) -> dict:
        return {"bits": self.bits, "lam": self.lam, "nonweight_bits": self.nonweight_bits,
                "nonweight_lam": self.nonweight_lam, "qp_density": self.qp_density,
                "percentile": self.percentile, "size_decay": self.size_decay}

    def load_state_dict(self, state: Mapping) -> None:
        """Restores :meth:`state_dict` of a quantizer with the same options (else ValueError naming one)."""
        if not isinstance(state, Mapping) or state.get("kind") != STATE_KIND:
            raise ValueError(f"not an UpdateQuantizer state_dict (missing kind {STATE_KIND!r})")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"UpdateQuantizer state_dict version {state.get('version')!r} is not "
                             f"{STATE_VERSION}")
        options = {**OPTIONS_BEFORE_THEY_WERE_RECORDED, **state.get("options", {})}
        for key, value in self._options().items():
            if options.get(key) != value:
                raise ValueError(f"UpdateQuantizer state_dict was written with {key}={options.get(key)!r}, "
                                 f"this quantizer has {key}={value!r}")
        reference = state.get("reference")
        if not isinstance(reference, Mapping) or set(reference) != set(self.reference):
            raise ValueError("UpdateQuantizer state_dict: the reference tensors do not match the names "
                             "of the model")
        restored = {}
        for name, value in reference.items():
            ref = self.reference[name]
            if not isinstance(value, torch.Tensor) or value.shape != ref.shape or value.dtype != ref.dtype:
                raise ValueError(f"UpdateQuantizer state_dict: reference {name!r} must be a {ref.dtype} "
                                 f"tensor of shape {tuple(ref.shape)}")
            restored[name] = value.detach().to("cpu").clone()
        self.reference = restored
        self.updates = int(state.get("updates", 0))
