"""The reference size that every "% of float32" and "x smaller than float32" figure of ecqx is taken against.

Definition: the model stored as float32, i.e. **4 bytes per value of every tensor in the state_dict** —
weights, biases, BatchNorm statistics and integer buffers (``num_batches_tracked``) alike, since an ``.nnc``
file holds all of them. Each state_dict entry counts once per name, as the bitstream codes it once per name.
Using one definition keeps the ratio that ``NNCExport`` logs, the ``ecqx fit`` report and ``ecqx compress``
comparable.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["FLOAT32_BYTES_PER_VALUE", "float32_bytes"]

FLOAT32_BYTES_PER_VALUE = 4


def float32_bytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Bytes of ``state_dict`` with every value of every tensor stored as float32 (4 bytes per value).

    Raises:
        TypeError: an entry is not a tensor (the size of anything else is not defined).
    """
    total = 0
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        total += tensor.numel()
    return FLOAT32_BYTES_PER_VALUE * total
