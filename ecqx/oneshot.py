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
from ecqx.targets import (
    DEFAULT_EXCLUDE,
    DEFAULT_MODULE_TYPES,
    check_module_types,
    parameter_aliases,
    select_targets,
)

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
             exclude: str | Iterable[str] | None = DEFAULT_EXCLUDE,
             module_types: tuple[type[nn.Module], ...] = DEFAULT_MODULE_TYPES,
             percentile: float = DEFAULT_PERCENTILE, init_scale: float = DEFAULT_INIT_SCALE,
             snap_rtol: float = DEFAULT_SNAP_RTOL) -> dict[str, QuantizedTensor]:
    """Quantize the target tensors of ``state_dict`` once, without training; returns only those tensors.

    ``method="ecq"``: b-bit grid (``bits`` 2..8) and entropy-constrained assignment with global Λ = ``lam``
    over the tensors chosen by :func:`~ecqx.targets.select_targets`. ``method="ec2t"``: ternary {−w_n, 0, w_p}
    (``bits`` is ignored) with magnitudes ``init_scale``·max|W| on each side, γ = ``lam``, all target layers
    but the first and the last.
    ``mode="clean"`` (default) snaps step sizes when grids are built; ``"faithful"`` reproduces the reference
    numbers and snaps only here at export (see ``QuantizedTensor.max_export_change``).

    Which tensors: given an ``nn.Module``, the weights of its modules of ``module_types`` (default
    :data:`~ecqx.targets.DEFAULT_MODULE_TYPES`: Conv1d/2d/3d, Linear, Embedding, EmbeddingBag — the callbacks'
    list), then ``include`` / ``exclude``; a weight shared by several modules is quantized once and returned
    under each of its ``state_dict`` names (the same object), so ``encode_state_dict(model.state_dict(), q)``
    codes every copy from the same levels. Given a state_dict (no modules), every floating tensor with
    ``ndim > 1``: for models made of the default module types and 1-D tensors (norms, biases) that is the
    same set; other ≥ 2-D tensors are included too (see :mod:`ecqx.targets`). A state_dict has no module
    types to filter by, so ``module_types`` other than the default raises ``ValueError`` there.
    """
    check_choice("method", method, METHODS)
    check_mode(mode)
    check_nonnegative("lam", lam)
    if method == "ecq":
        check_bits(bits)
    module_types = check_module_types(module_types, "module_types")
    ec2t = method == "ec2t"
    aliases: dict[str, list[str]] = {}
    if isinstance(state_dict, nn.Module):
        model = state_dict
        names = select_targets(model, include=include, exclude=exclude, types=module_types,
                               exclude_first=ec2t, exclude_last=ec2t)
        aliases = parameter_aliases(model, names)
        state_dict = model.state_dict()
    elif isinstance(state_dict, Mapping):
        if set(module_types) != set(DEFAULT_MODULE_TYPES):
            raise ValueError(
                "module_types selects tensors by the module that holds them, but a state_dict has no "
                "modules. HINT: pass the nn.Module itself, or select state_dict names with include/exclude."
            )
        names = select_targets(state_dict, include=include, exclude=exclude,
                               exclude_first=ec2t, exclude_last=ec2t)
    else:
        raise TypeError(f"state_dict must be a mapping of tensors or an nn.Module, "
                        f"got {type(state_dict).__name__}")
    if not names:
        return {}
    n_max = max(state_dict[n].numel() for n in names)
    out = {}
    for name in names:
        weight = state_dict[name].detach()
        if weight.numel() == 0:
            continue  # no values: encode_state_dict records an empty tensor by its shape
        decay = size_decay(weight.numel(), n_max)
        try:
            if not bool(weight.any()):  # every grid fits an all-zero tensor: all levels 0 at any step
                out[name] = QuantizedTensor(torch.zeros(weight.shape, dtype=torch.int32), qp=0)
            elif ec2t:
                out[name] = _quantize_ec2t(weight, lam, decay, mode, init_scale, snap_rtol)
            else:
                out[name] = _quantize_ecq(weight, bits, lam, decay, mode, percentile, snap_rtol)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"tensor {name!r}: {exc}") from exc
        if out[name].max_export_change > 0:
            log.info("%s: NNC step snapping at export changed weights by up to %.3g", name,
                     out[name].max_export_change)
        for alias in aliases.get(name, ()):
            out[alias] = out[name]
    return out
