"""NNC step sizes Δ(qp, qp_density) and snapping of a wanted step to the nearest expressible one.

An NNC bitstream (ISO/IEC 15938-17, spec nnc-bitstream.md §12.1) cannot carry an arbitrary float step size:
it signals an integer ``qp`` and a ``qp_density`` d in 0..7, and the decoder reconstructs

    Δ = float32(mul · 2^(shift − d)),  k = 2^d,  mul = k + (qp mod k),  shift = floor(qp / k)

i.e. Δ = (1 + frac/k) · 2^floor(qp/k): d = 2 gives four steps per octave, d = 7 gives 128. Every such Δ is a
dyadic number with at most d + 1 significant bits, so ``float32(level) * Δ`` is exact for every level below
2^(23 − d) in magnitude: a grid built on a snapped Δ is reproduced bit for bit by any conformant decoder.

This module is the quantizer side's implementation of that formula; ``ecqx.coding.quant`` has the codec's
(``step_size``, ``snap_step``). There are two because the layering lets neither package import the other
(DESIGN.md §1) and the formula is too small to justify a third package both would depend on. They are kept
identical by ``tests/test_quant_stepsize.py``: Δ is compared for every qp_density 0..7 and every qp with a
finite non-zero float32 step (and both must refuse the qps outside that range), and :func:`snap_to_density`
is compared with the codec's ``snap_step`` at the points where the choice between neighbouring steps
changes. Both snap to the least linear distance |Δ − step|, ties to the smaller qp; :func:`snap_step` here
also chooses the qp_density, trying the coarse ones first.
"""

from __future__ import annotations

import math

import numpy as np

#: qp_density values a stream may signal.
QP_DENSITY_RANGE = range(0, 8)
#: qp_density values tried, in order, when snapping a grid's step size (2 is NNCodec's default).
SNAP_DENSITIES = (2, 3, 4, 5, 6, 7)
#: default largest relative change of Δ accepted at a qp_density before trying a finer one.
DEFAULT_SNAP_RTOL = 0.01
FLOAT32_SMALLEST = math.ldexp(1.0, -149)  # smallest positive (subnormal) float32
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_density(qp_density: int) -> None:
    if not isinstance(qp_density, int | np.integer) or qp_density not in QP_DENSITY_RANGE:
        raise ValueError(f"qp_density must be an integer in 0..7, got {qp_density!r}")


def nnc_step_size(qp: int, qp_density: int = 2) -> float:
    """Return the NNC step size Δ(qp, qp_density) (the decoder's float32 value, as a Python float)."""
    _check_density(qp_density)
    if not isinstance(qp, int | np.integer):
        raise TypeError(f"qp must be an integer, got {type(qp).__name__}")
    qp = int(qp)
    k = 1 << qp_density
    mul = k + (qp & (k - 1))
    shift = qp >> qp_density
    exponent = shift - qp_density
    exact = math.ldexp(mul, exponent) if abs(exponent) <= 200 else 0.0  # beyond ±200: far outside float32
    if not FLOAT32_SMALLEST <= exact <= FLOAT32_MAX:
        raise ValueError(f"qp {qp} with qp_density {qp_density} gives no finite non-zero float32 step size")
    value = float(np.float32(exact))
    return value


def snap_to_density(step: float, qp_density: int) -> tuple[int, float]:
    """Return ``(qp, Δ)`` with Δ = Δ(qp, qp_density) the expressible step nearest ``step`` (ties: smaller)."""
    _check_density(qp_density)
    if not math.isfinite(step) or step <= 0:
        raise ValueError(f"step must be a positive finite number, got {step!r}")
    k = 1 << qp_density
    exponent = math.floor(math.log2(step))
    fraction = step / math.ldexp(1.0, exponent)  # in [1, 2) up to rounding
    qp_guess = exponent * k + math.floor((fraction - 1.0) * k)
    candidates = [(abs(nnc_step_size(qp, qp_density) - step), qp) for qp in range(qp_guess - 1, qp_guess + 3)]
    _, qp = min(candidates)
    return qp, nnc_step_size(qp, qp_density)


def snap_step(step: float, rtol: float = DEFAULT_SNAP_RTOL,
              densities: tuple[int, ...] = SNAP_DENSITIES) -> tuple[int, int, float]:
    """Snap a wanted step size to an NNC-expressible one.

    Tries the qp_densities in ``densities`` in order (default 2, 3, …, 7) and returns the first
    ``(qp, qp_density, Δ)`` whose Δ lies within ``rtol`` (relative) of ``step``; if none does, the finest
    density's nearest step. The relative snapping error at density d is at most 1/2^(d+1) (0.4 % at d = 7).
    """
    if not densities:
        raise ValueError("densities must name at least one qp_density in 0..7")
    if rtol < 0:
        raise ValueError(f"rtol must be >= 0, got {rtol!r}")
    qp, delta = 0, 0.0
    for density in densities:
        qp, delta = snap_to_density(step, density)
        if abs(delta - step) <= rtol * step:
            return qp, density, delta
    return qp, densities[-1], delta
