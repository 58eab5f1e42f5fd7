"""Helpers shared by clients and server: model states, (de)serialisation, accuracy, torch threads, quiet
Lightning trainers and the clients' seeds."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import FederatedConfig


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu").clone() for name, t in module.state_dict().items()}


def _as_held(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.float32 if v.is_floating_point() else torch.int64) for k, v in state.items()}


def _cloned(state: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    return None if state is None else {k: v.clone() for k, v in state.items()}


def _to_module_dtypes(state: Mapping[str, torch.Tensor], like: Mapping[str, torch.Tensor]):
    out = {}
    for name, value in state.items():
        dtype = like[name].dtype
        out[name] = value.to(dtype) if value.is_floating_point() == dtype.is_floating_point else (
            value.round().to(dtype))
    return out


def _accuracy(module: torch.nn.Module, loader: DataLoader) -> float:
    module.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((module(x).argmax(1) == y).sum())
            total += int(y.numel())
    return correct / max(total, 1)


def _to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _from_bytes(data: bytes) -> Any:
    # written by _to_bytes in this run's own client processes (client states, update records)
    return torch.load(io.BytesIO(data), weights_only=False)


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _quiet_trainer() -> Iterator[None]:
    """Lightning's info lines of every Trainer (GPU/TPU available, tips, "fit stopped") would repeat for
    every client and round; so would its warnings (a ``catch_warnings`` block resets Python's once-only
    registry) about the validation loop the clients skip on purpose and its own use of a deprecated torch
    API."""
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")  # where rank_zero_info logs
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*`validation_step` but have no `val_dataloader`")
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            yield
    finally:
        logger.setLevel(level)


def _client_seed(config: FederatedConfig, rnd: int, cid: int) -> int:
    return int(np.random.SeedSequence([config.seed, rnd, cid]).generate_state(1)[0])
