"""``NNCExport``: write the trained model as an NNC bitstream and prove that the file is the trained model.

At the end of fit (and optionally every ``every_n_epochs`` epochs or at every checkpoint) the callback

1. takes the quantized-tensor descriptions from the quantization callback of the same trainer (``ECQ``,
   ``ECQx``
   or ``EC2T``; without one, every tensor is coded with the fine non-weight step),
2. encodes ``pl_module.state_dict()`` with :func:`ecqx.coding.encode_state_dict` and writes ``path``,
3. decodes the bytes into a fresh ``copy.deepcopy`` of the LightningModule (``load_state_dict(strict=True)``),
4. checks that every decoded quantized weight equals the trained one bit for bit (``RuntimeError`` otherwise),
5. evaluates the decoded copy with the module's own ``validation_step`` (or ``test_step``) on the datamodule's
   loader and logs ``nnc_bytes``, ``nnc_ratio`` (file size / :func:`ecqx.coding.float32_bytes`) and the
   decoded metrics prefixed with ``nnc_`` (e.g. ``nnc_val_acc``).

Only the global-zero rank encodes, writes and evaluates; the result is broadcast so every rank logs the same
numbers (the broadcast is the barrier). The native coder is built/loaded in ``setup`` so that a missing
compiler
fails before the first training step, not after the last one.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.model_helpers import is_overridden

from ecqx import coding
from ecqx.callbacks._base import find_quantization_callback
from ecqx.callbacks._evaluate import STEP_NAMES, evaluate_with_steps, find_loader
from ecqx.coding.files import write_bytes_atomic

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What one export produced: file, sizes and the decoded model's metrics."""

    path: str
    epoch: int
    nnc_bytes: int
    float32_bytes: int
    num_quantized: int
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """File size as a fraction of the float32 size (:func:`ecqx.coding.float32_bytes`)."""
        return self.nnc_bytes / self.float32_bytes

    def log_values(self) -> dict[str, float]:
        values = {"nnc_bytes": float(self.nnc_bytes), "nnc_ratio": self.ratio}
        values.update({f"nnc_{name}": value for name, value in self.metrics.items()})
        return values


