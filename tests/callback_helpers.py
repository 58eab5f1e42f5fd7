"""Tiny deterministic models, data and trainers shared by the callback tests (CPU, a few batches)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ecqx.training.data import ResumableDataLoader, SeededEpochSampler
from ecqx.training.models import mlp
from ecqx.training.module import ClassificationModule

IN_FEATURES, NUM_CLASSES = 16, 4


def synthetic_loader(n: int = 128, batch_size: int = 32, seed: int = 0) -> DataLoader:
    """A linearly separable 4-class problem; fixed order (no shuffling), so runs are reproducible."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_FEATURES, generator=generator)
    w = torch.randn(IN_FEATURES, NUM_CLASSES, generator=torch.Generator().manual_seed(1234))
    return DataLoader(TensorDataset(x, (x @ w).argmax(1)), batch_size=batch_size)


class NoisyInputs(Dataset):
    """Adds Gaussian noise to every input, a stand-in for random augmentation.

    Drawn from the sample's own seed for a :class:`~ecqx.training.data.SeededIndex` (as ``ImageDataset``
    does), else from the global RNG."""

    def __init__(self, dataset: Dataset, scale: float = 0.1):
        self.dataset, self.scale = dataset, scale

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        seed = getattr(index, "seed", None)
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return x + self.scale * torch.randn(x.shape, generator=generator), y


def resumable_loader(
    n: int = 128, batch_size: int = 32, seed: int = 0, seed_samples: bool = True
) -> ResumableDataLoader:
    """:func:`synthetic_loader`'s problem with random input noise, shuffled per epoch, resumable mid-epoch.

    ``seed_samples=False``: the noise comes from the global RNG (like augmentation in a user's pipeline)."""
    dataset = NoisyInputs(synthetic_loader(n, batch_size, seed).dataset)
    sampler = SeededEpochSampler(n, seed=seed + 1, seed_samples=seed_samples)
    return ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler)


def tiny_module(seed: int = 0, hidden=(32, 32), **kwargs) -> ClassificationModule:
    torch.manual_seed(seed)
    return ClassificationModule(
        mlp(IN_FEATURES, list(hidden), NUM_CLASSES), num_classes=NUM_CLASSES, **kwargs
    )


def tiny_trainer(callbacks, max_epochs: int = 3, **kwargs) -> pl.Trainer:
    options = dict(
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        deterministic=True,
    )
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}
