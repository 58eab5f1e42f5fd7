"""Flat, block-aligned layout of a group of tensors, and deterministic per-tensor (segment) reductions.

A quantizer handles all quantized tensors of a model as one group: their elements live in flat buffers (shadow
weights, quantized values, cluster indices, relevances) so that one training step issues a fixed number of
tensor operations whatever the number of tensors. :class:`FlatLayout` describes such a buffer:

* tensor ``t`` occupies ``[offsets[t], offsets[t] + numel[t])``; every tensor starts on a multiple of
  ``block`` elements, so every block of ``block`` elements belongs to one tensor (``block_owner``) and
  per-tensor values reach the elements by broadcasting over blocks, never through a per-element index;
  ``valid`` marks the elements that are not padding (the tail of a tensor's last block);
* :meth:`views` gives each tensor's view of a buffer in its own shape (for ``torch._foreach_*`` copies).

Reductions per tensor never synchronise with the host and give the same result on every run and every rank:
integer counts (per-block ``scatter_add_`` and sums) are exact; minima and maxima do not depend on order;
floating-point sums are taken in float64 over fixed blocks (a dense ``sum`` over ``[blocks, block]``, then
over each tensor's blocks), never with atomics.
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
        valid = torch.zeros(self.size, dtype=torch.bool)
        owner, blocks_of = [], []
        for i, (offset, n) in enumerate(zip(self.offsets, self.numels, strict=True)):
            valid[offset : offset + n] = True
            first, count = offset // block, -(-n // block)
            owner += [i] * count
            blocks_of.append(torch.arange(first, first + count))
        self.valid = valid.to(device)
        self._valid_ones = valid.to(device=device, dtype=torch.int32).view(-1, block)
        self.num_blocks = self.size // block
        self.block_owner = torch.tensor(owner, dtype=torch.int64, device=device)
        widest = max(len(b) for b in blocks_of)
        table = torch.full((t, widest), self.num_blocks, dtype=torch.int64)  # num_blocks: a dummy block
        for i, b in enumerate(blocks_of):
            table[i, : len(b)] = b
        self._block_table = table.to(device)
        self.numel_tensor = torch.tensor(self.numels, dtype=torch.int64, device=device)
        self.numel_float64 = self.numel_tensor.to(torch.float64)

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
            self.views(out), [t.detach() for t in tensors]
        )  # copy_ converts dtype and device
        return out

    def split(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Independent copies of each tensor's part of ``buffer``."""
        return [v.clone() for v in self.views(buffer)]

    def blocks(self, buffer: torch.Tensor) -> torch.Tensor:
        """``buffer`` viewed as ``[blocks, block, ...]`` (every block belongs to one tensor)."""
        return buffer.view(self.num_blocks, self.block, *buffer.shape[1:])

    def rows(self, table: torch.Tensor) -> torch.Tensor:
        """Row ``owner(b)`` of a per-tensor ``table`` for every block ``b``: ``[blocks, ...]``."""
        return table.index_select(0, self.block_owner)

    def gather(self, table: torch.Tensor) -> torch.Tensor:
        """Per-element value of a per-tensor 1-D ``table`` (a flat buffer; padding reads its tensor's row)."""
        return self.rows(table)[:, None].expand(self.num_blocks, self.block).reshape(-1)

    def take(self, table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``table[t, indices[i]]`` for every element ``i`` of tensor ``t`` (a flat buffer)."""
        return self.rows(table).gather(1, self.blocks(indices)).view(-1)

    def per_tensor(self, block_values: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
        """Reduce per-block values ``[blocks, ...]`` to per-tensor values ``[T, ...]`` (sum, amin or amax).

        Integer sums, minima and maxima do not depend on the order (``index_add_``/``scatter_reduce``);
        floating-point sums go over each tensor's blocks in a fixed order (a dense ``sum``), never atomics.
        """
        shape = (self.num_tensors, *block_values.shape[1:])
        if reduce in ("amin", "amax"):
            fill = math.inf if reduce == "amin" else -math.inf
            out = block_values.new_full(shape, fill)
            return out.scatter_reduce_(0, self._owner_like(block_values), block_values, reduce=reduce)
        if not block_values.is_floating_point():
            return block_values.new_zeros(shape).index_add_(0, self.block_owner, block_values)
        padded = torch.cat([block_values, block_values.new_zeros((1, *block_values.shape[1:]))])
        return padded[self._block_table].sum(dim=1)

    def _owner_like(self, block_values: torch.Tensor) -> torch.Tensor:
        if block_values.dim() == 1:
            return self.block_owner
        return self.block_owner.view(-1, *([1] * (block_values.dim() - 1))).expand_as(block_values)

    # ------------------------------------------------------------------ reductions (no host synchronisation)
    def count(self, codes: torch.Tensor, num_codes: int) -> torch.Tensor:
        """``[T, num_codes]`` int32 histogram of per-element integer ``codes`` in ``0..num_codes-1``."""
        # integer sums are exact in any order; bincount would ask the host for the largest code on CUDA
        ones = self._valid_ones
        histogram = torch.zeros(self.num_blocks, num_codes, dtype=torch.int32, device=codes.device)
        return self.per_tensor(histogram.scatter_add_(1, self.blocks(codes), ones))

    def count_true(self, mask: torch.Tensor) -> torch.Tensor:
        """``[T]`` int64: number of true elements of a bool buffer per tensor (padding ignored)."""
        counts = self.blocks(mask & self.valid).sum(dim=1, dtype=torch.int32)
        return self.per_tensor(counts).to(torch.int64)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``[T, ...]`` float64 sums of each tensor's elements (``values``: ``[size, ...]``; padding must hold
        zeros), the same on every run."""
        return self.per_tensor(self.blocks(_float64(values)).sum(dim=1))

    def amin(self, values: torch.Tensor) -> torch.Tensor:
        """``[T]`` minimum of each tensor's elements."""
        return self.per_tensor(self.blocks(torch.where(self.valid, values, math.inf)).amin(dim=1), "amin")

    def amax(self, values: torch.Tensor) -> torch.Tensor:
        """``[T]`` maximum of each tensor's elements."""
        return self.per_tensor(self.blocks(torch.where(self.valid, values, -math.inf)).amax(dim=1), "amax")

    def std(self, values: torch.Tensor) -> torch.Tensor:
        """``[T]`` float64 unbiased standard deviation of each tensor (two passes: mean, then deviations)."""
        n = self.numel_float64
        v = torch.where(self.valid, _float64(values), 0.0)
        mean = self.sum(v) / n
        deviation = torch.where(self.blocks(self.valid), self.blocks(v) - self.rows(mean)[:, None], 0.0)
        return (self.sum(deviation.square().view(-1)) / (n - 1)).sqrt()


def _float64(values: torch.Tensor) -> torch.Tensor:
    # a same-dtype .to() is still one dispatched operation per call; the step counts them
    return values if values.dtype == torch.float64 else values.to(torch.float64)


__all__ = ["DEFAULT_BLOCK", "FlatLayout"]
