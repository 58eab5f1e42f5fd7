"""A classification LightningModule around any ``nn.Module``: cross-entropy, top-1/top-5 accuracy."""

from __future__ import annotations

from collections.abc import Iterable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from ecqx.training.models import load_pretrained

__all__ = ["ClassificationModule"]


class ClassificationModule(pl.LightningModule):
    """Train, validate and test a classifier with cross-entropy.

    Logged metrics (epoch means): ``train_loss``, ``train_acc``; ``val_loss``, ``val_acc``, ``val_acc_top5``;
    ``test_loss``, ``test_acc``, ``test_acc_top5`` (the top-5 entries only when there are more than five
    classes). ``train_loss`` is also logged per step.

    The wrapped network is ``self.model``, so its parameter names appear in the module's state_dict with a
    ``model.`` prefix. :meth:`evaluate` scores any data loader without logging, e.g. on a copy of the module
    holding decoded weights.

    Args:
        model: the network; maps a batch of inputs to ``(batch, num_classes)`` logits.
        num_classes: number of classes (for the accuracy metrics).
        optimizer: called with the trainable parameters, returns the optimizer
            (in a recipe: ``class_path: torch.optim.SGD`` with ``init_args``). Default: Adam, lr 1e-3.
        lr_scheduler: optional; called with the optimizer, returns an LR scheduler, stepped once per epoch
            (``ReduceLROnPlateau`` monitors ``val_loss``).
        pretrained: optional checkpoint file whose weights are loaded into ``model`` (see
            :func:`ecqx.training.models.load_pretrained`; wrapper prefixes are handled).
        label_smoothing: cross-entropy label smoothing in [0, 1).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        pretrained: str | None = None,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"ClassificationModule: `model` must be a torch.nn.Module, got {type(model).__name__}."
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"ClassificationModule: `num_classes` must be an integer >= 2, got {num_classes!r}."
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"ClassificationModule: `label_smoothing` must be in [0, 1), got {label_smoothing!r}."
            )
        # LightningCLI supplies the parsed config (plain values) as hyperparameters and needs all of it to
        # rebuild the module from a checkpoint (`ecqx test --ckpt_path`). Built in Python, the network and the
        # factories are objects: the weights are in the state_dict anyway, and a lambda cannot be pickled.
        self.save_hyperparameters(
            ignore=None if _config_given_by_cli() else ["model", "optimizer", "lr_scheduler"]
        )
        self.model = model
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.label_smoothing = label_smoothing
        self.train_metrics = self._make_metrics("train")
        self.val_metrics = self._make_metrics("val")
        self.test_metrics = self._make_metrics("test")
        if pretrained:
            load_pretrained(self.model, pretrained)

    def _make_metrics(self, stage: str) -> MetricCollection:
        metrics = {"acc": MulticlassAccuracy(self.num_classes, top_k=1, average="micro")}
        if stage != "train" and self.num_classes > 5:
            metrics["acc_top5"] = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")
        return MetricCollection(metrics, prefix=f"{stage}_")

    def _metrics_of(self, stage: str) -> MetricCollection:
        return self.val_metrics if stage == "val" else self.test_metrics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def compute_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loss, logits)`` for an ``(inputs, targets)`` batch."""
        inputs, targets = batch
        logits = self(inputs)
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing), logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, logits = self.compute_loss(batch)
        self.train_metrics.update(logits, batch[1])
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluation_step("val", batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluation_step("test", batch)

    def _evaluation_step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        loss, logits = self.compute_loss(batch)
        self._metrics_of(stage).update(logits, batch[1])
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(self._metrics_of(stage), on_step=False, on_epoch=True, prog_bar=stage == "val")
        return loss

    @torch.no_grad()
    def evaluate(self, dataloader: Iterable, max_batches: int | None = None) -> dict[str, float]:
        """Loss and accuracy of the current weights over ``dataloader``, without logging.

        Runs in eval mode on the module's device (training mode is restored afterwards) with fresh metric
        objects, so it leaves the module's logged metrics untouched.

        Args:
            dataloader: yields ``(inputs, targets)`` batches.
            max_batches: stop after this many batches (all when ``None``).

        Returns:
            ``{"loss", "acc"}`` and, with more than five classes, ``"acc_top5"``; accuracies in [0, 1].
        """
        metrics = self._make_metrics("eval").to(self.device)
        was_training = self.training
        self.eval()
        total_loss, count = 0.0, 0
        try:
            for index, (inputs, targets) in enumerate(dataloader):
                if max_batches is not None and index >= max_batches:
                    break
                inputs, targets = inputs.to(self.device), targets.to(self.device)
                loss, logits = self.compute_loss((inputs, targets))
                metrics.update(logits, targets)
                total_loss += loss.item() * targets.shape[0]
                count += targets.shape[0]
        finally:
            self.train(was_training)
        if count == 0:
            raise ValueError("ClassificationModule.evaluate: the data loader yielded no samples.")
        scores = {name.removeprefix("eval_"): value.item() for name, value in metrics.compute().items()}
        return {"loss": total_loss / count, **scores}

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        config = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val_loss"
        return {"optimizer": optimizer, "lr_scheduler": config}


def _config_given_by_cli() -> bool:
    """Whether LightningCLI is instantiating the module (it then provides the config as hyperparameters)."""
    try:
        from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # private name moved in another Lightning release: keep the safe choice
        return False
    return _given_hyperparameters.get() is not None
