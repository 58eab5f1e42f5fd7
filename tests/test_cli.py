"""The ``ecqx`` command: LightningCLI subcommands with the embedded default, and compress/inspect/decode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ecqx.training.cli import default_config_path, main, with_default_config
from ecqx.training.models import lenet5


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder so logs and checkpoints never land in the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


FAST = ["--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false"]


def test_default_config_is_inserted_only_when_no_config_is_named():
    default = default_config_path()
    assert with_default_config(["fit"]) == ["fit", "--config", default]
    assert with_default_config(["test", "--trainer.max_epochs", "2"]) == [
        "test", "--config", default, "--trainer.max_epochs", "2",
    ]  # fmt: skip
    assert with_default_config(["fit", "--config", "r.yaml"]) == ["fit", "--config", "r.yaml"]
    assert with_default_config(["fit", "-c", "r.yaml"]) == ["fit", "-c", "r.yaml"]
    assert with_default_config(["fit", "--config=r.yaml"]) == ["fit", "--config=r.yaml"]
    assert with_default_config(["--help"]) == ["--help"]


def test_embedded_default_is_packaged_and_names_the_digits_run():
    config = yaml.safe_load(Path(default_config_path()).read_text())
    assert config["data"]["class_path"] == "ecqx.training.DigitsDataModule"
    assert "root" not in config["data"]["init_args"]  # the data ships inside scikit-learn
    assert config["model"]["class_path"] == "ecqx.training.ClassificationModule"
    assert isinstance(config["seed_everything"], int)


def test_print_config_resolves_the_default(in_tmp, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["model"]["class_path"] == "ecqx.training.MLP"
    assert printed["data"]["init_args"]["batch_size"] == 64
    assert printed["seed_everything"] == 0


def test_fit_without_config_runs_the_default_and_prints_the_summary(in_tmp, capsys):
    assert main(["fit", *FAST]) == 0
    out = capsys.readouterr().out
    assert "ecqx fit: ECQx 4 bit" in out
    assert "full-precision accuracy" in out and "decoded accuracy" in out
    # fast_dev_run has no log folder: the outputs stay where the recipe names them, under the current one
    assert "  .nnc" in out and "digits_mlp_ecqx4.nnc" in out and (in_tmp / "digits_mlp_ecqx4.nnc").is_file()
    assert (in_tmp / "metrics.json").is_file()


def test_validate_and_test_subcommands_run(in_tmp, capsys):
    assert main(["validate", *FAST]) == 0
    assert "val_acc" in capsys.readouterr().out
    assert main(["test", *FAST]) == 0
    assert "test_acc" in capsys.readouterr().out


def test_command_line_overrides_reach_the_objects(in_tmp, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--data.init_args.batch_size",
                "16",
                "--model.init_args.model.init_args.hidden",
                "[8]",
                "--print_config",
            ]
        )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["init_args"]["batch_size"] == 16
    assert printed["model"]["init_args"]["model"]["init_args"]["hidden"] == [8]


def test_misspelt_recipe_key_is_named(in_tmp, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--data.init_args.bacth_size", "3"])
    assert exit_info.value.code != 0
    assert "bacth_size" in capsys.readouterr().err


def test_bad_recipe_value_names_the_argument(in_tmp):
    with pytest.raises(ValueError, match=r"`batch_size` must be an integer >= 1, got 0"):
        main(["fit", "--data.init_args.batch_size", "0", *FAST])


def test_predict_is_not_offered(in_tmp, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict"])
    assert exit_info.value.code != 0


# -- compress / inspect / decode ------------------------------------------------------------------------


@pytest.fixture
def lenet_file(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "lenet.pt"
    torch.save({"epoch": 1, "state_dict": lenet5().state_dict()}, path)  # nested, as training scripts save
    return path


def test_compress_writes_the_quantized_weights_exactly(lenet_file, tmp_path, capsys):
    import ecqx
    from ecqx.coding import decode_state_dict

    output = tmp_path / "lenet.nnc"
    assert (
        main(
            [
                "compress",
                str(lenet_file),
                "-o",
                str(output),
                "--method",
                "ecq",
                "--bits",
                "4",
                "--lam",
                "0.05",
            ]
        )
        == 0
    )
    assert f"{output}: {output.stat().st_size} bytes" in capsys.readouterr().out
    original = torch.load(lenet_file)["state_dict"]
    decoded = decode_state_dict(output.read_bytes())
    expected = ecqx.quantize(original, method="ecq", bits=4, lam=0.05)
    assert expected, "the quantizer selected no tensor"
    for name, quantized in expected.items():
        assert torch.equal(decoded[name], quantized.dequantize()), name
    for name in set(original) - set(expected):
        assert torch.allclose(decoded[name], original[name], atol=1e-4), name
    lenet5().load_state_dict(decoded, strict=True)
    # 4-bit entropy-coded weights: far below the float32 size
    assert output.stat().st_size < 0.25 * sum(4 * t.numel() for t in original.values())


def test_compress_ec2t_and_default_output_name(lenet_file, capsys):
    import ecqx
    from ecqx.coding import decode_state_dict

    assert main(["compress", str(lenet_file), "--method", "ec2t", "--lam", "0.02"]) == 0
    output = lenet_file.with_suffix(".nnc")
    decoded = decode_state_dict(output.read_bytes())
    original = torch.load(lenet_file)["state_dict"]
    for name, quantized in ecqx.quantize(original, method="ec2t", lam=0.02).items():
        assert torch.equal(decoded[name], quantized.dequantize()), name
        assert decoded[name].unique().numel() <= 3, name  # ternary


def test_inspect_and_decode(lenet_file, tmp_path, capsys):
    from ecqx.coding import decode_state_dict

    stream = tmp_path / "m.nnc"
    assert main(["compress", str(lenet_file), "-o", str(stream)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(stream)]) == 0
    table = capsys.readouterr().out
    for name in ("conv1.weight", "conv2.weight", "fc1.weight", "fc3.bias"):
        assert name in table
    assert main(["decode", str(stream), "-o", str(tmp_path / "back.pt"), "--workers", "2"]) == 0
    saved = torch.load(tmp_path / "back.pt")
    reference = decode_state_dict(stream.read_bytes())
    assert saved.keys() == reference.keys()
    assert all(torch.equal(saved[k], reference[k]) for k in saved)
    serial = tmp_path / "serial.nnc"
    assert main(["compress", str(lenet_file), "-o", str(serial), "--workers", "1"]) == 0
    assert serial.read_bytes() == stream.read_bytes()  # the default uses every CPU: same bytes


def test_file_command_errors_are_reported_not_raised(tmp_path, capsys):
    missing = tmp_path / "missing.nnc"
    assert main(["inspect", str(missing)]) == 1
    assert f"ecqx inspect: error: {missing}: no such file" in capsys.readouterr().err
    (tmp_path / "junk.nnc").write_bytes(b"\x00\x01not an nnc stream at all")
    assert main(["decode", str(tmp_path / "junk.nnc")]) == 1
    assert "ecqx decode: error:" in capsys.readouterr().err
    torch.save(lenet5().state_dict(), tmp_path / "m.pt")
    assert main(["compress", str(tmp_path / "m.pt"), "--bits", "0"]) == 1
    assert "--bits must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "m.pt"), "--workers", "0"]) == 1
    assert "workers must be an int >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", str(tmp_path / "m.pt"), "--method", "kmeans"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'kmeans'" in capsys.readouterr().err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "ecqx"
    assert script.is_file(), f"console script missing next to {sys.executable}; is the package installed?"
    result = subprocess.run([str(script), "compress", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--method {ecq,ec2t}" in result.stdout


def test_top_level_help_lists_the_file_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "predict" not in out
    for command in ("fit", "validate", "compress", "inspect", "decode"):
        assert f"\n  {command} " in out, command
    expected = {"compress": ("--debug", "--output"), "inspect": ("--debug", "--max-elements", "--values"),
                "decode": ("--debug", "--max-elements", "--output", "--workers")}
    for command, options in expected.items():
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        usage = capsys.readouterr().out
        assert usage.startswith(f"usage: ecqx {command}")
        assert all(option in usage for option in options), (command, usage)


def test_checkpoint_of_a_cli_run_is_tested_and_reloaded_without_the_config(in_tmp):
    from ecqx.training.cli import run_lightning
    from ecqx.training.data import DigitsDataModule
    from ecqx.training.module import ClassificationModule

    fit = [
        "fit",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "1",
    ]
    assert main([*fit, "--trainer.enable_progress_bar", "false"]) == 0
    (checkpoint,) = in_tmp.glob("lightning_logs/digits_mlp_ecqx4/version_0/checkpoints/*.ckpt")
    cli = run_lightning(["test", "--ckpt_path", str(checkpoint), "--trainer.enable_progress_bar", "false"])
    tested_acc = float(cli.trainer.callback_metrics["test_acc"])
    restored = ClassificationModule.load_from_checkpoint(checkpoint)  # network rebuilt from the saved config
    saved = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in saved.items())
    data = DigitsDataModule(seed=0)
    data.setup()
    assert restored.evaluate(data.test_dataloader())["acc"] == pytest.approx(tested_acc, abs=1e-6)