class NNCExport(Callback):
    """Encode the model to an ``.nnc`` file, decode it back, verify it and evaluate the decoded model.

    Args:
        path: output file. Periodic exports (``every_n_epochs``, ``on_checkpoint``) write next to it with the
            epoch in the name (``model-epoch=3.nnc``); the final export at fit end writes ``path`` itself.
        every_n_epochs: also export after every n-th training epoch (``None``: only at fit end).
        evaluate: evaluate the decoded copy with the module's own step (needs a val/test loader).
        stage: ``"val"`` (``validation_step`` on the validation loader) or ``"test"``.
        on_checkpoint: also export (without evaluation) whenever Lightning saves a checkpoint.
        nonweight_qp: step of the non-quantized float tensors (BN, biases): ``"auto"`` (a step of 2^-B of each
            tensor's largest magnitude) or one int qp for all, see :func:`ecqx.coding.encode_state_dict`.
        nonweight_bits: the relative precision B of ``nonweight_qp="auto"``.

    Example::

        trainer = pl.Trainer(callbacks=[ECQx(bits=4, lam=0.05, start_epoch=1), NNCExport("model.nnc")])
    """

    def __init__(
        self,
        path: str | Path,
        every_n_epochs: int | None = None,
        evaluate: bool = True,
        stage: str = "val",
        on_checkpoint: bool = False,
        nonweight_qp: int | str = "auto",
        nonweight_bits: int = 10,
    ) -> None:
        if not isinstance(path, (str, Path)) or not str(path):
            raise ValueError(f"`path` must be a non-empty file path, got {path!r}")
        if every_n_epochs is not None and (
            isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1
        ):
            raise ValueError(f"`every_n_epochs` must be None or an integer >= 1, got {every_n_epochs!r}")
        if stage not in STEP_NAMES:
            raise ValueError(f"`stage` must be one of {sorted(STEP_NAMES)}, got {stage!r}")
        if nonweight_qp != "auto" and (isinstance(nonweight_qp, bool) or not isinstance(nonweight_qp, int)):
            raise ValueError(f"`nonweight_qp` must be 'auto' or an integer qp, got {nonweight_qp!r}")
        if type(nonweight_bits) is not int or not 1 <= nonweight_bits <= 24:
            raise ValueError(f"`nonweight_bits` must be an integer in 1..24, got {nonweight_bits!r}")
        self.path = Path(path)
        self.every_n_epochs = every_n_epochs
        self.evaluate = bool(evaluate)
        self.stage = stage
        self.on_checkpoint = bool(on_checkpoint)
        self.nonweight_qp = nonweight_qp
        self.nonweight_bits = nonweight_bits
        self.results: list[ExportResult] = []

    @property
    def last_result(self) -> ExportResult | None:
        """The most recent export (``None`` before the first one)."""
        return self.results[-1] if self.results else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        step_name = STEP_NAMES[self.stage]
        if self.evaluate and not is_overridden(step_name, pl_module):
            raise ValueError(
                f"NNCExport(evaluate=True, stage={self.stage!r}) evaluates the decoded model with "
                f"`{type(pl_module).__name__}.{step_name}`, which is not implemented. "
                "HINT: implement it, choose the other `stage`, or pass `evaluate=False`."
            )
        if self.evaluate and not has_loader(trainer, pl_module, self.stage):
            raise ValueError(
                f"NNCExport(evaluate=True, stage={self.stage!r}) evaluates the decoded model on the "
                f"{self.stage} loader, but neither the datamodule, nor `{type(pl_module).__name__}`, nor "
                f"`trainer.fit(...)` provides one. HINT: provide a {self.stage} loader, or `evaluate=False`."
            )
        if trainer.is_global_zero:
            check_output_path(self.path)
        coding.load_native()  # a missing compiler fails here, before training, not after it

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs is None or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        result = self._export_everywhere(trainer, pl_module, self._periodic_path(trainer), self.evaluate)
        pl_module.log_dict(result.log_values(), on_epoch=True)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.on_checkpoint:
            self._export_everywhere(trainer, pl_module, self._periodic_path(trainer), evaluate=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        result = self._export_everywhere(trainer, pl_module, self.path, self.evaluate)
        for logger in trainer.loggers:
            logger.log_metrics(result.log_values(), step=trainer.global_step)
        # self.log is not allowed in on_train_end; make the numbers visible to the CLI summary as well
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in result.log_values().items()})
        rank_zero_info(_summary_line(result))
        if result.num_quantized == 0:
            reason = no_quantization_reason(trainer)
            rank_zero_warn(f"NNCExport: {result.path} holds no quantized tensor: {reason}")

    def _periodic_path(self, trainer: pl.Trainer) -> Path:
        return self.path.with_name(f"{self.path.stem}-epoch={trainer.current_epoch}{self.path.suffix}")

    def _export_everywhere(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, path: Path, evaluate: bool
    ) -> ExportResult:
        """Export on global zero, share the result with every rank (which also makes the others wait)."""
        payload = None
        if trainer.is_global_zero:
            payload = asdict(self._export(trainer, pl_module, path, evaluate))
        payload = trainer.strategy.broadcast(payload, src=0)
        result = ExportResult(**payload)
        self.results.append(result)
        return result

    def _export(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, path: Path, evaluate: bool
    ) -> ExportResult:
        quantized = _quantized_descriptions(trainer, pl_module)
        state_dict = pl_module.state_dict()
        data = coding.encode_state_dict(state_dict, quantized, nonweight_qp=self.nonweight_qp,
                                        nonweight_bits=self.nonweight_bits)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)
        decoded = decode_into_copy(pl_module, data)
        check_decoded_equal(decoded, pl_module, quantized)
        metrics = self._evaluate(trainer, decoded) if evaluate else {}
        return ExportResult(
            path=str(path),
            epoch=trainer.current_epoch,
            nnc_bytes=len(data),
            float32_bytes=coding.float32_bytes(state_dict),
            num_quantized=len(quantized),
            metrics=metrics,
        )

    def _evaluate(self, trainer: pl.Trainer, decoded: pl.LightningModule) -> dict[str, float]:
        loader = find_loader(trainer, self.stage)
        if loader is None:
            raise RuntimeError(
                f"NNCExport(evaluate=True, stage={self.stage!r}) found no {self.stage} dataloader on the "
                "datamodule or the trainer. HINT: pass one to `trainer.fit`, or `evaluate=False`."
            )
        return evaluate_with_steps(decoded, loader, self.stage)


