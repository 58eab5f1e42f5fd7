"""`ecqx fit --method/--bits/--lam/--start-epoch/--nnc` shortcuts and the command overview."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytorch_lightning import LightningDataModule

from ecqx.callbacks import EC2T, ECQ, ECQx, NNCExport, RateDistortion
from ecqx.training import ClassificationModule
from ecqx.training.cli import LIGHTNING_COMMANDS, TOOL_COMMANDS, EcqxCLI, main, with_default_config

RECIPE_WITHOUT_QUANTIZER = """
trainer:
  max_epochs: 1
  logger: false
  enable_checkpointing: false
model:
  class_path: ecqx.training.ClassificationModule
  init_args:
    num_classes: 10
    model:
      class_path: ecqx.training.MLP
      init_args: {in_features: 64, hidden: [16], num_classes: 10}
data:
  class_path: ecqx.training.DigitsDataModule
"""


def _callbacks(argv: list[str]) -> list:
    """The trainer callbacks `ecqx fit ARGV` would run with (the classes are built, nothing is trained)."""
    args = with_default_config(["fit", *argv])[1:]
    cli = EcqxCLI(ClassificationModule, LightningDataModule, subclass_mode_model=True,
                  subclass_mode_data=True, args=args, run=False)
    return cli.trainer.callbacks


def _one(callbacks: list, cls: type):
    found = [cb for cb in callbacks if isinstance(cb, cls)]
    assert len(found) == 1, callbacks
    return found[0]


def test_shortcuts_change_the_default_recipe_callback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    callbacks = _callbacks(["--bits", "3", "--lam", "0.4", "--start-epoch", "2", "--nnc", "out/m.nnc"])
    quantizer = _one(callbacks, ECQx)
    assert (quantizer.bits, quantizer.lam, quantizer.start_epoch) == (3, 0.4, 2)
    assert quantizer.relevance_every_n_steps == 10  # the recipe's other settings stay
    # an explicit --nnc path is the user's, relative to the current folder: not moved into the run folder
    assert _one(callbacks, NNCExport).path == tmp_path / "out" / "m.nnc"


def test_recipe_outputs_land_in_the_versioned_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lightning_logs" / "digits_mlp_ecqx4" / "version_0").mkdir(parents=True)  # an earlier run
    callbacks = _callbacks([])
    version = Path("lightning_logs") / "digits_mlp_ecqx4" / "version_1"
    assert _one(callbacks, NNCExport).path == version / "digits_mlp_ecqx4.nnc"
    assert _one(callbacks, RateDistortion).csv_path == version / "rate_distortion.csv"


def test_method_replaces_the_callback_with_its_defaults_keeping_the_schedule():
    callbacks = _callbacks(["--method", "ec2t", "--lam", "0.3"])
    assert not any(isinstance(cb, ECQ) for cb in callbacks)  # ECQx is an ECQ subclass
    ternary = _one(callbacks, EC2T)
    assert ternary.lam == 0.3
    assert ternary.start_epoch == 10  # the default recipe's warm-up
    plain = _one(_callbacks(["--method", "ecq"]), ECQ)
    assert type(plain) is ECQ and plain.bits == 4 and plain.lam == 0.05  # ECQ's own defaults


def test_bits_for_ec2t_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _callbacks(["--method", "ec2t", "--bits", "3"])
    assert exit_info.value.code == 2
    assert "--bits does not apply to EC2T" in capsys.readouterr().err


def test_method_adds_a_quantizer_and_nnc_adds_an_export(tmp_path):
    recipe = tmp_path / "plain.yaml"
    recipe.write_text(RECIPE_WITHOUT_QUANTIZER)
    callbacks = _callbacks(["--config", str(recipe), "--method", "ecq", "--bits", "5",
                            "--nnc", str(tmp_path / "x.nnc")])
    assert _one(callbacks, ECQ).bits == 5
    assert str(_one(callbacks, NNCExport).path) == str(tmp_path / "x.nnc")


def test_quantizer_settings_without_a_quantizer_are_an_error(tmp_path, capsys):
    recipe = tmp_path / "plain.yaml"
    recipe.write_text(RECIPE_WITHOUT_QUANTIZER)
    with pytest.raises(SystemExit):
        _callbacks(["--config", str(recipe), "--lam", "0.1"])
    assert "add --method" in capsys.readouterr().err


def test_overview_lists_all_six_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in (*LIGHTNING_COMMANDS, *TOOL_COMMANDS):
        assert f"\n  {command} " in out
    assert main([]) == 2


def test_fit_help_opens_with_the_default_run_and_the_shortcuts(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    head = "\n".join(capsys.readouterr().out.splitlines()[:12])
    assert "embedded default recipe" in head and "--method" in head and "--start-epoch" in head
