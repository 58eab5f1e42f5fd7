"""Flat, block-aligned layout of a group of tensors, and deterministic per-tensor (segment) reductions.

A quantizer handles all quantized tensors of a model as one group: their elements live in flat buffers (shadow
weights, quantized values, cluster indices, relevances) so that one training step issues a fixed number of
tensor operations whatever the number of tensors. :class:`FlatLayout` describes such a buffer:

* tensor ``t`` occupies ``[offsets[t], offsets[t] + numel[t])``; every tensor starts on a multiple of
  ``block`` elements, and the gaps between tensors (padding) belong to a dummy segment ``T`` (one past the
  last tensor), so per-tensor tables carry one extra row that absorbs them;
* ``segment`` (int64, one entry per buffer element) is the tensor id of every element, built once;
* :meth:`views` gives each tensor's view of a buffer in its own shape (for ``torch._foreach_*`` copies).

Reductions per tensor never synchronise with the host and give the same result on every run and every rank:
integer counts (``index_add_`` of ones) are exact; minima and maxima do not depend on order; floating-point
sums are
taken in float64 over fixed blocks (a dense ``sum`` over ``[blocks, block]``, then over each tensor's blocks),
never with atomics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

DEFAULT_BLOCK = 1024


class FlatLayout:
    """Where each tensor of a group lives in a flat buffer (see the module docstring)."""

    def __init__(
        self, shapes: Sequence[torch.Size | tuple[int, ...]], device=None, block: int = DEFAULT_BLOCK
    ):
        if not shapes:
            raise ValueError("a FlatLayout needs at least one tensor shape")
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block!r}")
        self.shapes = [torch.Size(shape) for shape in shapes]
        self.numels = [math.prod(shape) for shape in self.shapes]
        if min(self.numels) < 1:
            empty = [i for i, n in enumerate(self.numels) if n < 1]
            raise ValueError(f"tensors {empty} of the group are empty; every quantized tensor needs elements")
        self.block = block
        self.offsets = []
        position = 0
        for n in self.numels:
            self.offsets.append(position)
            position += -(-n // block) * block
        self.size = position
        self.num_tensors = len(self.shapes)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self._build_tables()

    def _build_tables(self) -> None:
        t, block, device = self.num_tensors, self.block, self.device
        segment = torch.full((self.size,), t, dtype=torch.int64)
        blocks_of = []
        for i, (offset, n) in enumerate(zip(self.offsets, self.numels, strict=True)):
            segment[offset : offset + n] = i
            first = offset // block
            blocks_of.append(torch.arange(first, first + -(-n // block)))
        self.segment = segment.to(device)
        num_blocks = self.size // block
        widest = max(len(b) for b in blocks_of)
        table = torch.full((t, widest), num_blocks, dtype=torch.int64)  # num_blocks: an all-zero dummy block
        for i, b in enumerate(blocks_of):
            table[i, : len(b)] = b
        self._block_table = table.to(device)
        self.numel_tensor = torch.tensor(self.numels, dtype=torch.int64, device=device)
        self.numel_float64 = self.numel_tensor.to(torch.float64)
        self.valid = self.segment < t

    def to(self, device) -> FlatLayout:
        """This layout with its index tables on ``device`` (a new object when the device changes)."""
        if torch.device(device) == self.device:
            return self
        return FlatLayout(self.shapes, device=device, block=self.block)

    # ------------------------------------------------------------------ buffers
    def empty(self, dtype=torch.float32, fill=0) -> torch.Tensor:
        """A new flat buffer of this layout (padding and tensors filled with ``fill``)."""
        return torch.full((self.size,), fill, dtype=dtype, device=self.device)

    def views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor's view of ``buffer`` (shares its storage), in the tensor's own shape."""
        return [
            buffer[o : o + n].view(shape)
            for o, n, shape in zip(self.offsets, self.numels, self.shapes, strict=True)
        ]

    def flatten(self, tensors: Sequence[torch.Tensor], dtype=None, fill=0) -> torch.Tensor:
        """A new flat buffer holding ``tensors`` (in layout order); padding is ``fill``."""
        dtype = dtype if dtype is not None else tensors[0].dtype
        out = self.empty(dtype, fill)
        torch._foreach_copy_(
            self.views(out), [t.detach().to(device=self.device, dtype=dtype) for t in tensors]
        )
        return out

    def split(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Independent copies of each tensor's part of ``buffer``."""
        return [v.clone() for v in self.views(buffer)]

    def gather(self, table: torch.Tensor) -> torch.Tensor:
        """Per-element value of a per-tensor ``table`` (first dimension ``T + 1``; padding reads row
        ``T``)."""
        return table.index_select(0, self.segment)

    # ------------------------------------------------------------------ reductions (no host synchronisation)
    def count(self, codes: torch.Tensor, num_codes: int) -> torch.Tensor:
        """``[T, num_codes]`` int64 histogram of per-element integer ``codes`` in ``0..num_codes-1``."""
        flat = self.segment * num_codes + codes
        # index_add_ of integers is exact in any order; bincount would ask the host for the largest code on
        # CUDA
        counts = torch.zeros((self.num_tensors + 1) * num_codes, dtype=torch.int64, device=flat.device)
        counts.index_add_(0, flat, torch.ones_like(flat))
        return counts.view(self.num_tensors + 1, num_codes)[: self.num_tensors]

    def count_true(self, mask: torch.Tensor) -> torch.Tensor:
        """``[T]`` int64: number of true elements of a bool buffer per tensor (padding ignored)."""
        counts = torch.zeros(self.num_tensors + 1, dtype=torch.int64, device=mask.device)
        return counts.index_add_(0, self.segment, mask.to(torch.int64))[: self.num_tensors]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``[T, ...]`` float64 sums of each tensor's elements (``values``: ``[size, ...]``; padding must hold
        zeros), the same on every run."""
        columns = values.shape[1:]
        partial = values.to(torch.float64).view(-1, self.block, *columns).sum(dim=1)
        partial = torch.cat([partial, partial.new_zeros(1, *columns)])
        return partial[self._block_table].sum(dim=1)

    def masked_sum(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[T]`` float64 sums of the elements where ``mask`` is true (padding excluded)."""
        return self.sum(torch.where(mask & self.valid, values.to(torch.float64), 0.0))

    def amin(self, values: torch.Tensor) -> torch.Tensor:
        """``[T]`` minimum of each tensor's elements."""
        return self._extreme(values, "amin", math.inf)

    def amax(self, values: torch.Tensor) -> torch.Tensor:
        """``[T]`` maximum of each tensor's elements."""
        return self._extreme(values, "amax", -math.inf)

    def _extreme(self, values: torch.Tensor, reduce: str, identity: float) -> torch.Tensor:
        out = torch.full((self.num_tensors + 1,), identity, dtype=values.dtype, device=values.device)
        out = out.scatter_reduce(0, self.segment, values, reduce=reduce, include_self=True)
        return out[: self.num_tensors]

    def std(self, values: torch.Tensor) -> torch.Tensor:
        """``[T]`` float64 unbiased standard deviation of each tensor (two passes: mean, then deviations)."""
        n = self.numel_tensor.to(torch.float64)
        v = torch.where(self.valid, values.to(torch.float64), 0.0)
        mean = self.sum(v) / n
        mean_all = torch.cat([mean, mean.new_zeros(1)]).index_select(0, self.segment)
        deviation = torch.where(self.valid, v - mean_all, 0.0)
        return (self.sum(deviation.square()) / (n - 1)).sqrt()


__all__ = ["DEFAULT_BLOCK", "FlatLayout"]
