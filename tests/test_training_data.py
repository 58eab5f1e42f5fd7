"""Data modules on the real files of the shared data folder (small limits), on hand-written idx files, and
the batched augmentation path (seeded crops/flips finished on the training device) on synthetic images."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from ecqx.training.data import (
    CIFAR10JPEGDataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    read_idx_files,
)


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    """idx format by hand: zero bytes, type 0x08 (uint8), number of dims, big-endian uint32 sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(payload)


def split_sets(module) -> dict[str, set[int]]:
    """Identify samples by their pixel bytes (digits/MNIST images are unique enough for these sizes)."""
    return {
        name: {hash(ds.images[i].numpy().tobytes()) for i in range(len(ds))}
        for name, ds in module.datasets.items()
    }


def test_digits_bundled_copy_equals_the_csv_in_a_root_folder(shared_dir):
    bundled = DigitsDataModule(seed=3)
    from_root = DigitsDataModule(str(shared_dir / "data" / "sklearn-digits"), seed=3)
    bundled.setup()
    from_root.setup()
    for split in ("train", "val", "test"):
        assert torch.equal(bundled.datasets[split].images, from_root.datasets[split].images)
        assert torch.equal(bundled.datasets[split].labels, from_root.datasets[split].labels)


def test_digits_splits_are_disjoint_complete_and_seeded():
    module = DigitsDataModule(val_size=0.1, test_size=0.2, seed=0)
    module.setup()
    sizes = {name: len(ds) for name, ds in module.datasets.items()}
    # 1797 samples: test round(0.2 * 1797) = 359, val round(0.1 * 1438) = 144, train the remaining 1294
    assert sizes == {"train": 1294, "val": 144, "test": 359}
    all_labels = torch.cat([ds.labels for ds in module.datasets.values()])
    assert torch.bincount(all_labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    again = DigitsDataModule(seed=0)
    again.setup()
    assert torch.equal(again.datasets["val"].images, module.datasets["val"].images)
    other = DigitsDataModule(seed=1)
    other.setup()
    assert not torch.equal(other.datasets["val"].images, module.datasets["val"].images)
    x, y = next(iter(module.train_dataloader()))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and y.dtype == torch.int64


def test_mnist_idx_reader_matches_the_published_facts(shared_dir):
    root = shared_dir / "data" / "mnist"
    images, labels = read_idx_files(
        str(root / "train-images-idx3-ubyte.gz"), str(root / "train-labels-idx1-ubyte.gz")
    )
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert torch.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert abs(images.float().mean().item() / 255 - 0.1307) < 5e-4


def test_mnist_module_splits_and_normalises(shared_dir):
    module = MNISTDataModule(str(shared_dir / "data" / "mnist"), val_size=5000, limit=256, batch_size=256)
    module.setup()
    assert {name: len(ds) for name, ds in module.datasets.items()} == {"train": 256, "val": 256, "test": 256}
    x, _ = next(iter(module.train_dataloader()))
    assert x.shape == (256, 1, 28, 28)
    # normalised with the data set's own statistics: mean near 0, std near 1
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1
    train, val = split_sets(module)["train"], split_sets(module)["val"]
    assert not train & val


def test_fashion_mnist_module_reads_the_shared_files(shared_dir):
    module = FashionMNISTDataModule(str(shared_dir / "data" / "fashion-mnist"), limit=300)
    module.setup()
    labels = module.datasets["test"].labels
    assert len(labels) == 300 and len(labels.unique()) == 10


def test_idx_module_reads_plain_files_in_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (30, 28, 28)), "t10k": rng.integers(0, 256, (10, 28, 28))}
    labels = {"train": np.arange(30) % 10, "t10k": np.arange(10)[::-1]}
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[prefix], compress=False)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[prefix], compress=False)
    module = MNISTDataModule(str(tmp_path), val_size=5, batch_size=4)
    module.setup()
    test = module.datasets["test"]
    assert torch.equal(test.images[:, 0], torch.from_numpy(images["t10k"].astype(np.uint8)))
    assert test.labels.tolist() == list(range(9, -1, -1))
    assert len(module.datasets["train"]) == 25 and len(module.datasets["val"]) == 5