def check_output_path(path: Path) -> None:
    """Fails before training when ``path`` cannot be written at the end (a folder, or an unwritable place)."""
    if path.is_dir():
        raise ValueError(f"NNCExport: `path` {str(path)!r} is a directory; pass a file path such as "
                         f"{str(path / 'model.nnc')!r}")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"NNCExport: cannot create the folder of `path` {str(path)!r}: {error}") from error
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"NNCExport: the folder {str(folder)!r} of `path` is not writable")


def has_loader(trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> bool:
    """Whether a ``stage`` loader will exist at the end of fit (datamodule, module or ``fit`` argument)."""
    method = "test_dataloader" if stage == "test" else "val_dataloader"
    datamodule = trainer.datamodule
    if datamodule is not None and is_overridden(method, datamodule, parent=pl.LightningDataModule):
        return True
    if is_overridden(method, pl_module, parent=pl.LightningModule):
        return True
    if stage == "test":
        return False
    # loaders passed as `trainer.fit(..., val_dataloaders=...)` are only recorded in the fit loop
    source = getattr(trainer.fit_loop.epoch_loop.val_loop, "_data_source", None)
    return source is None or source.is_defined()


def _quantized_descriptions(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    quantizer = find_quantization_callback(trainer)
    return quantizer.quantized_tensors() if quantizer is not None and quantizer.is_active else {}


def no_quantization_reason(trainer: pl.Trainer) -> str:
    """Why the trainer's model holds no quantized tensor after fit, in words (warnings, the run report)."""
    quantizer = find_quantization_callback(trainer)
    if quantizer is None:
        return ("the trainer has no quantization callback (ECQ, ECQx or EC2T); every tensor was coded with "
                "the fine non-weight step")
    name, start, epochs = type(quantizer).__name__, quantizer.start_epoch, trainer.current_epoch
    if not quantizer.is_active:
        return (f"{name}(start_epoch={start}) never started: the run ended after {epochs} epoch(s) of "
                f"full-precision warm-up (quantization starts at epoch {start}, counting from 0). HINT: "
                f"lower start_epoch below {max(epochs, 1)} (--start-epoch) or train more epochs "
                "(--trainer.max_epochs).")
    return f"{name} is active but holds no quantized tensor"


def decode_into_copy(pl_module: pl.LightningModule, data: bytes) -> pl.LightningModule:
    """A detached deep copy of ``pl_module`` holding the weights decoded from ``data`` (strict load)."""
    decoded_state = coding.decode_state_dict(data)
    # The module references its trainer; copying that would copy the data loaders and their live iterators
    # (slow, and impossible for generator-based ones). The memo entry makes the copy's reference None.
    trainer = pl_module._trainer
    fresh = copy.deepcopy(pl_module, memo={} if trainer is None else {id(trainer): None})
    fresh.load_state_dict(decoded_state, strict=True)
    return fresh


def check_decoded_equal(
    decoded: pl.LightningModule, trained: pl.LightningModule, quantized: dict[str, Any]
) -> None:
    """Raise ``RuntimeError`` unless every quantized tensor decoded to exactly the trained value."""
    decoded_state, trained_state = decoded.state_dict(), trained.state_dict()
    for name in quantized:
        got, want = decoded_state[name].cpu(), trained_state[name].detach().cpu()
        if not torch.equal(got, want):
            differing = int((got != want).sum())
            raise RuntimeError(
                f"NNC export check failed: decoded '{name}' differs from the trained weights in"
                f" {differing} of "
                f"{want.numel()} values (max |diff| {float((got - want).abs().max()):.3g}). The bitstream"
                " does "
                "not reproduce the trained model."
            )


def _summary_line(result: ExportResult) -> str:
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items()))
    return (
        f"NNCExport: wrote {result.path}: {result.nnc_bytes} bytes = {100 * result.ratio:.2f}% of float32 "
        f"({result.float32_bytes} bytes), {result.num_quantized} quantized tensors decoded bit-exactly"
        + (f"; decoded model: {metrics}" if metrics else "")
    )
