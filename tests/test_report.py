"""The end of a run shows its result: the `ecqx fit` headline, metrics.json, the run folder, float32_bytes."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from callback_helpers import synthetic_loader, tiny_module, tiny_trainer
from pytorch_lightning import Trainer
from pytorch_lightning.loggers import CSVLogger

from ecqx.callbacks import NNCExport, RateDistortion
from ecqx.callbacks.rate_distortion import read_rows
from ecqx.coding import decode_state_dict, float32_bytes
from ecqx.training.cli import main
from ecqx.training.report import (
    METRICS_FILE,
    RunReport,
    build_report,
    format_report,
    place_outputs_in_run_folder,
)

DIGITS_MLP_FLOAT32 = 4 * (64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10)  # the default recipe's MLP


def test_float32_bytes_counts_four_bytes_per_value_of_every_tensor():
    state_dict = {
        "w": torch.zeros(3, 4),  # 12 values
        "half": torch.zeros(5, dtype=torch.float16),  # 5: the reference is float32 whatever the dtype
        "count": torch.tensor(7),  # 0-d integer buffer: 1 value
        "empty": torch.zeros(0, 3),  # 0 values
    }
    assert float32_bytes(state_dict) == 4 * (12 + 5 + 1) == 72
    with pytest.raises(TypeError, match="'step' is a int, not a tensor"):
        float32_bytes({"step": 3})


@dataclass
class Run:
    out: str
    warnings: list[str]
    folder: Path  # the working folder of the run: printed paths are relative to it

    def headline(self, name: str) -> str:
        match = re.search(rf"^{re.escape(name)}\s+(.+?)\s{{2}}", self.out, re.MULTILINE)
        assert match, f"no {name!r} row in:\n{self.out}"
        return match.group(1)

    @property
    def metrics_json(self) -> dict:
        match = re.search(r"^\s+metrics JSON\s+(\S+)$", self.out, re.MULTILINE)
        assert match, self.out
        return json.loads((self.folder / match.group(1)).read_text())


def _fit(*args: str) -> Run:
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
        warnings.simplefilter("always")
        assert main(["fit", *args, "--trainer.enable_progress_bar", "false"]) == 0
    return Run(out.getvalue(), [str(w.message) for w in caught], Path.cwd())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of the default digits recipe in one folder: 3 epochs quantized from epoch 1, then a 2-epoch
    run whose start epoch (5) is never reached."""
    folder = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        first = _fit("--trainer.max_epochs", "3", "--start-epoch", "1")
        late = _fit("--trainer.max_epochs", "2", "--start-epoch", "5")
    return folder, first, late


@pytest.mark.slow
def test_headline_numbers_are_the_files_and_match_metrics_json(runs):
    folder, run, _ = runs
    report = run.metrics_json
    nnc = Path(report["files"][".nnc"][0])
    decoded = decode_state_dict(nnc.read_bytes())

    assert report["nnc_bytes"] == nnc.stat().st_size
    assert report["float32_bytes"] == float32_bytes(decoded) == DIGITS_MLP_FLOAT32
    assert report["percent_of_float32"] == pytest.approx(100 * nnc.stat().st_size / DIGITS_MLP_FLOAT32)
    weights = [decoded[name] for name in decoded if name.endswith(".weight")]  # ECQx quantizes all three
    assert (report["tensors_quantized"], report["tensors_total"]) == (3, len(decoded)) == (3, 6)
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert report["zeros"] == pytest.approx(zeros)
    assert report["fp_accuracy"] == report["metrics"]["fp_val_acc"]
    assert report["decoded_accuracy"] == report["metrics"]["nnc_val_acc"]
    assert report["metrics"]["val_acc"] > 0.5 and "train_loss" in report["metrics"]
    assert report["warning"] is None

    # the printed table shows the same numbers
    assert run.headline("full-precision accuracy") == f"{100 * report['fp_accuracy']:.2f} %"
    assert "val split, end of warm-up (epoch 0)" in run.out
    assert run.headline("decoded accuracy") == f"{100 * report['decoded_accuracy']:.2f} %"
    assert "val split, model decoded from the .nnc file" in run.out
    assert run.headline(".nnc size") == f"{report['nnc_bytes']:,} B"
    assert f"{report['percent_of_float32']:.2f} % of float32 ({DIGITS_MLP_FLOAT32:,} B" in run.out
    assert run.headline("zeros") == f"{100 * report['zeros']:.1f} %"
    assert "3 of 6 tensors quantized" in run.out
    assert "final metrics" not in run.out  # the headline replaces the list of every logged key


