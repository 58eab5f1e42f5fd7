"""Lightning data modules for the classification data sets the recipes use.

Every module takes its data from a ``root`` folder (never a fixed path, never a download) and splits it
deterministically from ``seed``: the training file is split into train/val, the official test file is the test
split (sklearn digits has no official split, so all three come from one seeded permutation). ``limit`` caps
every split at a seeded random subset, for quick runs and tests.

- :class:`DigitsDataModule`: sklearn's 8×8 digits, bundled with scikit-learn (no ``root`` needed).
- :class:`MNISTDataModule`, :class:`FashionMNISTDataModule`: the four idx files (``.gz`` or uncompressed)
  read with torchvision's idx readers.
- :class:`CIFAR10JPEGDataModule`: CIFAR-10 stored as JPEG bytes in ``cifar10_jpeg_q75.npz``, with the
  standard augmentation (random crop 32 with padding 4, horizontal flip) and normalisation.

The training loaders are resumable mid-epoch (:class:`ResumableDataLoader` over a
:class:`SeededEpochSampler`): the shuffle order is a function of ``(seed, epoch)`` only, never of the global
random state, and Lightning saves the loader's position in the checkpoint, so a run resumed from a mid-epoch
checkpoint sees exactly the batches the uninterrupted run would have seen. The random augmentation of a
training sample (CIFAR crops/flips) is a function of a per-sample seed that is itself a function of
``(seed, epoch, index)`` (:class:`SeededIndex`), so it too is the same after a resume, with any number of
worker processes and on any device.

Batched data path. Images stay uint8 in memory and every batch is built with one indexing op
(:meth:`ImageDataset.__getitems__`, torch's batched fetch) and transformed as a whole (no per-sample Python):
:class:`SeededCropFlip` derives each sample's crop offsets and flip bit from its seed with a counter-based
integer hash (splitmix64 in torch int64 ops) and gathers all crops with one ``gather``; scaling and
normalisation follow. Where that runs:

- training loader requested by a ``Trainer`` that fits with this data module: the loader yields
  :class:`RawBatch` ``(uint8 images, labels, seeds)``; Lightning moves it to the training device and the
  module's :meth:`ClassificationDataModule.on_after_batch_transfer` finishes it there into ``[x, y]``
  (float inputs, int64 labels), so ``training_step`` and the callbacks see the usual batches, and only
  uint8 bytes cross to the GPU;
- every other loader (validation/test, and a training loader built outside a fit, e.g. by hand): the
  same transform runs on the CPU in the loader and yields finished ``[x, y]`` batches, because code that
  iterates these loaders directly (``ClassificationModule.evaluate``, NNC export evaluation, ECQx reference
  batches) moves batches to the device without Lightning's hooks. Normalising a batch of 128 CIFAR images
  on the CPU takes well under a millisecond.

Both places compute the same function, so a batch is identical whichever way it was made (up to float
rounding of the normalisation on another device type).

``num_workers`` stays 0 by default: with the batched path a training batch costs the loader well under a
millisecond of CPU time (``benchmarks/bench_data.py``, ``benchmarks/results/bench_data.md``), less than
handing a batch over from a worker process, so workers only add start-up time and memory (each holds a copy
of the decoded split when the platform spawns instead of forking).
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn, TrainerStatus
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torchvision.transforms import v2

__all__ = [
    "ImageDataset",
    "ImageBatch",
    "RawBatch",
    "SeededCropFlip",
    "splitmix64",
    "ClassificationDataModule",
    "DigitsDataModule",
    "MNISTDataModule",
    "FashionMNISTDataModule",
    "CIFAR10JPEGDataModule",
    "read_idx_files",
    "ResumableDataLoader",
    "SeededEpochSampler",
    "SeededIndex",
]

Transform = Callable[[torch.Tensor], torch.Tensor]
Augmentation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SPLITS = ("train", "val", "test")


class SeededCropFlip:
    """Random crop with zero padding and random horizontal flip of a uint8 batch, one draw per sample seed.

    Vectorised over the batch and device-agnostic: the crop offsets ``(dy, dx)`` in ``0..2*padding`` and the
    flip bit of a sample are bit fields of ``splitmix64(seed)`` computed with torch int64 ops on the images'
    device, so the result is a pure function of ``(images, seeds)`` -- the same on CPU and GPU, in any
    process, after any resume. The output keeps the input size (crop ``H×W`` out of the padded
    ``(H+2p)×(W+2p)``; padding pixels are 0, as torchvision's ``RandomCrop(size, padding=p)``), and the flip
    mirrors the crop.

    Args:
        padding: zero padding on each side; offsets are uniform over ``(2*padding + 1)**2`` positions.
        flip: draw a horizontal flip with probability 1/2.
    """

    def __init__(self, padding: int = 4, flip: bool = True):
        _check_int("padding", padding, minimum=0)
        self.padding, self.flip = padding, bool(flip)

    def params(self, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(dy, dx, flip)`` per seed: int64 offsets in ``0..2*padding`` and a bool, on ``seeds``' device."""
        h = splitmix64(seeds)
        span = 2 * self.padding + 1
        dy = (_shift_right(h, 1) & 0x7FFFFFFF) % span  # bits 1..31
        dx = (_shift_right(h, 32) & 0x7FFFFFFF) % span  # bits 32..62
        flip = (h & 1).bool() if self.flip else torch.zeros_like(h, dtype=torch.bool)
        return dy, dx, flip

    def __call__(self, images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or seeds.shape != images.shape[:1]:
            raise ValueError(
                f"SeededCropFlip: expected images (N, C, H, W) and seeds (N,), got {tuple(images.shape)} "
                f"and {tuple(seeds.shape)}."
            )
        n, c, height, width = images.shape
        p = self.padding
        dy, dx, flip = self.params(seeds.to(images.device, torch.int64))
        padded = torch.nn.functional.pad(images, (p, p, p, p)) if p else images
        rows = dy[:, None] + torch.arange(height, device=images.device)  # (N, H) rows of the padded image
        across = torch.arange(width, device=images.device)
        cols = dx[:, None] + torch.where(flip[:, None], width - 1 - across, across)  # (N, W)
        # one gather over the flattened padded planes (advanced indexing with four index tensors is ~20x
        # slower on the CPU)
        where = (rows[:, :, None] * (width + 2 * p) + cols[:, None, :]).reshape(n, 1, height * width)
        out = padded.reshape(n, c, -1).gather(2, where.expand(n, c, height * width))
        return out.reshape(n, c, height, width)


_MASK64 = (1 << 64) - 1


def _int64(value: int) -> int:
    """An integer's two's-complement int64 value (``value`` mod 2**64, as a signed number)."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN_GAMMA = _int64(0x9E3779B97F4A7C15)
_MIX1 = _int64(0xBF58476D1CE4E5B9)
_MIX2 = _int64(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    # logical shift of the 64-bit pattern: torch's >> on int64 is arithmetic, so mask the sign copies off
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 (Steele, Lea, Flood 2014) of every int64 in ``x``, as int64 bit patterns.

    The counter-based mix behind :class:`SeededCropFlip`: torch int64 ``+``/``*`` wrap modulo 2**64 (two's
    complement) on CPU and CUDA, which is the unsigned arithmetic the algorithm needs.
    """
    z = x.to(torch.int64) + _GOLDEN_GAMMA
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


class RawBatch(NamedTuple):
    """A training batch before its transform: what the training loader of a fitting ``Trainer`` yields.

    ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64 ``(N,)``, ``seeds`` int64 ``(N,)`` augmentation seeds
    (``None`` without random augmentation). Lightning moves it to the device, where
    :meth:`ClassificationDataModule.on_after_batch_transfer` turns it into ``[x, y]``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    seeds: torch.Tensor | None


class ImageDataset(Dataset):
    """Images held in memory as one uint8 tensor ``(N, C, H, W)``, labels as int64, a batched transform.

    Args:
        images: uint8 images ``(N, C, H, W)``.
        labels: class labels ``(N,)``.
        transform: maps uint8 images ``(n, C, H, W)`` to float inputs, elementwise (scaling and
            normalisation); applied to whole batches, on whatever device they are.
        augmentation: optional random augmentation ``(uint8 images, int64 seeds) -> uint8 images``
            (:class:`SeededCropFlip`), applied before ``transform``; each sample draws from its
            :class:`SeededIndex` seed, or from the global random generator for a plain ``int`` index.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Transform,
        augmentation: Augmentation | None = None,
    ):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"ImageDataset: {images.shape[0]} images but {labels.shape[0]} labels.")
        self.images = images
        self.labels = labels.long()
        self.transform = transform
        self.augmentation = augmentation

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index]).finish()
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int]) -> ImageBatch:
        """The samples at ``indices`` as one :class:`ImageBatch`: one indexing op, not yet transformed."""
        rows = torch.as_tensor([int(i) for i in indices], dtype=torch.int64)
        seeds = None if self.augmentation is None else _sample_seeds(indices)
        # index_select copies whole images (advanced indexing of a uint8 tensor is ~30x slower on the CPU)
        return ImageBatch(self.images.index_select(0, rows), self.labels.index_select(0, rows), seeds, self)

    def finish(self, images: torch.Tensor, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """Float inputs from uint8 ``images`` (augmented from ``seeds`` when given), on their device."""
        if seeds is not None and self.augmentation is not None:
            images = self.augmentation(images, seeds)
        return self.transform(images)


class ImageBatch(Sequence):
    """What :meth:`ImageDataset.__getitems__` returns: a gathered batch, not yet transformed.

    The data modules' loaders hand it to a collate function that finishes it as a whole
    (:meth:`finish`) or ships it raw to the device (:class:`RawBatch`). As a sequence it is the list of
    finished ``(x, y)`` samples, so a plain ``DataLoader`` with torch's default collate still works.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, seeds: torch.Tensor | None, dataset: ImageDataset
    ):
        self.images, self.labels, self.seeds, self.dataset = images, labels, seeds, dataset
        self._finished: tuple[torch.Tensor, torch.Tensor] | None = None

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: the transformed (and augmented) float images and the labels."""
        if self._finished is None:
            self._finished = self.dataset.finish(self.images, self.seeds), self.labels
        return self._finished

    def raw(self) -> RawBatch:
        return RawBatch(self.images, self.labels, self.seeds)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i):
        x, y = self.finish()
        if isinstance(i, slice):
            return list(zip(x[i], y[i], strict=True))
        return x[i], y[i]


