"""``QuantizedTensor``: the quantizer's side of the cross-team description of a quantized tensor.

Its value is exactly ``float32(levels) * step_size(qp, qp_density)`` in float32; ``codebook`` (None or a
sorted int32 tensor) lists the values ``levels`` may take for EC2T/codebook grids. :func:`export_levels`
turns an assignment on a :class:`~ecqx.grid.Grid` into one, snapping an unsnapped (faithful-mode)
grid and reporting the largest weight change that the snapping caused in ``max_export_change``.

``QuantizedTensor`` satisfies the codec's ``ecqx.coding.QuantizedLevels`` protocol (levels, qp, qp_density,
codebook, dq), which is how ``ecqx.coding.encode`` reads it; this package does not import the codec
(DESIGN.md §1), so the protocol is not named in the code here, and a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ecqx.grid import Grid, snap_grid
from ecqx.stepsize import DEFAULT_SNAP_RTOL, nnc_step_size


@dataclass
class QuantizedTensor:
    """Integer levels, NNC qp/qp_density (and codebook); ``dequantize()`` is what an NNC decoder returns."""

    levels: torch.Tensor
    qp: int
    qp_density: int = 2
    codebook: torch.Tensor | None = None
    dq: bool = False
    max_export_change: float = 0.0

    def __post_init__(self):
        if not isinstance(self.levels, torch.Tensor) or self.levels.is_floating_point():
            raise TypeError("levels must be an integer torch tensor")
        nnc_step_size(self.qp, self.qp_density)  # validates qp and qp_density
        if self.codebook is not None:
            codebook = self.codebook.to(torch.int32)
            if codebook.ndim != 1 or bool((codebook[1:] <= codebook[:-1]).any()):
                raise ValueError(f"codebook must be a 1-D strictly increasing integer tensor, got {codebook}")
            self.codebook = codebook

    @property
    def step(self) -> float:
        """Δ(qp, qp_density) as a Python float (the float32 value)."""
        return nnc_step_size(self.qp, self.qp_density)

    def dequantize(self) -> torch.Tensor:
        """float32 tensor ``float32(levels) * float32(step)``."""
        return self.levels.to(torch.float32) * torch.tensor(self.step, dtype=torch.float32)


def export_levels(levels: torch.Tensor, grid: Grid, trained_values: torch.Tensor | None = None,
                  snap_rtol: float = DEFAULT_SNAP_RTOL) -> QuantizedTensor:
    """Describe integer ``levels`` on ``grid`` for NNC export.

    A snapped grid exports losslessly. An unsnapped (faithful) grid is snapped here; ``max_export_change`` is
    the largest |trained − exported| weight (``trained_values`` default: ``levels × grid.step``).
    """
    snapped = snap_grid(grid, snap_rtol)
    codebook = None if grid.is_contiguous else grid.level_tensor()
    result = QuantizedTensor(levels.to(torch.int32), snapped.qp, snapped.qp_density, codebook=codebook)
    if trained_values is None:
        trained_values = grid.values(levels.device)[torch.searchsorted(grid.level_tensor(levels.device),
                                                                       levels.to(torch.int32))]
    change = (trained_values.to(torch.float32) - result.dequantize().to(trained_values.device)).abs().max()
    result.max_export_change = change.item()
    return result
