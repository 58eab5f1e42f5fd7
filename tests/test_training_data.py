"""Data modules on the real files of the shared data folder (small limits) and on hand-written idx files."""

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
