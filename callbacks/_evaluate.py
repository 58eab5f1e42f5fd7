"""Evaluate a (decoded) copy of a LightningModule with its own ``validation_step`` / ``test_step``.

The copy is detached from the trainer (:func:`ecqx.callbacks.nnc_export.decode_into_copy` leaves its trainer
reference ``None``), so ``self.log`` inside the step cannot reach Lightning's result collection.
:func:`evaluate_with_steps` therefore replaces ``log`` and ``log_dict`` on the copy with a collector: plain
values are averaged weighted by batch size, torchmetrics ``Metric`` objects are reset before the loop and
computed once after it, exactly as Lightning does at epoch end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import move_data_to_device
from pytorch_lightning.utilities.data import extract_batch_size
from torchmetrics import Metric

STEP_NAMES = {"val": "validation_step", "test": "test_step"}


class _LogCollector:
    """Stands in for ``LightningModule.log``/``log_dict`` and aggregates what a step logs."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._weights: dict[str, float] = {}
        self._metrics: dict[str, Metric] = {}
        self.current_batch_size = 1

    def log(self, name: str, value: Any, *args: Any, batch_size: int | None = None, **kwargs: Any) -> None:
        if isinstance(value, Metric):
            self._metrics[name] = value
            return
        weight = float(batch_size if batch_size is not None else self.current_batch_size)
        number = float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)
        self._sums[name] = self._sums.get(name, 0.0) + number * weight
        self._weights[name] = self._weights.get(name, 0.0) + weight

    def log_dict(self, dictionary: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        for name, value in dictionary.items():
            self.log(name, value, **{k: v for k, v in kwargs.items() if k == "batch_size"})

    def results(self) -> dict[str, float]:
        out = {name: total / self._weights[name] for name, total in self._sums.items()}
        for name, metric in self._metrics.items():
            out[name] = float(metric.compute())
        return out


def evaluate_with_steps(module: pl.LightningModule, loader: Iterable, stage: str = "val") -> dict[str, float]:
    """Run ``module``'s own validation/test step over ``loader`` and return what it logged, aggregated.

    ``module`` must be a detached copy: its ``log``/``log_dict`` are replaced for the duration of the call.
    """
    if stage not in STEP_NAMES:
        raise ValueError(f"`stage` must be one of {sorted(STEP_NAMES)}, got {stage!r}")
    step = getattr(module, STEP_NAMES[stage])
    collector = _LogCollector()
    for metric in module.modules():
        if isinstance(metric, Metric):
            metric.reset()
            # only the global-zero rank evaluates: a cross-rank sync in compute() would wait forever
            metric.sync_on_compute = False
            metric._to_sync = False  # torchmetrics reads this private copy of the flag in compute()
    module.log, module.log_dict = collector.log, collector.log_dict
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for batch_idx, batch in enumerate(loader):
                collector.current_batch_size = _batch_size(batch)
                step(move_data_to_device(batch, device), batch_idx)
    finally:
        module.train(was_training)
        del module.log, module.log_dict
    return collector.results()


def _batch_size(batch: Any) -> int:
    try:
        return int(extract_batch_size(batch))
    except Exception:  # a batch without any tensor: weight it like the others
        return 1


def find_loader(trainer: pl.Trainer, stage: str) -> Iterable | None:
    """The loader to evaluate on: the datamodule's (whole split, on rank zero), else the trainer's own."""
    method = f"{stage}_dataloader" if stage == "test" else "val_dataloader"
    datamodule = trainer.datamodule
    if datamodule is not None and _is_overridden(datamodule, method):
        loader = getattr(datamodule, method)()
    else:
        loader = trainer.test_dataloaders if stage == "test" else trainer.val_dataloaders
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    return loader


def _is_overridden(datamodule: pl.LightningDataModule, method: str) -> bool:
    return getattr(type(datamodule), method) is not getattr(pl.LightningDataModule, method)
