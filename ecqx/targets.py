"""Which tensors get quantized — decided here and nowhere else.

Rules (spec ecqx-ec2t.md §2.1 and §4.2):

* From a model: the ``weight`` of every module that is an instance of ``types`` (default: all convolutions and
  ``nn.Linear``), in ``named_modules()`` order. From a state_dict: every floating tensor with ``ndim > 1``.
* ``exclude_first`` / ``exclude_last`` drop the first / last of those candidates (EC2T keeps the input and the
  output layer in full precision: ``select_targets(model, exclude_first=True, exclude_last=True)``).
* A name matching any regular expression in ``exclude`` (default: ``downsample`` and ``aux_classifier``, as in
  the reference) is dropped; if ``include`` is given, a name must match at least one of its patterns.

Callbacks, the one-shot :func:`ecqx.quantize` and the optimizer split all use this one list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn

DEFAULT_EXCLUDE: tuple[str, ...] = ("downsample", "aux_classifier")
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


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


def _candidates_from_model(model: nn.Module, types: tuple[type[nn.Module], ...]) -> list[str]:
    names = []
    for module_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, types) and isinstance(weight, torch.Tensor) and weight.ndim > 1:
            names.append(f"{module_name}.weight" if module_name else "weight")
    return names


def _candidates_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    return [
        name for name, tensor in state_dict.items()
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.ndim > 1
    ]


def select_targets(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = DEFAULT_EXCLUDE,
    types: tuple[type[nn.Module], ...] = DEFAULT_TYPES,
    exclude_first: bool = False,
    exclude_last: bool = False,
) -> list[str]:
    """Return the names of the tensors to quantize, in model order (rules: see the module docstring)."""
    if isinstance(types, type):
        types = (types,)
    if not isinstance(types, tuple) or not all(isinstance(t, type) and issubclass(t, nn.Module)
                                               for t in types):
        raise TypeError(f"types must be a tuple of nn.Module subclasses, got {types!r}")
    if isinstance(model_or_state_dict, nn.Module):
        names = _candidates_from_model(model_or_state_dict, types)
    elif isinstance(model_or_state_dict, Mapping):
        names = _candidates_from_state_dict(model_or_state_dict)
    else:
        raise TypeError(
            "select_targets expects an nn.Module or a state_dict mapping, "
            f"got {type(model_or_state_dict).__name__}"
        )
    names = names[1 if exclude_first else 0: len(names) - 1 if exclude_last else len(names)]
    include_patterns = _patterns(include, "include")
    exclude_patterns = _patterns(exclude, "exclude")
    names = [n for n in names if not any(p.search(n) for p in exclude_patterns)]
    if include_patterns:
        names = [n for n in names if any(p.search(n) for p in include_patterns)]
    return names