@pytest.mark.slow
def test_every_file_of_a_run_is_listed_and_sits_in_its_version_folder(runs):
    folder, run, _ = runs
    report = run.metrics_json
    version = folder / "lightning_logs" / "digits_mlp_ecqx4" / "version_0"
    assert report["folder"] == str(version)
    assert set(report["files"]) == {
        ".nnc", "rate-distortion CSV", "rate-distortion plot", "checkpoint", "resolved config",
        "logged metrics (CSV)", "metrics JSON",
    }  # fmt: skip
    listed = [Path(path) for paths in report["files"].values() for path in paths]
    for path in listed:
        assert path.is_file(), path
        assert path.is_relative_to(version), path
        assert f"  {os.path.relpath(path, folder)}\n" in run.out + "\n"  # printed relative to the folder
    assert report["files"][".nnc"] == [str(version / "digits_mlp_ecqx4.nnc")]
    assert report["files"]["resolved config"] == [str(version / "config.yaml")]
    assert report["files"]["metrics JSON"] == [str(version / METRICS_FILE)]
    assert sorted(p.name for p in folder.iterdir()) == ["lightning_logs"]  # nothing outside the run folders


@pytest.mark.slow
def test_rate_distortion_csv_ends_with_the_real_nnc_file(runs):
    _, run, _ = runs
    report = run.metrics_json
    rows = read_rows(report["files"]["rate-distortion CSV"][0])
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert rows[-1]["nnc_bytes"] == Path(report["files"][".nnc"][0]).stat().st_size
    assert rows[-1]["nnc_accuracy"] == pytest.approx(report["decoded_accuracy"])
    assert all(math.isnan(r["nnc_bytes"]) for r in rows[:-1])  # no periodic export in this recipe
    assert rows[-1]["fp_accuracy"] == pytest.approx(report["fp_accuracy"])
    assert {r["float32_bytes"] for r in rows} == {DIGITS_MLP_FLOAT32}
    assert math.isnan(rows[0]["estimated_bytes"]) and rows[-1]["estimated_bytes"] > 0  # warm-up, quantized
    assert Path(report["files"]["rate-distortion plot"][0]).stat().st_size > 10_000


@pytest.mark.slow
def test_a_run_shorter_than_its_start_epoch_warns_and_reports_nothing_quantized(runs):
    folder, first, late = runs
    report = late.metrics_json
    assert report["folder"] == str(folder / "lightning_logs" / "digits_mlp_ecqx4" / "version_1")
    reason = "ECQx(start_epoch=5) never started: the run ended after 2 epoch(s) of full-precision warm-up"
    assert any(f"holds no quantized tensor: {reason}" in message for message in late.warnings), late.warnings
    assert reason in report["warning"]
    assert f"WARNING: no tensor was quantized: {reason}" in late.out
    assert report["tensors_quantized"] == 0 and "0 of 6 tensors quantized" in late.out
    assert report["zeros"] is None and late.headline("zeros") == "—"
    assert report["fp_source"] == "val split, last epoch (1); the run never quantized"
    assert report["fp_accuracy"] == report["metrics"]["val_acc"]
    # the second run got its own folder: the first run's file is untouched
    first_nnc = Path(first.metrics_json["files"][".nnc"][0])
    assert first_nnc.stat().st_size == first.metrics_json["nnc_bytes"]
    assert Path(report["files"][".nnc"][0]).parent != first_nnc.parent
    assert not any("holds no quantized tensor" in message for message in first.warnings)


def test_relative_recipe_outputs_move_into_the_run_folder_absolute_ones_stay(tmp_path):
    export, elsewhere = NNCExport("model.nnc"), NNCExport(tmp_path / "abs" / "model.nnc")
    curves, plain = RateDistortion("."), RateDistortion("rd")
    logger = CSVLogger(tmp_path / "logs", name="recipe")
    trainer = Trainer(logger=logger, callbacks=[export, elsewhere, curves, plain], enable_progress_bar=False)
    version = tmp_path / "logs" / "recipe" / "version_0"
    assert place_outputs_in_run_folder(trainer) == version
    assert export.path == version / "model.nnc"
    assert elsewhere.path == tmp_path / "abs" / "model.nnc"
    assert curves.csv_path == version / "rate_distortion.csv"
    assert plain.out_dir == version / "rd"

    unlogged = NNCExport("model.nnc")
    no_logger = Trainer(logger=False, callbacks=[unlogged], enable_progress_bar=False)
    assert place_outputs_in_run_folder(no_logger) is None
    assert unlogged.path == Path("model.nnc")


def test_report_of_a_run_without_quantizer_or_export_says_why_numbers_are_missing(tmp_path):
    module = tiny_module()
    trainer = tiny_trainer([], max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(module, synthetic_loader(), synthetic_loader(n=64, seed=7))
    report = build_report(trainer)
    assert isinstance(report, RunReport)
    assert report.fp_accuracy == pytest.approx(float(trainer.callback_metrics["val_acc"]))
    assert report.decoded_accuracy is None and report.nnc_bytes is None and report.percent_of_float32 is None
    assert report.float32_bytes == float32_bytes(module.state_dict())
    assert report.tensors_quantized == 0 and report.tensors_total == len(module.state_dict())
    assert "no quantization callback" in report.warning
    assert report.files == {"metrics JSON": [str(tmp_path / METRICS_FILE)]}  # not written yet
    text = format_report(report)
    assert "not available: the run has no NNCExport callback" in text
    assert "no .nnc file written" in text
    assert "WARNING: no tensor was quantized: the trainer has no quantization callback" in text