def finish_batch(batch: ImageBatch | list) -> list[torch.Tensor]:
    """Collate function of the finished loaders: ``[x, y]`` from an :class:`ImageBatch`, on the CPU."""
    if isinstance(batch, ImageBatch):
        return list(batch.finish())
    return default_collate(batch)  # a dataset without __getitems__


def raw_batch(batch: ImageBatch) -> RawBatch:
    """Collate function of the device path: the gathered uint8 batch, its labels and seeds, untransformed."""
    if not isinstance(batch, ImageBatch):
        raise TypeError(f"raw_batch collates ImageDataset batches only, got {type(batch).__name__}.")
    return batch.raw()


def _sample_seeds(indices: Sequence[int]) -> torch.Tensor:
    seeds = [getattr(i, "seed", None) for i in indices]
    if all(seed is None for seed in seeds):
        # plain indices (a loader without SeededEpochSampler): draw from the global random state, as
        # torchvision's random transforms would
        return torch.randint(0, 2**62, (len(seeds),), dtype=torch.int64)
    if any(seed is None for seed in seeds):
        raise ValueError("ImageDataset: a batch mixes SeededIndex and plain int indices.")
    return torch.as_tensor([_int64(seed) for seed in seeds], dtype=torch.int64)


class ClassificationDataModule(pl.LightningDataModule):
    """Shared splitting, subsetting and loader logic; subclasses only read their files.

    Subclasses implement :meth:`read_split` (``"train"`` or ``"test"`` file, or ``"all"`` for sets without an
    official split) returning a sample count and a function that turns indices into uint8 images, so large
    sets that need decoding (JPEG) decode only the samples a split actually uses.

    Args:
        root: folder holding the data files.
        batch_size: samples per training batch (evaluation uses the same size).
        val_size: validation samples taken from the training file, as a fraction in (0, 1) or a count.
        seed: seed of the train/val split and of the ``limit`` subsets.
        limit: if given, every split is cut to at most this many samples (a seeded random subset).
        num_workers: DataLoader worker processes.
    """

    has_official_test_split = True

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 64,
        val_size: int | float = 0.1,
        seed: int = 0,
        limit: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        _check_int("batch_size", batch_size, minimum=1)
        _check_int("num_workers", num_workers, minimum=0)
        _check_int("seed", seed, minimum=0)
        if limit is not None:
            _check_int("limit", limit, minimum=1)
        _check_split_size("val_size", val_size)
        self.root = os.fspath(root) if root is not None else None
        self.batch_size = batch_size
        self.val_size = val_size
        self.seed = seed
        self.limit = limit
        self.num_workers = num_workers
        self.datasets: dict[str, ImageDataset] = {}

    # -- to implement -------------------------------------------------------------------------------------
    def read_split(self, split: str) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """Return ``(labels, images_at)``; ``images_at(indices)`` gives uint8 images ``(n, C, H, W)``."""
        raise NotImplementedError

    def train_augmentation(self) -> Augmentation | None:
        """Random augmentation of training batches, ``(uint8 images, int64 seeds) -> uint8``, or None."""
        return None

    def random_augmentation(self) -> bool:
        """Whether training samples are randomly augmented (then each gets its own seed)."""
        return self.train_augmentation() is not None

    def eval_transform(self) -> Transform:
        """Elementwise transform of uint8 image batches into float inputs (after any augmentation)."""
        raise NotImplementedError

    # -- Lightning hooks ----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        indices = self._split_indices()
        sources = self._sources()
        for split in SPLITS:
            labels, images_at = sources[split]
            chosen = indices[split]
            augmentation = self.train_augmentation() if split == "train" else None
            self.datasets[split] = ImageDataset(
                images_at(chosen), labels[chosen], self.eval_transform(), augmentation
            )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Finish a :class:`RawBatch` on the device it was moved to: ``[x, y]`` (augmented float inputs).

        Lightning calls this for every batch on the training device; only the training loader of a fit
        yields raw batches (their seeds decide the augmentation), the other loaders' batches pass unchanged.
        """
        if not isinstance(batch, RawBatch):
            return batch
        if "train" not in self.datasets:
            self.setup()
        finished = [self.datasets["train"].finish(batch.images, batch.seeds), batch.labels]
        if self.trainer is not None:
            # Lightning converts a batch's float tensors for "16-true"/"bf16-true"/"64-true" precision before
            # the transfer, when this one still held uint8 images: convert the finished inputs now
            finished = self.trainer.precision_plugin.convert_input(finished)
        return finished

    # -- helpers ------------------------------------------------------------------------------------------
    def _sources(self) -> dict[str, tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]:
        if self.has_official_test_split:
            train, test = self.read_split("train"), self.read_split("test")
            return {"train": train, "val": train, "test": test}
        everything = self.read_split("all")
        return dict.fromkeys(SPLITS, everything)

    def _split_indices(self) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        if self.has_official_test_split:
            n_train = self.read_split("train")[0].shape[0]
            n_test = self.read_split("test")[0].shape[0]
            train_pool = torch.randperm(n_train, generator=generator)
            n_val = _resolve_size("val_size", self.val_size, n_train)
            split = {"val": train_pool[:n_val], "train": train_pool[n_val:]}
            split["test"] = (
                torch.randperm(n_test, generator=generator) if self.limit else torch.arange(n_test)
            )
        else:
            split = self._split_all(generator)
        if self.limit is not None:
            split = {name: idx[: self.limit] for name, idx in split.items()}
        return split

    def _split_all(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        on_device = split == "train" and self._fitting()
        return ResumableDataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            sampler=SeededEpochSampler(
                len(self.datasets[split]), seed=self.seed, shuffle=shuffle,
                seed_samples=shuffle and self.random_augmentation(),
            ),
            num_workers=self.num_workers,
            collate_fn=raw_batch if on_device else finish_batch,
            persistent_workers=self.num_workers > 0,
        )

    def _fitting(self) -> bool:
        """Whether a running ``Trainer.fit`` with this data module asks for the loader (and so will call
        :meth:`on_after_batch_transfer` on its batches)."""
        trainer = self.trainer
        if trainer is None or trainer.datamodule is not self:
            return False
        return trainer.state.fn == TrainerFn.FITTING and trainer.state.status == TrainerStatus.RUNNING


class SeededIndex(int):
    """A sample index carrying the seed of that sample's random augmentation in the current epoch.

    Behaves as the plain ``int`` everywhere; :class:`ImageDataset` augments the sample from ``seed``.
    """

    def __new__(cls, index: int, seed: int) -> SeededIndex:
        obj = super().__new__(cls, index)
        obj.seed = seed
        return obj

    def __reduce__(self):  # keep the seed when indices are pickled to worker processes
        return (SeededIndex, (int(self), self.seed))


class SeededEpochSampler(Sampler[int]):
    """Indices ``0..n-1``, shuffled per epoch from ``(seed, epoch)`` alone (never from the global RNG).

    Lightning calls :meth:`set_epoch` at every epoch start, also when it resumes mid-epoch, so the order of an
    epoch can be rebuilt after a restart. Under DDP, Lightning wraps this sampler in its
    ``DistributedSamplerWrapper``, which forwards ``set_epoch``; every rank then shards the same order.

    Args:
        n: number of samples.
        seed: seed of the permutations; epoch ``e`` uses a generator seeded from ``(seed, e)``.
        shuffle: ``False`` gives ``0..n-1`` in every epoch.
        seed_samples: yield :class:`SeededIndex` objects whose augmentation seed is a function of
            ``(seed, epoch, index)``, so random augmentation is reproducible whatever the global random state,
            the worker count, or where a run was resumed.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, seed_samples: bool = False):
        _check_int("n", n, minimum=0)
        _check_int("seed", seed, minimum=0)
        self.n, self.seed, self.shuffle, self.seed_samples = n, seed, bool(shuffle), bool(seed_samples)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        _check_int("epoch", epoch, minimum=0)
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        # one generator per epoch: neither order nor seeds depend on how many epochs were iterated before
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist() if self.shuffle else range(self.n)
        if not self.seed_samples:
            return iter(order)
        seeds = torch.randint(0, 2**62, (self.n,), generator=generator).tolist()
        return (SeededIndex(i, seeds[i]) for i in order)  # lazily: ~4 µs an object, spread over the epoch


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position within an epoch survives a checkpoint (Lightning's stateful loaders).

    Lightning 2.6 stores ``state_dict()`` of every training loader that has ``state_dict``/``load_state_dict``
    in the checkpoint (``loops.fit_loop.state_dict.combined_loader``) and, when it resumes mid-epoch, calls
    :meth:`load_state_dict` before creating the epoch's iterator. The state is the sampler's epoch, the number
    of batches already yielded in it and the CPU random state at that point; the resumed iteration rebuilds
    that epoch's batch order (the sampler must be deterministic per epoch, e.g. :class:`SeededEpochSampler` or
    ``DistributedSampler``), loads only the batches not yet seen and, with ``num_workers=0``, first restores
    the CPU random state, so augmentation that draws from the global generator in the main process (and CPU
    dropout) repeats too within the epoch. Lightning itself restores no random state. The data modules here
    need none of that: their augmentation is seeded per sample (:class:`SeededIndex`). A plain
    ``DataLoader`` restarts the epoch from its first batch.

    Takes exactly the arguments of ``torch.utils.data.DataLoader``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._position = 0  # batches yielded by the current iteration
        self._resume: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The sampler's epoch, the number of batches yielded in it so far and the CPU random state."""
        return {"epoch": self._sampler_epoch(), "batches": self._position, "cpu_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration skip the batches ``state`` says were already yielded in its epoch."""
        if not isinstance(state, dict) or not isinstance(state.get("batches"), int) or state["batches"] < 0:
            raise ValueError(
                "ResumableDataLoader.load_state_dict: expected a dict with 'epoch' (int or None), 'batches' "
                f"(int >= 0) and optionally 'cpu_rng' (a ByteTensor), got {state!r}"
            )
        self._resume = dict(state)

    def __iter__(self) -> _ResumingIterator:
        # Lazy: nothing runs before the first `next()`, because Lightning creates the iterator before it calls
        # `set_epoch` on a resumed run, and the epoch decides the order.
        return _ResumingIterator(self)

    def _start_iteration(self):
        resume = self._resume
        skip = self._take_resume_skip()
        self._position = skip
        source = super().__iter__() if skip == 0 else self._remaining_batches(skip)
        if skip and self.num_workers == 0 and resume.get("cpu_rng") is not None:
            # after creating the iterator: that draws a base seed from the CPU generator, which the
            # uninterrupted run did at the start of the epoch
            torch.set_rng_state(resume["cpu_rng"])
        return source

    def _take_resume_skip(self) -> int:
        resume, self._resume = self._resume, None
        if resume is None or resume["epoch"] != self._sampler_epoch():
            return 0  # no resume, or the checkpoint was taken in an epoch that is over
        return resume["batches"] if resume["batches"] < len(self.batch_sampler) else 0

    def _remaining_batches(self, skip: int):
        batches = list(self.batch_sampler)[skip:]
        return iter(
            DataLoader(
                self.dataset,
                batch_sampler=batches,
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                pin_memory=self.pin_memory,
                worker_init_fn=self.worker_init_fn,
                generator=self.generator,
            )
        )

    def _sampler_epoch(self) -> int | None:
        sampler = self.batch_sampler.sampler if self.batch_sampler is not None else self.sampler
        return getattr(sampler, "epoch", None)


class DigitsDataModule(ClassificationDataModule):
    """sklearn's 8×8 handwritten digits (1,797 images, values 0–16), split train/val/test from ``seed``.

    Args:
        root: ``None`` (default) loads the copy bundled with scikit-learn (``sklearn.datasets.load_digits``);
            a folder loads ``digits.csv.gz`` from it (same file format).
        test_size: test samples, as a fraction in (0, 1) or a count.
        batch_size, val_size, seed, limit, num_workers: see :class:`ClassificationDataModule`.
    """

    has_official_test_split = False
    file_name = "digits.csv.gz"

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 64,
        val_size: int | float = 0.1,
        test_size: int | float = 0.2,
        seed: int = 0,
        limit: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__(root, batch_size, val_size, seed, limit, num_workers)
        _check_split_size("test_size", test_size)
        self.test_size = test_size
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def read_split(self, split: str) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        if self._cache is None:
            self._cache = _load_digits(self.root, self.file_name)
        images, labels = self._cache
        return labels, images.__getitem__

    def _split_all(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        n = self.read_split("all")[0].shape[0]
        n_test = _resolve_size("test_size", self.test_size, n)
        n_val = _resolve_size("val_size", self.val_size, n - n_test)
        order = torch.randperm(n, generator=generator)
        return {
            "test": order[:n_test],
            "val": order[n_test : n_test + n_val],
            "train": order[n_test + n_val :],
        }

    def eval_transform(self) -> Transform:
        return _ScaleToUnit(16.0)


class _IdxDataModule(ClassificationDataModule):
    """MNIST-format data: four idx files (``.gz`` or plain) in ``root`` or ``root/<folder>/raw``."""

    torchvision_folder = ""
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def read_split(self, split: str) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        if split not in self._cache:
            prefix = "train" if split == "train" else "t10k"
            images, labels = read_idx_files(
                self._find(f"{prefix}-images-idx3-ubyte"), self._find(f"{prefix}-labels-idx1-ubyte")
            )
            self._cache[split] = (images.unsqueeze(1), labels)
        images, labels = self._cache[split]
        return labels, images.__getitem__

    def eval_transform(self) -> Transform:
        return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])

    def _find(self, stem: str) -> str:
        folders = [self.root, os.path.join(self.root, self.torchvision_folder, "raw")]
        candidates = [os.path.join(folder, stem + ext) for folder in folders for ext in (".gz", "")]
        for candidate in candidates:
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(
            f"{type(self).__name__}: {stem}(.gz) not found in `root`={self.root!r}; looked for {candidates}. "
            "HINT: pass --data.root (or root=) pointing at the folder holding the four idx files."
        )


