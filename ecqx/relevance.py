"""Weight relevances for ECQx (spec ecqx-ec2t.md §3.1–§3.4), computed on the live model.

:func:`weight_relevances` returns, for every quantized weight (names from :func:`~ecqx.targets.select_targets`
unless given), a tensor shaped like the parameter. Output relevance: the true-class logit of every sample
(one-hot), divided by the batch size. The model is put in eval mode for the pass and restored afterwards; its
parameters, buffers, ``.grad`` fields and outputs are unchanged, and every hook is removed even on error.

Backends:

* ``"zennit"`` (default): LRP with a zennit composite (default :func:`epsilon_plus_flat_bn_pass`, built from
  zennit's public rules: activations Pass, Sum/average pooling Norm, first conv/linear Flat, other conv z⁺,
  BatchNorm Pass, linear ε = 1e-6) and optional zennit canonizers. The weight relevance uses the ε weight rule
  of the reference: with x the layer input, z the layer output and R the relevance arriving at the output,
  R_w = w ⊙ ∂/∂w ⟨z(w), R / stab(z)⟩, stab(z) = z + ε·sign(z) (sign(0) = 1), summed over the batch (and
  spatial positions). R is captured with our own forward/tensor hooks on top of the composite's hooks.
  No canonizer is needed for the reference's behaviour: with BatchNorm under the Pass rule the BN-to-affine
  rewrite of the reference changes nothing. A canonizer that folds BN into the preceding convolution changes
  the relevance arriving at that convolution, while R_w is still computed with the layer's own (unfolded,
  quantized) weight — use such canonizers deliberately.
* ``"captum"``: gradient × weight with captum's ``InputXGradient`` applied to the weights (through
  ``torch.func.functional_call``): R_w = w ⊙ Σ_b ∂ logit_{b, y_b} / ∂w / B.

Embeddings and integer inputs (token ids). An ``nn.Embedding`` is a linear layer whose input is the one-hot
code of the ids, so the same ε weight rule applies to it unchanged: z = W[ids] and
R_w[i, j] = Σ_{positions with id i} R[pos, j] · W[i, j] / stab(W[i, j]), i.e. the relevance that arrives at
the embedding output flows back into the rows that were looked up (rows not used by the batch get 0). For
``nn.EmbeddingBag`` (sum/mean: a linear layer on the bag's count vector, per-sample weights included; max:
the winning row takes the relevance) the rule is the same derivative through ``F.embedding_bag``. The
default composite treats an embedding in front of the first conv/linear as the model's input layer: no rule
on the embedding (the ids carry no relevance of their own) and no Flat rule on the layer after it, which is
a hidden layer on real-valued features. For inputs that are not floating point (ids) the backward pass
starts from the logits and stops at the outputs of the quantized layers instead of at the input (which
cannot require a gradient); for floating inputs the pass is the one the reference makes. Tied weights: the
relevance of a parameter used by several modules (a decoder tied to an embedding) is the sum of the rule
applied at each of them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ecqx._checks import check_choice
from ecqx.targets import modules_using, select_targets

BACKENDS = ("zennit", "captum")
LRP_EPSILON = 1e-6
EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
WEIGHT_RULE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, *EMBEDDINGS)


def epsilon_plus_flat_bn_pass():
    """zennit composite of the reference's default rule map (see module docstring)."""
    from zennit.composites import SpecialFirstLayerMapComposite
    from zennit.layer import Sum
    from zennit.rules import Epsilon, Flat, Norm, Pass, ZPlus
    from zennit.types import Activation, AvgPool, BatchNorm, Convolution
    from zennit.types import Linear as AnyLinear

    layer_map = [(Activation, Pass()), (Sum, Norm()), (AvgPool, Norm()), (Convolution, ZPlus()),
                 (BatchNorm, Pass()), (nn.Linear, Epsilon(epsilon=LRP_EPSILON))]
    # an embedding seen first is the input layer: it takes the "first layer" slot without a rule of its own
    first_map = [(EMBEDDINGS, None), (AnyLinear, Flat())]
    return SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=first_map)


def _check_inputs(model, inputs, targets) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError("inputs and targets must be tensors")
    if targets.ndim != 1 or targets.shape[0] != inputs.shape[0] or targets.is_floating_point():
        raise ValueError(f"targets must be integer class labels of shape ({inputs.shape[0]},), "
                         f"got dtype {targets.dtype} shape {tuple(targets.shape)}")


def _modules_of(model: nn.Module, name: str) -> list[nn.Module]:
    """The module that owns weight ``name`` and every other module sharing that parameter (tied weights)."""
    module_name, _, attr = name.rpartition(".")
    if attr != "weight":
        raise ValueError(f"relevances are computed for module weights (names ending in '.weight'), "
                         f"got {name!r}")
    owner = model.get_submodule(module_name) if module_name else model
    sharing = [module for _, module in modules_using(model, name)]
    for module in [owner, *sharing]:
        if not isinstance(module, WEIGHT_RULE_TYPES):
            raise ValueError(f"{name!r} belongs to a {type(module).__name__}; "
                             "the weight rule supports Conv1d/2d/3d and Linear, Embedding and EmbeddingBag")
    return sharing


