"""Where the outputs of an ``ecqx`` run go, and what a finished ``ecqx fit`` produced.

Run folder: LightningCLI versions every run's logs (``lightning_logs/<recipe>/version_N/``: ``config.yaml``,
``metrics.csv``, ``checkpoints/``). :func:`place_outputs_in_run_folder` puts the relative output paths of
``NNCExport`` (``path``), ``NNCUpdates`` (``path``) and ``RateDistortion`` (``out_dir``) inside that folder
too, so one run's files sit together and a second run never overwrites the first; absolute paths are kept as
given.

Report: :func:`build_report` collects the headline of a finished fit from the trainer — full-precision and
decoded accuracy (and what each was measured on), the ``.nnc`` size and its share of the float32 size
(:func:`ecqx.coding.float32_bytes`), the zeros among the quantized weights, a warning when nothing was
quantized — plus every file the run wrote and every scalar metric. :func:`format_report` renders the table
that ``ecqx fit`` prints; :func:`write_metrics_json` writes the same numbers to ``metrics.json`` in the run
folder.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from ecqx import coding
from ecqx.callbacks import NNCExport, NNCUpdates, RateDistortion
from ecqx.callbacks._base import find_quantization_callback
from ecqx.callbacks.nnc_export import no_quantization_reason
from ecqx.coding.files import write_bytes_atomic

__all__ = [
    "METRICS_FILE",
    "RunReport",
    "build_report",
    "finish_fit",
    "format_report",
    "metrics_json_path",
    "place_outputs_in_run_folder",
    "run_folder",
    "write_metrics_json",
]

METRICS_FILE = "metrics.json"
ACCURACY = "acc"  # ClassificationModule logs <stage>_acc
_SPLITS = {"val": "val split", "test": "test split"}
_LISTED = 5  # the most files of one kind that the printed report names one by one


@dataclass
class RunReport:
    """The headline of a finished fit, the files it wrote and its final metrics.

    Accuracies and ``zeros`` are fractions in [0, 1]; ``None`` where not available (the ``*_source`` fields
    then say why). ``files`` maps a kind (".nnc", "checkpoint", ...) to absolute paths of files that exist.
    """

    run: str
    method: str
    fp_accuracy: float | None
    fp_source: str
    decoded_accuracy: float | None
    decoded_source: str
    nnc_bytes: int | None
    float32_bytes: int | None
    zeros: float | None
    tensors_quantized: int
    tensors_total: int
    warning: str | None = None
    folder: str | None = None
    files: dict[str, list[str]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def percent_of_float32(self) -> float | None:
        """The ``.nnc`` size in % of :func:`ecqx.coding.float32_bytes` of the model."""
        if self.nnc_bytes is None or not self.float32_bytes:
            return None
        return 100.0 * self.nnc_bytes / self.float32_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields plus ``percent_of_float32``; non-finite numbers become ``None``."""
        return _json_ready({**asdict(self), "percent_of_float32": self.percent_of_float32})


# -- run folder -------------------------------------------------------------------------------------------


def run_folder(trainer: pl.Trainer) -> Path | None:
    """The run's versioned log folder (``Trainer.log_dir`` of its first logger); ``None`` without a logger
    that saves locally. Unlike ``Trainer.log_dir`` it does not broadcast, so one rank alone may call it."""
    if not trainer.loggers:
        return None
    logger = trainer.loggers[0]
    folder = logger.log_dir if isinstance(logger, (CSVLogger, TensorBoardLogger)) else logger.save_dir
    return Path(folder) if folder else None


def place_outputs_in_run_folder(trainer: pl.Trainer) -> Path | None:
    """Move relative ``NNCExport.path`` / ``NNCUpdates.path`` / ``RateDistortion.out_dir`` into
    :func:`run_folder`; returns it.

    Absolute paths stay as they are, and so does everything when the run has no such folder.
    """
    folder = run_folder(trainer)
    if folder is None:
        return None
    for callback in trainer.callbacks:
        if isinstance(callback, NNCExport) and not callback.path.is_absolute():
            callback.path = folder / callback.path
        elif isinstance(callback, NNCUpdates) and not Path(callback.path).is_absolute():
            callback.path = str(folder / callback.path)  # a folder or a file pattern: kept a string
        elif isinstance(callback, RateDistortion) and not callback.out_dir.is_absolute():
            callback.out_dir = folder / callback.out_dir
    return folder


