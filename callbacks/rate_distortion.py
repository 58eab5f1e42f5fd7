"""``RateDistortion``: accuracy vs bytes, one CSV row per epoch, and a PNG plot.

Each row holds the epoch, the monitored accuracy (``monitor``, default ``val_acc``), the ``.nnc`` size when an
:class:`~ecqx.callbacks.NNCExport` exported in that epoch (list ``NNCExport`` *before* ``RateDistortion`` in
``callbacks`` so its export of the epoch is seen), the entropy estimate of the quantized tensors in bytes, the
sparsity and the bits per weight of the quantization callback, and Λ. Rows of several runs (e.g. a Λ sweep)
are
overlaid with :func:`plot_rate_distortion`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_only

from ecqx.callbacks._base import find_quantization_callback

COLUMNS = ("epoch", "lam", "accuracy", "nnc_bytes", "estimated_bytes", "sparsity", "bits_per_weight")


class RateDistortion(Callback):
    """Write ``<out_dir>/<name>.csv`` every epoch and ``<out_dir>/<name>.png`` at fit end.

    Args:
        out_dir: output folder (created if missing).
        monitor: logged metric used as accuracy (``val_acc``: the quantized model's validation accuracy).
        name: file stem of the CSV and PNG.
    """

    def __init__(self, out_dir: str | Path, monitor: str = "val_acc", name: str = "rate_distortion") -> None:
        if not isinstance(out_dir, (str, Path)) or not str(out_dir):
            raise ValueError(f"`out_dir` must be a non-empty folder path, got {out_dir!r}")
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be the name of a logged metric, got {monitor!r}")
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"`name` must be a file stem without '/', got {name!r}")
        self.out_dir = Path(out_dir)
        self.monitor = monitor
        self.name = name
        self.rows: list[dict[str, float]] = []

    @property
    def csv_path(self) -> Path:
        return self.out_dir / f"{self.name}.csv"

    @property
    def png_path(self) -> Path:
        return self.out_dir / f"{self.name}.png"

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows.append(self._row(trainer))
        self._write_csv()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.rows:
            self._write_png()

    def _row(self, trainer: pl.Trainer) -> dict[str, float]:
        quantizer = find_quantization_callback(trainer)
        summary = quantizer.summary() if quantizer is not None and quantizer.is_active else {}
        accuracy = trainer.callback_metrics.get(self.monitor)
        return {
            "epoch": trainer.current_epoch,
            "lam": quantizer.lam if quantizer is not None else math.nan,
            "accuracy": float(accuracy) if accuracy is not None else math.nan,
            "nnc_bytes": _exported_bytes(trainer),
            "estimated_bytes": summary.get("estimated_bytes", math.nan),
            "sparsity": summary.get("sparsity", math.nan),
            "bits_per_weight": summary.get("bits_per_weight", math.nan),
        }

    @rank_zero_only
    def _write_csv(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with self.csv_path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)

    @rank_zero_only
    def _write_png(self) -> None:
        plot_rate_distortion([self.csv_path], self.png_path)


def _exported_bytes(trainer: pl.Trainer) -> float:
    from ecqx.callbacks.nnc_export import NNCExport

    for callback in trainer.callbacks:
        if isinstance(callback, NNCExport) and callback.last_result is not None:
            if callback.last_result.epoch == trainer.current_epoch:
                return float(callback.last_result.nnc_bytes)
    return math.nan


def read_rows(path: str | Path) -> list[dict[str, float]]:
    """The rows of a RateDistortion CSV as floats."""
    with Path(path).open(newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def plot_rate_distortion(
    csv_paths: Sequence[str | Path], out_png: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """Plot accuracy vs size (``.nnc`` bytes where exported, else the entropy estimate) for several runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if labels is not None and len(labels) != len(csv_paths):
        raise ValueError(f"`labels` needs one entry per CSV file ({len(csv_paths)}), got {len(labels)}")
    figure, axes = plt.subplots(figsize=(6, 4))
    for index, path in enumerate(csv_paths):
        rows = read_rows(path)
        sizes = [r["nnc_bytes"] if not math.isnan(r["nnc_bytes"]) else r["estimated_bytes"] for r in rows]
        label = (
            labels[index]
            if labels is not None
            else f"{Path(path).stem} (Λ={rows[0]['lam']:g})"
            if rows
            else ""
        )
        axes.plot([s / 1024 for s in sizes], [r["accuracy"] for r in rows], marker="o", label=label)
    axes.set_xlabel("size [KiB] (.nnc where exported, else entropy estimate)")
    axes.set_ylabel("accuracy")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=120)
    plt.close(figure)
    return out_png