def _layer_output(module: nn.Module, args: tuple, kwargs: dict, weight: torch.Tensor) -> torch.Tensor:
    """``module``'s output for the recorded call with ``weight`` in place of its own (no hooks run)."""
    if isinstance(module, nn.Embedding):
        # max_norm would renormalise the weight in place, scale_grad_by_freq distort the derivative
        return F.embedding(args[0], weight, None, None, module.norm_type, False, False)
    if isinstance(module, nn.EmbeddingBag):
        call = dict(zip(("input", "offsets", "per_sample_weights"), args, strict=False), **kwargs)
        return F.embedding_bag(call["input"], weight, call.get("offsets"), None, module.norm_type, False,
                               module.mode, False, call.get("per_sample_weights"), module.include_last_offset,
                               module.padding_idx)
    x = args[0] if args else kwargs["input"]
    bias = None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)


def _epsilon_weight_relevance(module: nn.Module, args: tuple, kwargs: dict,
                              relevance_out: torch.Tensor) -> torch.Tensor:
    weight = module.weight.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        z = _layer_output(module, args, kwargs, weight)
        stabiliser = torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z)) * LRP_EPSILON
        (grad,) = torch.autograd.grad(z, weight, grad_outputs=relevance_out / (z.detach() + stabiliser))
    return weight.detach() * grad


def _detached(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


class _OutputRelevanceRecorder:
    """Forward hooks storing each module's inputs and output and, via a tensor hook, the relevance at it."""

    def __init__(self, modules: list[nn.Module]):
        self.records: dict[int, list] = {id(module): [] for module in modules}
        self.handles = [module.register_forward_hook(self._hook(id(module)), with_kwargs=True)
                        for module in modules]

    def _hook(self, key):
        def hook(module, args, kwargs, output):
            record = {"args": tuple(_detached(a) for a in args),
                      "kwargs": {k: _detached(v) for k, v in kwargs.items()}, "output": output}
            self.records[key].append(record)
            if output.requires_grad:
                output.register_hook(lambda grad: record.__setitem__("r", grad.detach()))
        return hook

    def outputs(self) -> list[torch.Tensor]:
        """The recorded outputs that are part of the autograd graph."""
        return [rec["output"] for recs in self.records.values() for rec in recs
                if rec["output"].requires_grad]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _true_class_seed(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    seed = torch.zeros_like(output)
    rows = torch.arange(output.shape[0], device=output.device)
    seed[rows, targets] = output.detach()[rows, targets]
    return seed / output.shape[0]


def _zennit_relevances(model, inputs, targets, names, composite, canonizers) -> dict[str, torch.Tensor]:
    modules = {name: _modules_of(model, name) for name in names}
    composite = composite if composite is not None else epsilon_plus_flat_bn_pass()
    if canonizers:
        composite.canonizers = list(composite.canonizers or []) + list(canonizers)
    from_input = inputs.is_floating_point()
    x = inputs.detach().clone().requires_grad_(True) if from_input else inputs.detach()
    with composite.context(model) as hooked:
        recorder = _OutputRelevanceRecorder([m for sharing in modules.values() for m in sharing])
        try:
            output = hooked(x)
            wrt = [x] if from_input else recorder.outputs()
            if not wrt:
                raise ValueError(
                    "no quantized layer's output depends on a trainable weight, so no relevance can reach "
                    f"them from the output (inputs of dtype {inputs.dtype}). HINT: check `names` and that "
                    "the quantized weights require gradients."
                )
            seed = _true_class_seed(output, targets)
            torch.autograd.grad(output, wrt, grad_outputs=seed, allow_unused=True)
        finally:
            recorder.remove()
    out = {}
    for name, sharing in modules.items():
        parts = [_epsilon_weight_relevance(module, rec["args"], rec["kwargs"], rec["r"])
                 for module in sharing for rec in recorder.records[id(module)] if "r" in rec]
        zeros = torch.zeros_like(model.get_parameter(name).detach())
        out[name] = torch.stack(parts).sum(0) if parts else zeros
    return out


def _captum_relevances(model, inputs, targets, names) -> dict[str, torch.Tensor]:
    from captum.attr import InputXGradient

    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"captum backend: {missing} are not parameters of the model")
    fixed = {**{n: p.detach() for n, p in params.items()}, **dict(model.named_buffers())}

    def forward(*weights):
        return torch.func.functional_call(model, {**fixed, **dict(zip(names, weights, strict=True))},
                                          (inputs.detach(),))

    chosen = tuple(params[n].detach().clone().requires_grad_(True) for n in names)
    attributions = InputXGradient(forward).attribute(chosen, target=targets)
    return {n: a.detach() / inputs.shape[0] for n, a in zip(names, attributions, strict=True)}


def weight_relevances(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, backend: str = "zennit",
                      composite=None, canonizers: Iterable | None = None,
                      names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Relevance of every target weight for one batch (module docstring): name → parameter-shaped tensor.

    ``composite`` / ``canonizers`` are zennit objects (zennit backend only); ``names`` defaults to
    ``select_targets(model)``.
    """
    check_choice("backend", backend, BACKENDS)
    _check_inputs(model, inputs, targets)
    if backend == "captum" and (composite is not None or canonizers):
        raise ValueError("composite and canonizers apply to the zennit backend only")
    names = list(select_targets(model) if names is None else names)
    was_training = model.training
    model.eval()
    try:
        if backend == "zennit":
            return _zennit_relevances(model, inputs, targets, names, composite, canonizers)
        return _captum_relevances(model, inputs, targets, names)
    finally:
        model.train(was_training)