def metrics_json_path(trainer: pl.Trainer) -> Path:
    """``metrics.json`` in the run folder (the trainer's ``default_root_dir`` for a run without one)."""
    return (run_folder(trainer) or Path(trainer.default_root_dir)) / METRICS_FILE


# -- report -----------------------------------------------------------------------------------------------


def build_report(trainer: pl.Trainer) -> RunReport:
    """The report of the fit that ``trainer`` just finished (call it on the global-zero rank).

    The file list names ``metrics.json`` at :func:`metrics_json_path`; :func:`write_metrics_json` writes it.
    """
    module = trainer.lightning_module
    state_dict = module.state_dict()
    quantizer = find_quantization_callback(trainer)
    export = next((cb for cb in trainer.callbacks if isinstance(cb, NNCExport)), None)
    final = export.last_result if export is not None else None
    if final is not None and final.path != str(export.path):
        final = None  # the fit ended without its final export; a periodic one is not the model at the end
    quantized = quantizer.quantized_tensors() if quantizer is not None else {}
    fp_accuracy, fp_source = _fp_accuracy(trainer, quantizer)
    decoded_accuracy, decoded_source = _decoded_accuracy(export, final)
    num_quantized = final.num_quantized if final is not None else len(quantized)
    report = RunReport(
        run=_run_name(trainer),
        method=_method(quantizer),
        fp_accuracy=fp_accuracy,
        fp_source=fp_source,
        decoded_accuracy=decoded_accuracy,
        decoded_source=decoded_source,
        nnc_bytes=final.nnc_bytes if final is not None else None,
        float32_bytes=final.float32_bytes if final is not None else coding.float32_bytes(state_dict),
        zeros=_zero_fraction(quantized),
        tensors_quantized=num_quantized,
        tensors_total=len(state_dict),
        warning=no_quantization_reason(trainer) if num_quantized == 0 else None,
        folder=_absolute(run_folder(trainer)),
        metrics={name: float(value) for name, value in sorted(trainer.callback_metrics.items())
                 if isinstance(value, torch.Tensor) and value.numel() == 1},
    )
    report.files = _files_written(trainer, export)
    report.files["metrics JSON"] = [_absolute(metrics_json_path(trainer))]
    return report


