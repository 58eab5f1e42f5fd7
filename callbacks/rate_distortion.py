"""``RateDistortion``: accuracy vs bytes, one CSV row per epoch, and a PNG plot.

Each row holds the epoch, the monitored accuracy (``monitor``, default ``val_acc``), the entropy estimate of
the quantized tensors in bytes, the sparsity and the bits per weight of the quantization callback, Λ, and the
full-precision reference: ``fp_accuracy`` (the quantization callback's ``fp_<monitor>``, measured at the end
of the full-precision warm-up) and ``float32_bytes`` (:func:`ecqx.coding.float32_bytes`).

``nnc_bytes`` and ``nnc_accuracy`` are the real ``.nnc`` file size and the decoded model's accuracy of an
:class:`~ecqx.callbacks.NNCExport` export: of a periodic export in that epoch (list ``NNCExport`` *before*
``RateDistortion`` in ``callbacks`` so it is seen), and on the last row, at fit end, of the final export
(which writes after the last epoch's row). Rows of several runs (e.g. a Λ sweep) are overlaid with
:func:`plot_rate_distortion`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_only

from ecqx import coding
from ecqx.callbacks._base import find_quantization_callback
from ecqx.coding.files import atomic_write, write_bytes_atomic

COLUMNS = (
    "epoch", "lam", "accuracy", "nnc_bytes", "nnc_accuracy", "estimated_bytes", "sparsity", "bits_per_weight",
    "fp_accuracy", "float32_bytes",
)
KIB = 1024.0


class RateDistortion(Callback):
    """Write ``<out_dir>/<name>.csv`` every epoch and ``<out_dir>/<name>.png`` at fit end.

    At fit end the last row gets the size and decoded accuracy of ``NNCExport``'s final ``.nnc`` file, and
    the plot shows it next to the per-epoch entropy estimates and the full-precision reference.

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
        self.rows.append(self._row(trainer, pl_module))
        self._write_csv()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.rows:
            return
        # NNCExport writes the final file in on_train_end, after the last epoch's row: that file is the
        # model of the last row, so its real size and decoded accuracy belong there.
        final = _final_export(trainer)
        if final is not None:
            self.rows[-1].update(
                nnc_bytes=float(final.nnc_bytes), nnc_accuracy=final.metrics.get(self.monitor, math.nan)
            )
            self._write_csv()
        self._write_png(_run_title(trainer, self.name))

    def _row(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        quantizer = find_quantization_callback(trainer)
        summary = quantizer.summary() if quantizer is not None and quantizer.is_active else {}
        fp_metrics = quantizer.fp_metrics if quantizer is not None else {}
        accuracy = trainer.callback_metrics.get(self.monitor)
        export = _epoch_export(trainer)
        return {
            "epoch": trainer.current_epoch,
            "lam": quantizer.lam if quantizer is not None else math.nan,
            "accuracy": float(accuracy) if accuracy is not None else math.nan,
            "nnc_bytes": float(export.nnc_bytes) if export is not None else math.nan,
            "nnc_accuracy": export.metrics.get(self.monitor, math.nan) if export is not None else math.nan,
            "estimated_bytes": summary.get("estimated_bytes", math.nan),
            "sparsity": summary.get("sparsity", math.nan),
            "bits_per_weight": summary.get("bits_per_weight", math.nan),
            "fp_accuracy": fp_metrics.get(f"fp_{self.monitor}", math.nan),
            "float32_bytes": float(coding.float32_bytes(pl_module.state_dict())),
        }

    @rank_zero_only
    def _write_csv(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        write_bytes_atomic(self.csv_path, text.getvalue().encode("utf-8"))

    @rank_zero_only
    def _write_png(self, title: str) -> None:
        plot_rate_distortion([self.csv_path], self.png_path, labels=[""], title=title,
                             ylabel=f"{self.monitor} [%]")


def _exports(trainer: pl.Trainer) -> list:
    from ecqx.callbacks.nnc_export import NNCExport

    return [cb for cb in trainer.callbacks if isinstance(cb, NNCExport) and cb.last_result is not None]


def _epoch_export(trainer: pl.Trainer):
    """The result of an export made in this epoch (a periodic one), or ``None``."""
    for callback in _exports(trainer):
        if callback.last_result.epoch == trainer.current_epoch:
            return callback.last_result
    return None


def _final_export(trainer: pl.Trainer):
    """The result of the export written at fit end to ``NNCExport.path`` itself, or ``None``."""
    for callback in _exports(trainer):
        if callback.last_result.path == str(callback.path):
            return callback.last_result
    return None


def _run_title(trainer: pl.Trainer, fallback: str) -> str:
    """The logger's run name and version, and the quantization method, e.g. ``digits (version 3): ECQx``."""
    logger = trainer.logger
    name = getattr(logger, "name", None) if logger is not None else None
    title = fallback
    if name:
        version = getattr(logger, "version", None)
        title = f"{name} (version {version})" if isinstance(version, int) else f"{name}"
    quantizer = find_quantization_callback(trainer)
    if quantizer is None:
        return f"{title}: no quantization"
    bits = getattr(quantizer, "bits", None)
    grid = f" {bits} bit" if bits is not None else " ternary" if quantizer.method == "ec2t" else ""
    return f"{title}: {type(quantizer).__name__}{grid}, Λ = {quantizer.lam:g}"


def read_rows(path: str | Path) -> list[dict[str, float]]:
    """The rows of a RateDistortion CSV as floats."""
    with Path(path).open(newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def plot_rate_distortion(
    csv_paths: Sequence[str | Path],
    out_png: str | Path,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    ylabel: str = "accuracy [%]",
) -> Path:
    """Plot accuracy [%] vs size [KiB] of one or several runs (one RateDistortion CSV each) as a PNG.

    Per run: the quantized epochs at their entropy-estimated size (circles, labelled with the epoch), every
    real ``.nnc`` file at its size with its decoded accuracy (a star, ".nnc file (decoded)"), and the
    full-precision accuracy as a dashed line labelled with its value. The top axis gives the size as % of
    the float32 size when all runs share one. ``labels`` name the runs (default: the CSV stem and Λ).
    """
    if labels is not None and len(labels) != len(csv_paths):
        raise ValueError(f"`labels` needs one entry per CSV file ({len(csv_paths)}), got {len(labels)}")
    figure = rate_distortion_figure(csv_paths, labels, title, ylabel)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_png, lambda handle: figure.savefig(handle, format="png", dpi=120))
    return out_png


def rate_distortion_figure(
    csv_paths: Sequence[str | Path],
    labels: Sequence[str] | None = None,
    title: str | None = None,
    ylabel: str = "accuracy [%]",
):
    """The ``matplotlib.figure.Figure`` that :func:`plot_rate_distortion` saves (e.g. for a notebook)."""
    # A bare Figure with its own Agg canvas: no pyplot state and no matplotlib.use() in the user's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    several = len(csv_paths) > 1
    figure = Figure(figsize=(7.5, 4.8 + 0.5 * len(csv_paths) if several else 4.8))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    float32_sizes = set()
    for index, path in enumerate(csv_paths):
        rows = read_rows(path)
        run = labels[index] if labels is not None else _default_label(path, rows)
        _plot_run(axes, rows, run, f"C{index}", several=several)
        float32_sizes |= {r["float32_bytes"] for r in rows if _finite(r.get("float32_bytes"))}
    if len(float32_sizes) == 1:
        float32_kib = float32_sizes.pop() / KIB
        top = axes.secondary_xaxis(
            "top", functions=(lambda kib: 100 * kib / float32_kib, lambda pct: pct * float32_kib / 100)
        )
        top.set_xlabel(f"% of float32 ({float32_kib:.1f} KiB = 4 bytes per state_dict value)")
    axes.set_xlabel("size [KiB]: entropy estimate per epoch, real file for .nnc")
    axes.set_ylabel(ylabel)
    figure.suptitle(title or (Path(csv_paths[0]).stem if len(csv_paths) == 1 else "rate–distortion"),
                    fontsize="medium", fontweight="bold")
    axes.grid(True, alpha=0.3)
    axes.margins(x=0.12, y=0.15)
    if axes.get_legend_handles_labels()[0] and several:  # below the plot: inside, it would hide points
        axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14))
    elif axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small", loc="best")
    figure.tight_layout()
    return figure


