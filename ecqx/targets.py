"""Which tensors get quantized — decided here and nowhere else.

Rules (spec ecqx-ec2t.md §2.1 and §4.2):

* From a model: the ``weight`` of every module that is an instance of ``types`` (default
  :data:`DEFAULT_MODULE_TYPES`: ``nn.Conv1d/2d/3d``, ``nn.Linear``, ``nn.Embedding`` and ``nn.EmbeddingBag``),
  in ``named_modules()`` order.
* From a state_dict there are no modules to look at: every floating tensor with ``ndim > 1`` is a candidate.
  In a model built from the default module types plus layers whose tensors are 1-D (BatchNorm, LayerNorm,
  biases), that is exactly the set of the default module types' weights, so a model and its state_dict select
  the same names. A state_dict cannot tell a ``Linear`` weight from other ≥ 2-D tensors (attention
  ``in_proj_weight``, RNN weights, free ``nn.Parameter`` matrices), so those are candidates too: narrow them
  with ``include`` / ``exclude``, or select from the module.
* ``exclude_first`` / ``exclude_last`` drop the first / last of those candidates (EC2T keeps the input and the
  output layer in full precision: ``select_targets(model, exclude_first=True, exclude_last=True)``). With an
  embedding in front, the embedding is the first candidate.
* A name matching any regular expression in ``exclude`` (default: ``downsample`` and ``aux_classifier``, as in
  the reference) is dropped; if ``include`` is given, a name must match at least one of its patterns.
* Shared (tied) weights, from a model: a parameter used as the weight of several modules (a decoder
  ``Linear`` tied to an ``Embedding``, or one module registered twice) is one tensor and is selected once,
  under its first name, and only if every one of its names passes the rules above (a tensor the user keeps in
  full precision under one name cannot be quantized under another). :func:`parameter_aliases` gives its
  other names, which are also keys of the model's ``state_dict()``.

Callbacks, the one-shot :func:`ecqx.quantize` and the optimizer split all use this one list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn

DEFAULT_EXCLUDE: tuple[str, ...] = ("downsample", "aux_classifier")
DEFAULT_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding, nn.EmbeddingBag,
)


def _patterns(value: str | Iterable[str] | None, what: str) -> list[re.Pattern]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{what} must be a string or an iterable of strings, "
                        f"got {type(value).__name__}") from None
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{what} must contain only strings (regular expressions), got {item!r}")
    try:
        return [re.compile(item) for item in items]
    except re.error as err:
        raise ValueError(f"{what} contains an invalid regular expression: {err}") from None


def check_module_types(types: type[nn.Module] | tuple[type[nn.Module], ...],
                       what: str = "types") -> tuple[type[nn.Module], ...]:
    """``types`` as a non-empty tuple of ``nn.Module`` subclasses (one class is accepted too)."""
    if isinstance(types, type):
        types = (types,)
    if isinstance(types, list):
        types = tuple(types)
    if (not isinstance(types, tuple) or not types
            or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types)):
        raise TypeError(f"{what} must be a tuple of nn.Module subclasses, got {types!r}")
    return types


def _candidates_from_model(model: nn.Module,
                           types: tuple[type[nn.Module], ...]) -> list[tuple[str, torch.Tensor]]:
    # remove_duplicate=False: a module registered twice occupies two positions (first/last layer rules)
    candidates = []
    for module_name, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if isinstance(module, types) and isinstance(weight, torch.Tensor) and weight.ndim > 1:
            candidates.append((f"{module_name}.weight" if module_name else "weight", weight))
    return candidates


def _candidates_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [
        (name, tensor) for name, tensor in state_dict.items()
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.ndim > 1
    ]


def select_targets(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = DEFAULT_EXCLUDE,
    types: tuple[type[nn.Module], ...] = DEFAULT_MODULE_TYPES,
    exclude_first: bool = False,
    exclude_last: bool = False,
) -> list[str]:
    """Return the names of the tensors to quantize, in model order (rules: see the module docstring).

    ``types`` applies to a model only; a state_dict is selected by the ``ndim > 1`` rule.
    """
    types = check_module_types(types)
    from_model = isinstance(model_or_state_dict, nn.Module)
    if from_model:
        candidates = _candidates_from_model(model_or_state_dict, types)
    elif isinstance(model_or_state_dict, Mapping):
        candidates = _candidates_from_state_dict(model_or_state_dict)
    else:
        raise TypeError(
            "select_targets expects an nn.Module or a state_dict mapping, "
            f"got {type(model_or_state_dict).__name__}"
        )
    include_patterns = _patterns(include, "include")
    exclude_patterns = _patterns(exclude, "exclude")
    first, stop = (1 if exclude_first else 0), len(candidates) - (1 if exclude_last else 0)

    def kept(position: int, name: str) -> bool:
        if not first <= position < stop or any(p.search(name) for p in exclude_patterns):
            return False
        return not include_patterns or any(p.search(name) for p in include_patterns)

    if not from_model:
        return [name for position, (name, _) in enumerate(candidates) if kept(position, name)]
    # one entry per parameter, under its first name; kept only if all of its names are
    verdicts: dict[int, tuple[str, bool]] = {}
    for position, (name, weight) in enumerate(candidates):
        first_name, verdict = verdicts.get(id(weight), (name, True))
        verdicts[id(weight)] = (first_name, verdict and kept(position, name))
    return [name for name, verdict in verdicts.values() if verdict]


def parameter_aliases(model: nn.Module, names: Iterable[str]) -> dict[str, list[str]]:
    """For each of ``names`` (parameters of ``model``), every other name of the same parameter, in order.

    These are the keys of ``model.state_dict()`` that hold a shared (tied) parameter more than once; an
    unshared parameter has none.
    """
    by_identity: dict[int, list[str]] = {}
    params = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_identity.setdefault(id(param), []).append(name)
        params.setdefault(name, param)
    out = {}
    for name in names:
        if name not in params:
            raise ValueError(f"'{name}' is not a parameter of {type(model).__name__}")
        out[name] = [other for other in by_identity[id(params[name])] if other != name]
    return out


def modules_using(model: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    """Every module (each object once, ``named_modules()`` order) whose ``weight`` is parameter ``name``."""
    param = model.get_parameter(name)
    return [(module_name, module) for module_name, module in model.named_modules()
            if getattr(module, "weight", None) is param]