class MNISTDataModule(_IdxDataModule):
    """MNIST (60k train, 10k test, 28×28), normalised with the usual mean 0.1307 / std 0.3081.

    Args:
        root: folder holding ``train-images-idx3-ubyte.gz`` etc. (or torchvision's ``MNIST/raw`` layout).
        batch_size, val_size, seed, limit, num_workers: see :class:`ClassificationDataModule`.
    """

    torchvision_folder = "MNIST"
    mean = (0.1307,)
    std = (0.3081,)

    def __init__(
        self,
        root: str = "data/mnist",
        batch_size: int = 128,
        val_size: int | float = 5000,
        seed: int = 0,
        limit: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__(root, batch_size, val_size, seed, limit, num_workers)


class FashionMNISTDataModule(_IdxDataModule):
    """Fashion-MNIST (60k train, 10k test, 28×28), normalised with mean 0.2860 / std 0.3530.

    Args:
        root: folder holding ``train-images-idx3-ubyte.gz`` etc. (or torchvision's ``FashionMNIST/raw``).
        batch_size, val_size, seed, limit, num_workers: see :class:`ClassificationDataModule`.
    """

    torchvision_folder = "FashionMNIST"
    mean = (0.2860,)
    std = (0.3530,)

    def __init__(
        self,
        root: str = "data/fashion-mnist",
        batch_size: int = 128,
        val_size: int | float = 5000,
        seed: int = 0,
        limit: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__(root, batch_size, val_size, seed, limit, num_workers)


class CIFAR10JPEGDataModule(ClassificationDataModule):
    """CIFAR-10 from ``cifar10_jpeg_q75.npz`` (JPEG bytes + offsets + labels), decoded with Pillow.

    Training images get the standard augmentation (random crop 32 with padding 4, horizontal flip;
    :class:`SeededCropFlip`, on the training device during a fit); all images are scaled to [0, 1] and
    normalised with ``mean``/``std``. The defaults are the statistics the
    widely used pretrained CIFAR ResNets were trained with. Only the samples a split uses are decoded.

    Args:
        root: folder holding ``cifar10_jpeg_q75.npz``.
        mean, std: per-channel normalisation.
        augment: apply the training augmentation (turn off for deterministic training inputs).
        batch_size, val_size, seed, limit, num_workers: see :class:`ClassificationDataModule`.
    """

    file_name = "cifar10_jpeg_q75.npz"

    def __init__(
        self,
        root: str = "data/cifar10-jpeg",
        batch_size: int = 128,
        val_size: int | float = 5000,
        seed: int = 0,
        limit: int | None = None,
        num_workers: int = 0,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        augment: bool = True,
    ):
        super().__init__(root, batch_size, val_size, seed, limit, num_workers)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(
                f"CIFAR10JPEGDataModule: `mean`/`std` need 3 values (RGB) each, std > 0; got {mean}, {std}."
            )
        self.mean, self.std, self.augment = tuple(mean), tuple(std), augment
        self._archive: dict[str, np.ndarray] | None = None

    def read_split(self, split: str) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        archive = self._load_archive()
        jpeg_bytes, offsets = archive[f"{split}_jpeg"], archive[f"{split}_offsets"]
        labels = torch.from_numpy(archive[f"{split}_labels"].astype(np.int64))

        def images_at(indices: torch.Tensor) -> torch.Tensor:
            return _decode_jpegs(jpeg_bytes, offsets, indices.tolist())

        return labels, images_at

    def train_augmentation(self) -> Augmentation | None:
        return SeededCropFlip(padding=4) if self.augment else None

    def eval_transform(self) -> Transform:
        return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])

    def _load_archive(self) -> dict[str, np.ndarray]:
        if self._archive is None:
            path = os.path.join(self.root, self.file_name)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"CIFAR10JPEGDataModule: {self.file_name} not found in `root`={self.root!r}. "
                    "HINT: pass --data.root (or root=) pointing at the folder holding the archive."
                )
            with np.load(path) as archive:
                self._archive = {key: archive[key] for key in archive.files}
            expected = {f"{s}_{k}" for s in ("train", "test") for k in ("jpeg", "offsets", "labels")}
            missing = sorted(expected - set(self._archive))
            if missing:
                raise ValueError(f"CIFAR10JPEGDataModule: {path} lacks the arrays {missing}.")
        return self._archive


