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
training sample (CIFAR crops/flips) draws from a seed that is a function of ``(seed, epoch, index)``
(:class:`SeededIndex`), so it too is the same after a resume, with any number of worker processes.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

__all__ = [
    "ImageDataset",
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
SPLITS = ("train", "val", "test")


class ImageDataset(Dataset):
    """Images held in memory as one uint8 tensor ``(N, C, H, W)``, labels as int64, a per-sample transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Transform):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"ImageDataset: {images.shape[0]} images but {labels.shape[0]} labels.")
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        seed = getattr(index, "seed", None)
        if seed is None:
            return self.transform(self.images[index]), self.labels[index]
        # a SeededIndex: the random transform draws from its own seed, not from the global random state
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.transform(self.images[index]), self.labels[index]


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

    def train_transform(self) -> Transform:
        """Per-sample transform of training images (augmentation included)."""
        return self.eval_transform()

    def random_augmentation(self) -> bool:
        """Whether :meth:`train_transform` is random (then each training sample gets its own seed)."""
        return False

    def eval_transform(self) -> Transform:
        """Per-sample transform of validation and test images."""
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
            self.datasets[split] = ImageDataset(images_at(chosen), labels[chosen], self._transform_for(split))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

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

    def _transform_for(self, split: str) -> Transform:
        return self.train_transform() if split == "train" else self.eval_transform()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        return ResumableDataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            sampler=SeededEpochSampler(
                len(self.datasets[split]), seed=self.seed, shuffle=shuffle,
                seed_samples=shuffle and self.random_augmentation(),
            ),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


class SeededIndex(int):
    """A sample index carrying the seed of that sample's random augmentation in the current epoch.

    Behaves as the plain ``int`` everywhere; :class:`ImageDataset` draws its random transform from ``seed``.
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
        return iter([SeededIndex(i, seeds[i]) for i in order])


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

    Training images get the standard augmentation (random crop 32 with padding 4, horizontal flip); all
    images are scaled to [0, 1] and normalised with ``mean``/``std``. The defaults are the statistics the
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

    def random_augmentation(self) -> bool:
        return self.augment

    def train_transform(self) -> Transform:
        if not self.augment:
            return self.eval_transform()
        return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), *self._normalise()])

    def eval_transform(self) -> Transform:
        return v2.Compose(self._normalise())

    def _normalise(self) -> list:
        return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]

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
