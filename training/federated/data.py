"""The clients' data: the non-IID Dirichlet split of the training set and each client's loader."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .config import FederatedConfig


def dirichlet_split(labels: torch.Tensor, clients: int, alpha: float, seed: int = 0,
                    min_size: int = 1, attempts: int = 100) -> list[torch.Tensor]:
    """Sample indices per client: each class is divided among the clients in Dirichlet(α) proportions.

    Redraws (up to ``attempts`` times) until every client has at least ``min_size`` samples."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    for _ in range(attempts):
        shards: list[list[int]] = [[] for _ in range(clients)]
        for cls in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == cls))
            cuts = (np.cumsum(rng.dirichlet(np.full(clients, alpha))) * len(members)).astype(int)[:-1]
            for shard, part in zip(shards, np.split(members, cuts), strict=True):
                shard.extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [torch.tensor(sorted(s), dtype=torch.int64) for s in shards]
    raise ValueError(f"no Dirichlet(alpha={alpha}) split of {len(y)} samples gives each of {clients} clients "
                     f"{min_size} samples; use fewer clients or a larger alpha")


def _labels_of(dataset: Dataset) -> torch.Tensor:
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor):
        return labels
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


def _training_split(datamodule: pl.LightningDataModule,
                    config: FederatedConfig) -> tuple[DataLoader, list[torch.Tensor]]:
    """The training loader of ``datamodule`` (set up here) and the clients' shards of its dataset."""
    datamodule.setup("fit")
    train_loader = datamodule.train_dataloader()
    shards = dirichlet_split(_labels_of(train_loader.dataset), config.clients, config.alpha, config.seed)
    return train_loader, shards


def _client_loader(train_loader: DataLoader, shard: torch.Tensor, cid: int,
                   config: FederatedConfig) -> DataLoader:
    """Client ``cid``'s loader: its shard, shuffled by a generator of its own (seeded per client)."""
    return DataLoader(Subset(train_loader.dataset, shard.tolist()), batch_size=train_loader.batch_size,
                      shuffle=True, collate_fn=train_loader.collate_fn,
                      generator=torch.Generator().manual_seed(config.seed + 1000 + cid))
