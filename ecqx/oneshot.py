"""One-shot (post-training) quantization of a whole state_dict: the engine behind :func:`ecqx.quantize`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ecqx._checks import check_bits, check_choice, check_mode, check_nonnegative
from ecqx.assign import assign, levels_of
from ecqx.ec2t import (
    DEFAULT_INIT_SCALE,
    ec2t_assign,
    init_magnitudes,
    ternary_grid,
    ternary_step,
    ternary_values,
)
from ecqx.entropy import size_decay
from ecqx.grid import DEFAULT_PERCENTILE, uniform_grid
from ecqx.quantized import QuantizedTensor, export_levels
from ecqx.stepsize import DEFAULT_SNAP_RTOL
from ecqx.targets import DEFAULT_EXCLUDE, select_targets

log = logging.getLogger(__name__)
METHODS = ("ecq", "ec2t")


def _quantize_ecq(weight, bits, lam, decay, mode, percentile, snap_rtol) -> QuantizedTensor:
    grid = uniform_grid(weight, bits, mode, percentile=percentile, snap_rtol=snap_rtol)
    result = assign(weight, grid, lam, decay, mode)
    return export_levels(levels_of(result, grid), grid, snap_rtol=snap_rtol)


def _quantize_ec2t(weight, lam, decay, mode, init_scale, snap_rtol) -> QuantizedTensor:
    w_n, w_p = init_magnitudes(weight, init_scale)
    qp, qp_density, step = ternary_step(w_n, w_p, snap_rtol=snap_rtol)
    grid = ternary_grid(w_n, w_p, qp, qp_density, step)
    trained = ternary_values(w_n, w_p, grid if mode == "clean" else None)
    result = ec2t_assign(weight, trained.to(weight.device), lam, decay, mode)
    levels = grid.level_tensor(weight.device)[result.indices]
    return export_levels(levels, grid, trained_values=trained.to(weight.device)[result.indices])


def quantize(state_dict: Mapping[str, torch.Tensor] | nn.Module, method: str = "ecq", bits: int = 4,
             lam: float = 0.05, mode: str = "clean", *, include: str | Iterable[str] | None = None,
             exclude: str | Iterable[str] | None = DEFAULT_EXCLUDE, percentile: float = DEFAULT_PERCENTILE,
             init_scale: float = DEFAULT_INIT_SCALE,
             snap_rtol: float = DEFAULT_SNAP_RTOL) -> dict[str, QuantizedTensor]:
    """Quantize the target tensors of ``state_dict`` once, without training; returns only those tensors.

    ``method="ecq"``: b-bit grid (``bits`` 2..8) and entropy-constrained assignment with global Λ = ``lam``
    over the tensors chosen by :func:`~ecqx.targets.select_targets` (conv/linear weights, ``include`` /
    ``exclude`` regexes). ``method="ec2t"``: ternary {−w_n, 0, w_p} (``bits`` is ignored) with magnitudes
    ``init_scale``·max|W| on each side, γ = ``lam``, all target layers but the first and the last.
    ``mode="clean"`` (default) snaps step sizes when grids are built; ``"faithful"`` reproduces the reference
    numbers and snaps only here at export (see ``QuantizedTensor.max_export_change``).
    """
    check_choice("method", method, METHODS)
    check_mode(mode)
    check_nonnegative("lam", lam)
    if method == "ecq":
        check_bits(bits)
    if isinstance(state_dict, nn.Module):
        state_dict = state_dict.state_dict()
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of tensors or an nn.Module, "
                        f"got {type(state_dict).__name__}")
    ec2t = method == "ec2t"
    names = select_targets(state_dict, include=include, exclude=exclude,
                           exclude_first=ec2t, exclude_last=ec2t)
    if not names:
        return {}
    n_max = max(state_dict[n].numel() for n in names)
    out = {}
    for name in names:
        weight = state_dict[name].detach()
        decay = size_decay(weight.numel(), n_max)
        if ec2t:
            out[name] = _quantize_ec2t(weight, lam, decay, mode, init_scale, snap_rtol)
        else:
            out[name] = _quantize_ecq(weight, bits, lam, decay, mode, percentile, snap_rtol)
        if out[name].max_export_change > 0:
            log.info("%s: NNC step snapping at export changed weights by up to %.3g", name,
                     out[name].max_export_change)
    return out