def test_idx_reader_rejects_mismatched_and_corrupt_files(tmp_path):
    write_idx(tmp_path / "images.gz", np.zeros((4, 28, 28)), compress=True)
    write_idx(tmp_path / "labels.gz", np.zeros(3), compress=True)
    with pytest.raises(ValueError, match="holds 4 images but .* holds 3 labels"):
        read_idx_files(str(tmp_path / "images.gz"), str(tmp_path / "labels.gz"))
    (tmp_path / "junk").write_bytes(b"\x00\x00\x42\x03not an idx file")
    with pytest.raises(ValueError, match="not a valid idx file"):
        read_idx_files(str(tmp_path / "junk"), str(tmp_path / "labels.gz"))


def test_missing_files_give_a_hint(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"train-images-idx3-ubyte\(\.gz\) not found .*HINT: pass --data.root"
    ):
        MNISTDataModule(str(tmp_path)).setup()
    with pytest.raises(FileNotFoundError, match=r"cifar10_jpeg_q75\.npz not found .*HINT"):
        CIFAR10JPEGDataModule(str(tmp_path)).setup()
    with pytest.raises(FileNotFoundError, match="pass root=None"):
        DigitsDataModule(str(tmp_path)).setup()


def test_cifar10_jpeg_module_decodes_augments_and_normalises(shared_dir):
    module = CIFAR10JPEGDataModule(str(shared_dir / "data" / "cifar10-jpeg"), limit=500, batch_size=50)
    module.setup()
    train = module.datasets["train"]
    assert train.images.shape == (500, 3, 32, 32) and train.images.dtype == torch.uint8
    # the README's decoded per-channel train mean is (0.4913, 0.4821, 0.4465); 500 images are a fair sample
    mean = train.images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.4913, 0.4821, 0.4465]), atol=0.03)
    # the test split is sorted by class in the archive: a limited subset must still be a random one
    assert len(module.datasets["test"].labels.unique()) == 10
    # evaluation transform is deterministic and normalised with the given statistics
    test = module.datasets["test"]
    x0, _ = test[0]
    expected = (
        test.images[0].float() / 255 - torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    ) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.allclose(x0, expected, atol=1e-6)
    # training augmentation: random crops/flips change the same sample between draws
    torch.manual_seed(0)
    draws = [train[0][0] for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert all(d.shape == (3, 32, 32) for d in draws)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, r"`batch_size` must be an integer >= 1, got 0"),
        ({"limit": -5}, r"`limit` must be an integer >= 1, got -5"),
        ({"val_size": 0}, r"`val_size` must be a fraction in \(0, 1\) or a positive count, got 0"),
        ({"val_size": 2.5}, r"`val_size`=2.5: use a fraction in \(0, 1\) or a whole number"),
        ({"test_size": 1797}, r"`test_size`=1797 gives 1797 of 1797 samples"),
    ],
)
def test_bad_data_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DigitsDataModule(**kwargs).setup()


def test_cifar_rejects_bad_normalisation():
    with pytest.raises(ValueError, match=r"`mean`/`std` need 3 values"):
        CIFAR10JPEGDataModule(mean=(0.5,), std=(0.5,))


def test_only_random_augmentation_gets_per_sample_seeds(shared_dir):
    from ecqx.training.data import SeededIndex

    # digits has no random augmentation: its shuffled training indices are plain ints (no per-sample seeding)
    digits = DigitsDataModule(batch_size=16)
    digits.setup()
    order = list(digits.train_dataloader().sampler)
    assert sorted(order) == list(range(len(digits.datasets["train"])))
    assert not any(isinstance(i, SeededIndex) for i in order)
    root = str(shared_dir / "data" / "cifar10-jpeg")
    augmented = CIFAR10JPEGDataModule(root, limit=64, batch_size=16)
    augmented.setup()
    assert all(isinstance(i, SeededIndex) for i in augmented.train_dataloader().sampler)
    plain = CIFAR10JPEGDataModule(root, limit=64, batch_size=16, augment=False)
    plain.setup()
    assert not any(isinstance(i, SeededIndex) for i in plain.train_dataloader().sampler)


# -- the batched, device-side augmentation path (synthetic images; no shared data needed) -------------------

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def python_splitmix64(x: int) -> int:
    """Reference splitmix64 on Python integers (unsigned 64-bit), returned as a signed int64 value."""
    mask = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return z - (1 << 64) if z >= 1 << 63 else z


