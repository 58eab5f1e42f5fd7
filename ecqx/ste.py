"""Shadow weights and the straight-through gradient mapping (spec ecqx-ec2t.md §2.4, §7 P1/P2).

The model holds the quantized weights; the optimizer steps a full-precision *shadow* copy that is **always a
separate tensor** (:func:`make_shadow`), on every device. After backward, the gradient g on a quantized weight
q is handed to its shadow weight by :func:`ste_gradient`:

* ``"abs"`` (clean default, TTQ/EC2T rule): g·|q| where q ≠ 0, g where q = 0;
* ``"signed"`` (faithful, as shipped): g·q where q ≠ 0 (flips the direction on negative levels),
  g where q = 0;
* ``"identity"``: g everywhere.
"""

from __future__ import annotations

import torch

from ecqx._checks import check_choice, check_mode

STE_SCALES = ("abs", "signed", "identity")


def default_ste_scale(mode: str) -> str:
    """``"abs"`` for clean mode, ``"signed"`` for faithful mode."""
    return "abs" if check_mode(mode) == "clean" else "signed"


def make_shadow(weight: torch.Tensor) -> torch.Tensor:
    """A full-precision copy of ``weight`` with its own storage (never a view or alias), same device/dtype."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    return weight.detach().clone(memory_format=torch.contiguous_format)


def ste_gradient(grad: torch.Tensor, quantized: torch.Tensor, scale: str = "abs") -> torch.Tensor:
    """Shadow-weight gradient from the gradient on the quantized tensor (see module docstring)."""
    check_choice("scale", scale, STE_SCALES)
    if grad.shape != quantized.shape:
        raise ValueError(f"grad shape {tuple(grad.shape)} != quantized shape {tuple(quantized.shape)}")
    if scale == "identity":
        return grad.clone()
    factor = quantized.abs() if scale == "abs" else quantized
    return torch.where(quantized != 0, grad * factor, grad)