class _ResumingIterator:
    """Iterator of :class:`ResumableDataLoader`: starts the epoch on the first ``next()``, counts batches."""

    def __init__(self, loader: ResumableDataLoader):
        self.loader = loader
        self.source = None

    def __iter__(self) -> _ResumingIterator:
        return self

    def __next__(self):
        if self.source is None:
            self.source = self.loader._start_iteration()
        batch = next(self.source)
        self.loader._position += 1
        return batch


def read_idx_files(images_path: str, labels_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an idx image file and its label file (``.gz`` or uncompressed) with torchvision's idx readers.

    Returns ``(images uint8 (N, H, W), labels int64 (N,))``.

    Raises:
        ValueError: a file is not a valid idx file of the expected kind, or the counts differ.
    """
    from torchvision.datasets.mnist import read_image_file, read_label_file

    with tempfile.TemporaryDirectory(prefix="ecqx-idx-") as scratch:
        images = _read_idx(read_image_file, images_path, scratch)
        labels = _read_idx(read_label_file, labels_path, scratch)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels."
        )
    return images, labels.long()


def _read_idx(reader: Callable[[str], torch.Tensor], path: str, scratch: str) -> torch.Tensor:
    # torchvision's readers open plain files only, so compressed files are unpacked into a scratch folder.
    plain = path
    if path.endswith(".gz"):
        plain = os.path.join(scratch, os.path.basename(path)[:-3])
        with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
    try:
        return reader(plain)
    except (AssertionError, RuntimeError, ValueError, KeyError, OSError) as error:
        raise ValueError(f"{path} is not a valid idx file of the expected kind: {error!r}") from error


def _load_digits(root: str | None, file_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if root is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, labels = bunch.data, bunch.target
    else:
        path = os.path.join(root, file_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"DigitsDataModule: {file_name} not found in `root`={root!r}; "
                "pass root=None to use the copy bundled with scikit-learn."
            )
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",")
        pixels, labels = table[:, :64], table[:, 64]
    images = torch.from_numpy(pixels.astype(np.uint8)).reshape(-1, 1, 8, 8)
    return images, torch.from_numpy(labels.astype(np.int64))


def _decode_jpegs(jpeg_bytes: np.ndarray, offsets: np.ndarray, indices: list[int]) -> torch.Tensor:
    from PIL import Image

    images = np.empty((len(indices), 32, 32, 3), dtype=np.uint8)
    for row, i in enumerate(indices):
        with Image.open(io.BytesIO(jpeg_bytes[offsets[i] : offsets[i + 1]].tobytes())) as image:
            images[row] = np.asarray(image.convert("RGB"))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


class _ScaleToUnit:
    """Divide by the largest raw value (a class, not a closure, so worker processes can pickle it)."""

    def __init__(self, max_value: float):
        self.max_value = max_value

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.float() / self.max_value


def _resolve_size(name: str, size: int | float, total: int) -> int:
    count = round(size * total) if isinstance(size, float) and size < 1 else int(size)
    if not 0 < count < total:
        raise ValueError(
            f"`{name}`={size!r} gives {count} of {total} samples; it must leave both parts non-empty."
        )
    return count


def _check_split_size(name: str, size: int | float) -> None:
    if isinstance(size, bool) or not isinstance(size, int | float) or size <= 0:
        raise ValueError(f"`{name}` must be a fraction in (0, 1) or a positive count, got {size!r}.")
    if isinstance(size, float) and size >= 1 and not size.is_integer():
        raise ValueError(f"`{name}`={size!r}: use a fraction in (0, 1) or a whole number of samples.")


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