def _plot_run(axes, rows: list[dict[str, float]], run: str, color: str, several: bool) -> None:
    def label(text: str) -> str:
        return f"{run}: {text}" if run else text

    estimated = [
        (r["estimated_bytes"] / KIB, 100 * r["accuracy"], int(r["epoch"]))
        for r in rows
        if _finite(r.get("estimated_bytes")) and _finite(r.get("accuracy"))
    ]
    if estimated:
        xs, ys, _ = zip(*estimated, strict=True)
        axes.plot(xs, ys, marker="o", markersize=4, linewidth=1, color=color, alpha=0.8,
                  label=label("quantized model after epoch N (size: entropy estimate)"))
        for x, y, epoch in _labelled_points(estimated):
            axes.annotate(f"{epoch}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                          color=color)
    files = [r for r in rows if _finite(r.get("nnc_bytes"))]
    for number, row in enumerate(files):
        accuracy = row.get("nnc_accuracy")
        accuracy = accuracy if _finite(accuracy) else row["accuracy"]
        x, y = row["nnc_bytes"] / KIB, 100 * accuracy
        text = f".nnc file (decoded): {x:.2f} KiB, {y:.2f} %" if len(files) == 1 else ".nnc file (decoded)"
        axes.plot([x], [y], linestyle="none", marker="*", markersize=15, color=color, markeredgecolor="black",
                  label=label(text) if number == 0 else None)
        axes.annotate(f"epoch {int(row['epoch'])}", (x, y), textcoords="offset points", xytext=(8, -12),
                      fontsize=7)
    fp = [r["fp_accuracy"] for r in rows if _finite(r.get("fp_accuracy"))]
    if fp:
        value = 100 * fp[-1]
        axes.axhline(value, linestyle="--", linewidth=1.2, color="0.35" if not several else color)
        axes.annotate(label(f"full precision: {value:.2f} %"), (0.01, value),
                      xycoords=("axes fraction", "data"), textcoords="offset points", xytext=(0, 3),
                      fontsize=8, color="0.25" if not several else color,
                      bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})


def _labelled_points(points: list[tuple[float, float, int]], at_most: int = 10, spacing: float = 0.05):
    """The points that get an epoch label: the first and the last, then up to ``at_most`` in all, evenly
    spread over the epochs, skipping any closer than ``spacing`` (fraction of the data range) to one already
    labelled, so that the numbers stay readable where the points crowd."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    width, height = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    step = max(1, math.ceil(len(points) / at_most))
    candidates = [points[0], points[-1], *points[step:-1:step]]
    chosen: list[tuple[float, float, int]] = []
    for x, y, epoch in candidates:
        if all(abs(x - cx) / width > spacing or abs(y - cy) / height > spacing for cx, cy, _ in chosen):
            chosen.append((x, y, epoch))
    return chosen


def _default_label(path: str | Path, rows: list[dict[str, float]]) -> str:
    lam = rows[0].get("lam") if rows else None
    return f"{Path(path).stem} (Λ={lam:g})" if _finite(lam) else Path(path).stem


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
