"""ecqx — entropy-constrained quantization (ECQ, ECQx, EC2T) with NNC bitstream export.

This package is the pure tensor maths; the codec is :mod:`ecqx.coding`, the Lightning callbacks
:mod:`ecqx.callbacks`. Building blocks, in the order a training step uses them:

* :func:`select_targets` — which tensors are quantized (the only place that decides it);
* :func:`uniform_grid` / :class:`Grid` — b-bit grids with NNC-snapped step sizes (:func:`nnc_step_size`);
* :class:`UniformGroup` / :class:`TernaryGroup` — the quantizer state of all quantized tensors of a model
  (ECQ/ECQx, EC2T): flat buffers on the device, a training step without host synchronisation, checkpointable;
* :func:`make_shadow`, :func:`ste_gradient` — shadow weights and straight-through gradients;
* :func:`weight_relevances` — LRP weight relevances (zennit) or gradient×weight (captum) for ECQx;
* :func:`assign` — the entropy-constrained (ECQ/ECQx) re-assignment; EC2T in :mod:`ecqx.ec2t`;
* :class:`QuantizedTensor` — integer levels + qp for the codec; :func:`quantize` — one-shot quantization;
* :class:`UpdateQuantizer` — ECQ of model updates with error feedback, on NNC steps;
* :func:`load` — a model from an ``.nnc`` file (the codec's :func:`ecqx.coding.load_nnc`).
"""

from ecqx.assign import Assignment, assign, ec_assign, levels_of, values_of
from ecqx.entropy import cluster_pmf, information_content, lambda_max, size_decay
from ecqx.grid import Grid, snap_grid, uniform_grid
from ecqx.group_state import QuantizerGroup, TernaryGroup, UniformGroup
from ecqx.oneshot import quantize
from ecqx.quantized import QuantizedTensor, export_levels
from ecqx.relevance import weight_relevances
from ecqx.ste import make_shadow, ste_gradient
from ecqx.stepsize import nnc_step_size, snap_step
from ecqx.targets import DEFAULT_MODULE_TYPES, select_targets
from ecqx.updates import UpdateQuantizer, update_grid


def load(module, source, *, strict: bool = True, workers: int = 1):
    """Loads an ``.nnc`` file (a path or its bytes) into ``module`` with ``load_state_dict(strict=strict)``.

    The weights are exactly what any NNC decoder reconstructs; returns ``module``. The codec is imported here,
    on use, so that the maths package does not depend on it.
    """
    from ecqx.coding import load_nnc

    return load_nnc(module, source, strict=strict, workers=workers)


__all__ = [
    "DEFAULT_MODULE_TYPES",
    "Assignment", "Grid", "QuantizedTensor", "assign", "cluster_pmf", "ec_assign", "export_levels",
    "information_content", "lambda_max", "levels_of", "load", "make_shadow", "nnc_step_size", "quantize",
    "select_targets", "size_decay", "snap_grid", "snap_step", "ste_gradient", "uniform_grid", "values_of",
    "QuantizerGroup", "TernaryGroup", "UniformGroup", "UpdateQuantizer", "update_grid", "weight_relevances",
]
