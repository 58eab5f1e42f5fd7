"""NNC step sizes, the quantized-tensor description of the codec and NNCodec-identical quantizers.

Δ(qp, qp_density) and the nearest-step choice are also implemented in ``ecqx.stepsize`` (the quantizer's
grids): the layering lets neither package import the other (DESIGN.md §1), and the formula is a few lines of
spec §12.1, so each layer keeps its own copy rather than a third package that both would depend on. The
copies are kept identical by ``tests/test_quant_stepsize.py``: it compares Δ for every qp_density 0..7 and
every qp with a finite non-zero float32 step, checks that both refuse the qps outside that range, and
compares :func:`snap_step` with ``ecqx.stepsize.snap_to_density`` at the points where the choice between
neighbouring steps changes, for every step of the octaves around 1 and for steps across the normal float32
range. Both choose the least linear distance |Δ − step|, ties to the smaller qp; ``ecqx.stepsize.snap_step``
also chooses the qp_density, which the codec takes as given.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ecqx.coding.common import _geometry
from ecqx.coding.native import load_native

MAX_QP_DENSITY = 7
INT32_MAX = 2**31 - 1
# Largest |round(w / step)| NNCodec accepts before it falls back to a coarser qp (spec §12.5).
URQ_LIMIT = (-(2**31), 2**31 - 1)
TCQ_LIMIT = (-(2**31 - 2), 2**31 - 3)
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = 2.0**-149


def _check_qp_density(qp_density: int) -> int:
    if isinstance(qp_density, bool) or not isinstance(qp_density, (int, np.integer)):
        raise TypeError(f"qp_density must be an int in 0..{MAX_QP_DENSITY}, got {qp_density!r}")
    if not 0 <= int(qp_density) <= MAX_QP_DENSITY:
        raise ValueError(f"qp_density must be in 0..{MAX_QP_DENSITY}, got {qp_density}")
    return int(qp_density)


def relative_qp(max_abs: float, bits: int, qp_density: int = 2) -> int | None:
    """Largest qp whose step Δ(qp, qp_density) is at most ``max_abs · 2^-bits``.

    Rounding with that step keeps every value within ``max_abs · 2^-(bits+1)`` of the original, a relative
    precision of ``bits`` bits with respect to the tensor's own scale. None when ``max_abs`` is 0 (any step
    codes an all-zero tensor) or when no float32 step is that small.
    """
    qp_density = _check_qp_density(qp_density)
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 0 <= bits <= 30:
        raise ValueError(f"bits must be an int in 0..30, got {bits!r}")
    if not isinstance(max_abs, (int, float, np.floating)) or not math.isfinite(max_abs) or max_abs < 0:
        raise ValueError(f"max_abs must be a finite number >= 0, got {max_abs!r}")
    target = math.ldexp(float(max_abs), -int(bits))
    if target < FLOAT32_TINY:
        return None
    k = 1 << qp_density
    guess = math.floor(math.log2(target) * k)
    for qp in range(guess + 2, guess - 2 * k - 1, -1):  # steps grow with qp; the answer is in this range
        try:
            if _step_size(qp, qp_density) <= target:
                return qp
        except ValueError:
            if qp <= guess:
                return None  # below the smallest float32 step
    return None


def _check_qp(qp: int) -> int:
    if isinstance(qp, bool) or not isinstance(qp, (int, np.integer)):
        raise TypeError(f"qp must be an int, got {qp!r}")
    return int(qp)


def step_size(qp: int, qp_density: int = 2) -> float:
    """NNC step size Δ = float32(mul · 2^(shift − qp_density)) (spec §12.1), as a Python float."""
    return _step_size(_check_qp(qp), _check_qp_density(qp_density))


@functools.lru_cache(maxsize=4096)
def _step_size(qp: int, qp_density: int) -> float:
    k = 1 << qp_density
    mul = k + (qp & (k - 1))
    shift = qp >> qp_density
    exponent = shift - qp_density
    exact = math.ldexp(mul, exponent) if -200 < exponent < 200 else 0.0
    value = np.float32(exact) if FLOAT32_TINY <= exact <= FLOAT32_MAX else np.float32(0)
    if value == 0:
        raise ValueError(f"qp {qp} with qp_density {qp_density} gives no finite non-zero float32 step size")
    return float(value)


def snap_step(step: float, qp_density: int = 2) -> tuple[int, float]:
    """Nearest representable (qp, Δ) for a wanted step size: least |Δ − step|, ties to the smaller qp."""
    qp_density = _check_qp_density(qp_density)
    if not isinstance(step, (int, float, np.floating)) or not math.isfinite(step) or step <= 0:
        raise ValueError(f"step must be a finite positive number, got {step!r}")
    k = 1 << qp_density
    guess = math.floor(math.log2(step) * k)
    best: tuple[float, int] | None = None
    for qp in range(guess - 2 * k, guess + 2 * k + 1):
        try:
            candidate = step_size(qp, qp_density)
        except ValueError:
            continue
        distance = abs(candidate - step)
        if best is None or distance < best[0]:
            best = (distance, qp)
    if best is None:
        raise ValueError(f"step {step} is outside the range of NNC step sizes")
    return best[1], step_size(best[1], qp_density)


@runtime_checkable
class QuantizedLevels(Protocol):
    """A quantized tensor as the encoder reads it: the contract between a quantizer and the codec.

    The tensor's values are ``float32(levels) · Δ(qp, qp_density)``. ``levels`` are integers: codebook values
    when ``codebook`` (None or a 1-D strictly increasing integer tensor) is given, dependent-quantization
    reconstruction indices when ``dq``. :class:`CodedTensor` satisfies it, and so does
    ``ecqx.QuantizedTensor``, the quantizer's type, which this package must not import (DESIGN.md §1);
    a test checks both and that they encode to the same bytes.

    :func:`ecqx.coding.encode` also takes objects that lack ``qp_density``, ``codebook`` or ``dq``, with
    NNCodec's defaults 2, no codebook and False; ``levels`` and ``qp`` have no default.
    """

    levels: torch.Tensor
    qp: int
    qp_density: int
    codebook: torch.Tensor | None
    dq: bool


@dataclass
class CodedTensor:
    """Integer levels of one tensor with their NNC quantization parameters.

    Value = float32(levels) · step_size(qp, qp_density) in float32. With a codebook, `levels` hold codebook
    values (integer multiples of the step) and the codec codes indices into `codebook`. With `dq`, levels are
    dependent-quantization reconstruction indices. Satisfies :class:`QuantizedLevels`.
    """

    levels: torch.Tensor
    qp: int
    qp_density: int = 2
    codebook: torch.Tensor | None = None
    dq: bool = False

    @property
    def step(self) -> float:
        return step_size(self.qp, self.qp_density)

    def dequantize(self) -> torch.Tensor:
        return self.levels.to(torch.float32) * torch.tensor(self.step, dtype=torch.float32)


def _fallback_qp(max_abs: float, qp_density: int) -> int:
    """NNCodec's coarser qp when the levels would overflow int32 (spec §12.5)."""
    k = 1 << qp_density
    s = max_abs / (2**31 - 3)
    e = math.floor(math.log2(s))
    return math.ceil(e * k + (s * k / 2**e - k))