def write_metrics_json(report: RunReport, path: str | os.PathLike) -> Path:
    """Atomically write :meth:`RunReport.to_dict` as JSON to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))
    return path


def finish_fit(trainer: pl.Trainer) -> RunReport:
    """Build the report of a finished fit and write its ``metrics.json``."""
    report = build_report(trainer)
    write_metrics_json(report, report.files["metrics JSON"][0])
    return report


def format_report(report: RunReport) -> str:
    """The headline table and the list of files, as ``ecqx fit`` prints them."""
    percent = report.percent_of_float32
    rows = [
        ("full-precision accuracy", _percent(report.fp_accuracy), report.fp_source),
        ("decoded accuracy", _percent(report.decoded_accuracy), report.decoded_source),
        (".nnc size", "—" if report.nnc_bytes is None else f"{report.nnc_bytes:,} B",
         "no .nnc file written" if percent is None
         else f"{percent:.2f} % of float32 ({report.float32_bytes:,} B, 4 bytes per state_dict value)"),
        ("zeros", _percent(report.zeros, digits=1),
         f"of the quantized weights; {report.tensors_quantized} of {report.tensors_total} tensors quantized"),
    ]
    width = max(len(name) for name, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    title = f"ecqx fit: {report.run}: {report.method}" if report.run else f"ecqx fit: {report.method}"
    lines = [title, "-" * max(len(title), 72)]
    lines += [f"{name:<{width}}  {value:>{value_width}}  {detail}" for name, value, detail in rows]
    if report.warning:
        lines.append(f"WARNING: no tensor was quantized: {report.warning}")
    lines += ["", "files"]
    kind_width = max((len(kind) for kind in report.files), default=0)
    for kind, paths in report.files.items():
        shown = [_display_path(path) for path in paths]
        if len(shown) > _LISTED:  # e.g. one update per epoch: metrics.json has them all
            shown = [shown[0], f"... {len(shown) - 2} more ...", shown[-1]]
        lines += [f"  {kind:<{kind_width}}  {path}" for path in shown]
    return "\n".join(lines)


# -- helpers ----------------------------------------------------------------------------------------------


def _fp_accuracy(trainer: pl.Trainer, quantizer) -> tuple[float | None, str]:
    if quantizer is None or not quantizer.is_active:
        # the whole run trained in full precision: its last validation is the full-precision accuracy
        value = trainer.callback_metrics.get(f"val_{ACCURACY}")
        if value is None:
            return None, "not available: no val_acc was logged"
        last = trainer.current_epoch - 1
        return float(value), f"val split, last epoch ({last}); the run never quantized"
    value = quantizer.fp_metrics.get(f"fp_val_{ACCURACY}")
    if value is not None:
        return value, f"val split, end of warm-up (epoch {quantizer.start_epoch - 1})"
    if quantizer.start_epoch == 0:
        return None, "not available: quantization started at epoch 0, before any full-precision validation"
    return None, "not available: no val_acc was logged before quantization started"


def _decoded_accuracy(export: NNCExport | None, final) -> tuple[float | None, str]:
    if export is None:
        return None, "not available: the run has no NNCExport callback"
    if final is None:
        return None, "not available: NNCExport wrote no final .nnc file"
    value = final.metrics.get(f"{export.stage}_{ACCURACY}")
    if value is None:
        return None, "not available: NNCExport(evaluate=False) does not evaluate the decoded model"
    return value, f"{_SPLITS[export.stage]}, model decoded from the .nnc file"


def _zero_fraction(quantized: dict[str, Any]) -> float | None:
    total = sum(q.levels.numel() for q in quantized.values())
    if not total:
        return None
    return sum(int((q.dequantize() == 0).sum()) for q in quantized.values()) / total


def _run_name(trainer: pl.Trainer) -> str:
    logger = trainer.logger
    name = getattr(logger, "name", None) if logger is not None else None
    if not name:
        return ""
    version = getattr(logger, "version", None)
    return f"{name} (version {version})" if isinstance(version, int) else str(name)


def _method(quantizer) -> str:
    if quantizer is None:
        return "no quantization callback"
    bits = getattr(quantizer, "bits", None)
    grid = f"{bits} bit" if bits is not None else "ternary" if quantizer.method == "ec2t" else ""
    return f"{type(quantizer).__name__} {grid}, Λ = {quantizer.lam:g}, start_epoch {quantizer.start_epoch}"


def _files_written(trainer: pl.Trainer, export: NNCExport | None) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}

    def add(kind: str, path: str | os.PathLike | None) -> None:
        if path and os.path.isfile(path):
            absolute = _absolute(path)
            if absolute not in files.setdefault(kind, []):
                files[kind].append(absolute)

    if export is not None:
        add(".nnc", export.path)
        for result in export.results:
            if result.path != str(export.path):
                add("periodic .nnc", result.path)
    for callback in trainer.callbacks:
        if isinstance(callback, RateDistortion):
            add("rate-distortion CSV", callback.csv_path)
            add("rate-distortion plot", callback.png_path)
        elif isinstance(callback, NNCUpdates) and callback.files:
            add("update stream base", callback.base_path)
            for path in callback.update_paths:
                add("update stream", path)
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            for path in (callback.best_model_path, *callback.best_k_models, callback.last_model_path):
                add("checkpoint", path)
    folder = run_folder(trainer) or Path(trainer.default_root_dir)
    for callback in trainer.callbacks:
        if isinstance(callback, SaveConfigCallback):
            add("resolved config", folder / callback.config_filename)
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            add("logged metrics (CSV)", Path(logger.log_dir) / "metrics.csv")
    return {kind: paths for kind, paths in files.items() if paths}


def _absolute(path: str | os.PathLike | None) -> str | None:
    return None if path is None else os.path.abspath(path)


def _display_path(path: str) -> str:
    """Relative to the current folder when inside it (shorter), else absolute."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _percent(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f} %"


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