def write_cifar_like(root, n_train: int = 96, n_test: int = 32, seed: int = 0) -> None:
    """A tiny ``cifar10_jpeg_q75.npz``: random 32x32 RGB images as JPEG q75 bytes, offsets and labels."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        chunks, offsets = [], [0]
        for _ in range(n):
            # smooth random images (JPEG keeps them recognisable, crops of them differ)
            small = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
            image = Image.fromarray(small).resize((32, 32), Image.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=75)
            chunks.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
            offsets.append(offsets[-1] + len(chunks[-1]))
        arrays[f"{split}_jpeg"] = np.concatenate(chunks)
        arrays[f"{split}_offsets"] = np.asarray(offsets, dtype=np.int64)
        arrays[f"{split}_labels"] = (np.arange(n) % 10).astype(np.uint8)
    np.savez(root / "cifar10_jpeg_q75.npz", **arrays)


@pytest.fixture
def cifar_like(tmp_path):
    write_cifar_like(tmp_path)
    return str(tmp_path)


def synthetic_images(n: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    return (images.float() / 255 - mean) / std


def test_splitmix64_matches_the_reference_bit_for_bit():
    from ecqx.training.data import splitmix64

    values = [0, 1, 2, 3, 12345, 2**31 - 1, 2**32, 2**62 - 1, 2**63 - 1, -1, -(2**63), -987654321]
    values += torch.randint(0, 2**62, (200,), generator=torch.Generator().manual_seed(5)).tolist()
    got = splitmix64(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [python_splitmix64(v) for v in values]
    # the published first output of splitmix64 seeded with 0 (state advanced once by the golden gamma)
    assert got[0] & ((1 << 64) - 1) == 0xE220A8397B1DCDAF


def test_crop_flip_takes_real_crops_of_the_zero_padded_image_and_real_flips():
    from ecqx.training.data import SeededCropFlip

    augment = SeededCropFlip(padding=4)
    images = synthetic_images(64)  # no zero pixels, so padding shows up as exact zeros
    seeds = torch.arange(1000, 1064)
    out = augment(images, seeds)
    assert out.shape == images.shape and out.dtype == torch.uint8
    dy, dx, flip = augment.params(seeds)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(64):
        crop = padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop), i
    # the offsets are bit fields of splitmix64(seed), computed here by hand for the first samples
    for i in range(8):
        h = python_splitmix64(1000 + i) & ((1 << 64) - 1)
        expected = (((h >> 1) & 0x7FFFFFFF) % 9, ((h >> 32) & 0x7FFFFFFF) % 9, bool(h & 1))
        assert (int(dy[i]), int(dx[i]), bool(flip[i])) == expected
    # hand-made crops at known offsets: the corners and the centre, with and without the flip
    candidates = torch.arange(10_000)
    all_dy, all_dx, all_flip = augment.params(candidates)
    image = images[:1]
    for want_dy, want_dx, want_flip in ((0, 0, False), (8, 8, True), (4, 4, False), (0, 8, True)):
        found = (all_dy == want_dy) & (all_dx == want_dx) & (all_flip == want_flip)
        seed = candidates[found][:1]
        got = augment(image, seed)[0]
        # the 32x32 window at (dy, dx) of the 40x40 zero-padded image, written out by hand: image pixel
        # (r, c) lands at (r + 4 - dy, c + 4 - dx) where that is inside the window, the rest is padding
        expected = torch.zeros(3, 32, 32, dtype=torch.uint8)
        top, left = 4 - want_dy, 4 - want_dx
        for r in range(32):
            for c in range(32):
                if 0 <= r + top < 32 and 0 <= c + left < 32:
                    expected[:, r + top, c + left] = image[0, :, r, c]
        if want_flip:
            expected = expected.flip(-1)
        assert torch.equal(got, expected), (want_dy, want_dx, want_flip)
        assert int((got == 0).all(0).sum()) == 32 * 32 - (32 - abs(top)) * (32 - abs(left))


def test_all_81_offsets_and_both_flips_occur_uniformly_even_for_consecutive_seeds():
    from ecqx.training.data import SeededCropFlip

    n = 162 * 400
    for seeds in (torch.arange(n), torch.randint(0, 2**62, (n,), generator=torch.Generator().manual_seed(1))):
        dy, dx, flip = SeededCropFlip(padding=4).params(seeds)
        cells = torch.bincount((dy * 9 + dx) * 2 + flip.long(), minlength=162)
        assert cells.numel() == 162 and int(cells.min()) > 0  # every (offset, flip) combination occurs
        # each cell is Binomial(n, 1/162): mean 400, sd ~20; allow 5 sd
        assert int((cells - 400).abs().max()) < 100, cells
        assert abs(flip.float().mean().item() - 0.5) < 0.01


def test_crop_flip_is_a_pure_function_of_images_and_seeds():
    from ecqx.training.data import SeededCropFlip

    augment, images, seeds = SeededCropFlip(), synthetic_images(32), torch.arange(32) * 7919
    torch.manual_seed(0)
    first = augment(images, seeds)
    torch.manual_seed(1)  # the global random state plays no part
    assert torch.equal(first, augment(images, seeds))
    assert torch.equal(first[5:9], augment(images[5:9], seeds[5:9]))  # nor do the other samples of the batch
    other = augment(images, seeds + 1)
    assert sum(not torch.equal(a, b) for a, b in zip(first, other, strict=True)) > 24
    with pytest.raises(ValueError, match=r"expected images \(N, C, H, W\) and seeds \(N,\)"):
        augment(images, seeds[:3])


def test_cifar_training_batches_are_a_function_of_seed_epoch_and_index(cifar_like):
    module = CIFAR10JPEGDataModule(cifar_like, val_size=16, batch_size=16)
    loader, train = module.train_dataloader(), module.datasets["train"]

    def epoch(number, global_seed):
        torch.manual_seed(global_seed)
        loader.sampler.set_epoch(number)
        order = [int(i) for i in loader.sampler]
        batches = list(loader)
        x = torch.cat([b[0] for b in batches])
        return {index: x[row] for row, index in enumerate(order)}, batches

    first, batches = epoch(3, global_seed=1)
    again, _ = epoch(3, global_seed=2)
    assert first.keys() == again.keys() == set(range(len(train)))
    assert all(torch.equal(first[i], again[i]) for i in first)
    later, _ = epoch(4, global_seed=1)
    assert sum(not torch.equal(first[i], later[i]) for i in first) > 0.8 * len(first)
    # the batches are the (x, y) pairs the model sees: float inputs, int64 labels
    x, y = batches[0]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # and each input is a normalised crop/flip of the stored uint8 image, with the sampler's seed
    loader.sampler.set_epoch(3)
    index = next(iter(loader.sampler))
    crop = module.train_augmentation()(train.images[[int(index)]], torch.tensor([index.seed]))
    assert torch.allclose(first[int(index)], normalise(crop[0]), atol=1e-6)
    assert torch.equal(train[index][0], first[int(index)])  # a single fetch gives the same sample


def test_batches_are_fetched_with_one_indexing_op_and_work_with_a_plain_dataloader(cifar_like):
    from torch.utils.data import DataLoader

    from ecqx.training.data import ImageBatch, SeededIndex

    module = CIFAR10JPEGDataModule(cifar_like, val_size=16, batch_size=8)
    module.setup()
    test = module.datasets["test"]
    batch = test.__getitems__([3, 1, 4, 1, 5])
    assert isinstance(batch, ImageBatch) and len(batch) == 5 and batch.seeds is None
    assert torch.equal(batch.images, test.images[[3, 1, 4, 1, 5]])
    x, y = batch.finish()
    assert torch.allclose(x, normalise(test.images[[3, 1, 4, 1, 5]]), atol=1e-6)
    # torch's default collate (a user's own DataLoader) still gets the same batches, sample by sample
    plain = next(iter(DataLoader(test, batch_size=8)))
    ours = next(iter(module.test_dataloader()))
    assert torch.equal(plain[0], ours[0]) and torch.equal(plain[1], ours[1])
    train = module.datasets["train"]
    seeded = train.__getitems__([SeededIndex(2, 11), SeededIndex(0, 12)])
    assert seeded.seeds.tolist() == [11, 12]
    with pytest.raises(ValueError, match="mixes SeededIndex and plain int"):
        train.__getitems__([SeededIndex(2, 11), 0])
    # huge seeds are taken modulo 2**64 instead of overflowing
    assert train.__getitems__([SeededIndex(0, 2**64 + 5)]).seeds.tolist() == [5]


def test_evaluation_batches_are_normalised_and_pass_the_device_hook_unchanged(cifar_like):
    module = CIFAR10JPEGDataModule(cifar_like, val_size=16, batch_size=8)
    for loader, dataset in ((module.val_dataloader(), "val"), (module.test_dataloader(), "test")):
        x, y = next(iter(loader))
        images = module.datasets[dataset].images[:8]
        assert torch.allclose(x, normalise(images), atol=1e-6)
        assert module.on_after_batch_transfer([x, y], 0)[0] is x


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _fit_recording(
    data, tmp_path, seen, callbacks=(), ckpt_path=None, max_epochs=2, global_seed=0, precision="32-true"
):
    import pytorch_lightning as pl

    from ecqx.training.module import ClassificationModule

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            x, y = batch  # training_step's (x, y): float inputs, int64 labels
            assert x.is_floating_point() and y.dtype == torch.int64
            seen.append((trainer.current_epoch, batch_idx, x.clone(), y.clone()))

    torch.manual_seed(0)
    model = ClassificationModule(_Tiny(), num_classes=10)
    torch.manual_seed(global_seed)
    trainer = pl.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[Record(), *callbacks],
        num_sanity_val_steps=0, limit_val_batches=1, precision=precision,
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_fit_augments_on_the_device_hook_with_the_same_result_as_the_host_path(
    cifar_like, tmp_path, num_workers
):
    from ecqx.training.data import RawBatch, raw_batch

    data = CIFAR10JPEGDataModule(cifar_like, val_size=16, batch_size=16, num_workers=num_workers)
    seen = []
    trainer = _fit_recording(data, tmp_path, seen, max_epochs=2)
    assert trainer.train_dataloader.collate_fn is raw_batch  # the loader of the fit yields raw uint8 batches
    raw = next(iter(trainer.train_dataloader))
    assert isinstance(raw, RawBatch) and raw.images.dtype == torch.uint8 and raw.seeds.dtype == torch.int64
    # the host path (a loader made outside the fit) yields exactly the batches the model saw
    host = CIFAR10JPEGDataModule(cifar_like, val_size=16, batch_size=16)
    loader = host.train_dataloader()
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        expected = list(loader)
        got = [(x, y) for e, _, x, y in seen if e == epoch]
        assert len(got) == len(expected) == 5  # 80 training samples / 16
        assert all(x.dtype == torch.float32 and x.shape == (16, 3, 32, 32) for x, _ in got)
        for (x, y), (ex, ey) in zip(got, expected, strict=True):
            assert torch.equal(x, ex) and torch.equal(y, ey)


def test_mid_epoch_resume_sees_exactly_the_same_augmented_batches(cifar_like, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    def data():
        return CIFAR10JPEGDataModule(cifar_like, val_size=16, batch_size=16, seed=2)

    full = []
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=7, save_top_k=-1, filename="{step}"
    )
    _fit_recording(data(), tmp_path, full, callbacks=[checkpoint], max_epochs=2)
    assert len(full) == 10
    resumed = []
    step7 = tmp_path / "ckpt" / "step=7.ckpt"
    # a fresh process: another global random state
    _fit_recording(data(), tmp_path, resumed, ckpt_path=step7, max_epochs=2, global_seed=1234)
    # step 7 = epoch 1, batch 1 done: the resumed run continues with epoch 1's batches 2..4
    assert [(e, b) for e, b, _, _ in resumed] == [(1, 2), (1, 3), (1, 4)]
    for (_, _, x, y), (_, _, fx, fy) in zip(resumed, full[7:], strict=True):
        assert torch.equal(x, fx) and torch.equal(y, fy)
    # and the augmentation is really random: epoch 1 differs from epoch 0 for the same samples
    assert not torch.equal(full[0][2], full[5][2])


def test_digits_training_batches_are_scaled_on_the_device_too(tmp_path):
    from ecqx.training.data import RawBatch

    data = DigitsDataModule(batch_size=64)
    data.setup()
    raw = data.datasets["train"].__getitems__(list(range(64))).raw()
    assert isinstance(raw, RawBatch) and raw.seeds is None  # no random augmentation: no seeds
    x, y = data.on_after_batch_transfer(raw, 0)
    host_x, host_y = data.datasets["train"].__getitems__(list(range(64))).finish()
    assert torch.equal(x, host_x) and torch.equal(y, host_y) and float(x.max()) <= 1.0


def test_device_finished_inputs_follow_the_trainers_true_precision(cifar_like, tmp_path):
    data = CIFAR10JPEGDataModule(cifar_like, val_size=16, batch_size=16)
    seen = []
    _fit_recording(data, tmp_path, seen, max_epochs=1, precision="64-true")
    assert seen and all(x.dtype == torch.float64 for _, _, x, _ in seen)