def _scaled(x: torch.Tensor, qp: int, qp_density: int) -> torch.Tensor:
    inv = np.float32(1.0) / np.float32(step_size(qp, qp_density))
    return (x * torch.tensor(float(inv), dtype=torch.float32)).to(torch.float64)


def quantize_tensor(x: torch.Tensor, qp: int, qp_density: int = 2, dq: bool = False,
                    scan_order: int = 0) -> CodedTensor:
    """Quantizes a float tensor exactly like NNCodec 2.1.3 (λ = 0).

    dq=False: uniform rounding half away from zero of fl32(fl32(1/Δ)·w) (spec §12.4).
    dq=True: 8-state trellis (spec §11.6) in the coding order of `scan_order`; levels are reconstruction
    indices. If the levels would overflow int32, qp is raised as NNCodec does (spec §12.5); the result carries
    the qp used.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError("cannot quantize an empty tensor")
    qp = _check_qp(qp)
    qp_density = _check_qp_density(qp_density)
    if scan_order not in range(5):
        raise ValueError(f"scan_order must be 0..4, got {scan_order!r}")
    w = x.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if not torch.isfinite(w).all():
        raise ValueError("x contains NaN or infinite values")
    lo, hi = TCQ_LIMIT if dq else URQ_LIMIT
    peak = _scaled(w, qp, qp_density).abs().max().item()
    # an infinite peak (w / Δ beyond the float32 range) overflows int32 as well: fall back like NNCodec
    if not math.isfinite(peak) or math.floor(peak + 0.5) > min(-lo, hi):
        qp = _fallback_qp(float(w.abs().max()), qp_density)
    if not dq:
        scaled = _scaled(w, qp, qp_density)
        levels = (torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)).to(torch.int32)
        return CodedTensor(levels, qp, qp_density)
    rows, width = _geometry(tuple(w.shape))
    out = torch.empty(w.shape, dtype=torch.int32)
    qscale = 1.0 / float(np.float32(step_size(qp, qp_density)))
    load_native().trellis_quantize(w, out, rows, width, scan_order, qscale)
    return CodedTensor(out, qp, qp_density, dq=True)
