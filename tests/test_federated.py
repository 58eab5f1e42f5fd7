"""``ecqx federate``: FedAvg on Flower (in-process) with NNC-coded updates up and down; Dirichlet split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from ecqx.training.cli import main
from ecqx.training.federated import dirichlet_split

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "federated_mnist_lenet5.yaml"

DIGITS = {
    "model": {"class_path": "ecqx.training.ClassificationModule", "init_args": {
        "num_classes": 10,
        "model": {"class_path": "ecqx.training.MLP",
                  "init_args": {"in_features": 64, "hidden": [32], "num_classes": 10}},
        "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}}},
    "data": {"class_path": "ecqx.training.DigitsDataModule",
             "init_args": {"batch_size": 32, "val_size": 0.1, "test_size": 0.2, "seed": 0}},
    "federated": {"clients": 3, "rounds": 2, "local_epochs": 1, "alpha": 0.5, "seed": 0},
}


def test_dirichlet_split_partitions_and_is_non_iid():
    labels = torch.arange(10).repeat_interleave(100)
    shards = dirichlet_split(labels, clients=5, alpha=0.3, seed=1)
    joined = torch.cat(shards).sort().values
    assert torch.equal(joined, torch.arange(1000))  # every sample exactly once
    histograms = torch.stack([torch.bincount(labels[s], minlength=10) for s in shards]).double()
    shares = histograms / histograms.sum(1, keepdim=True)
    assert float(shares.max()) > 0.3  # some client is dominated by one class (IID would give ~0.1)
    again = dirichlet_split(labels, clients=5, alpha=0.3, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(shards, again, strict=True))
    iid_like = dirichlet_split(labels, clients=5, alpha=1000.0, seed=1)
    assert float(max((torch.bincount(labels[s], minlength=10).double() / len(s)).max()
                     for s in iid_like)) < 0.2
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_split(torch.zeros(3, dtype=torch.int64), clients=5, alpha=0.5, seed=0, attempts=3)


def test_federate_digits_two_rounds(tmp_path, capsys):
    recipe = tmp_path / "fed.yaml"
    recipe.write_text(yaml.safe_dump(DIGITS))
    results = tmp_path / "out" / "fed.json"
    assert main(["federate", "--config", str(recipe), "--results", str(results)]) == 0
    report = json.loads(results.read_text())
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    upstream_float32 = 3 * 4 * (64 * 32 + 32 + 32 * 10 + 10)  # the MLP's values from each of 3 clients
    for r in rounds:
        assert {"round", "bytes_up", "bytes_down", "float32_bytes", "accuracy"} <= set(r)
        assert 0 < r["bytes_up"] < 0.25 * upstream_float32  # < 25 % of float32 upstream
    # round 1: every participant builds the recipe's initial model, nothing goes downstream (in float32
    # FedAvg neither); round 2: a difference update of the aggregate, both directions in float32 FedAvg
    assert rounds[0]["bytes_down"] == 0 and rounds[0]["float32_bytes"] == upstream_float32
    assert 0 < rounds[1]["bytes_down"] < 0.25 * upstream_float32
    assert rounds[1]["float32_bytes"] == 2 * upstream_float32
    assert rounds[1]["accuracy"] > 0.3  # chance is 0.1
    assert sum(rounds[0]["client_samples"]) > 1000
    assert "round 2:" in capsys.readouterr().out


def test_federate_initial_model_nnc_sends_the_base_then_smaller_updates(tmp_path):
    recipe = tmp_path / "fed.yaml"
    config = {**DIGITS, "federated": {**DIGITS["federated"], "clients": 2, "limit_train_batches": 3,
                                      "initial_model": "nnc"}}
    recipe.write_text(yaml.safe_dump(config))
    results = tmp_path / "fed.json"
    assert main(["federate", "--config", str(recipe), "--results", str(results), "--baseline", "true"]) == 0
    report = json.loads(results.read_text())
    values = 64 * 32 + 32 + 32 * 10 + 10
    rounds = report["rounds"]
    # round 1 carries the base model (the codec's default grid: over a tenth of float32), round 2 a
    # difference update
    assert 0.1 * 4 * values * 2 < rounds[0]["bytes_down"] < 4 * values * 2
    assert 0 < rounds[1]["bytes_down"] < 0.6 * rounds[0]["bytes_down"]
    assert all(r["float32_bytes"] == 2 * 4 * values * 2 for r in rounds)
    assert [r["bytes_down"] for r in report["baseline"]["rounds"]] == [4 * values * 2] * 2


def test_federate_is_deterministic(tmp_path):
    recipe = tmp_path / "fed.yaml"
    config = {**DIGITS, "federated": {**DIGITS["federated"], "rounds": 1, "clients": 2,
                                      "limit_train_batches": 3}}
    recipe.write_text(yaml.safe_dump(config))
    outs = []
    for tag in ("a", "b"):
        assert main(["federate", "--config", str(recipe), "--results", str(tmp_path / f"{tag}.json")]) == 0
        outs.append(json.loads((tmp_path / f"{tag}.json").read_text())["rounds"])
    assert outs[0] == outs[1]


def test_federate_bad_value_names_the_key(tmp_path, capsys):
    recipe = tmp_path / "fed.yaml"
    recipe.write_text(yaml.safe_dump({**DIGITS, "federated": {**DIGITS["federated"], "up_bits": 9}}))
    with pytest.raises((SystemExit, ValueError)):
        code = main(["federate", "--config", str(recipe)])
        assert code != 0
        raise SystemExit(code)
    assert "up_bits" in capsys.readouterr().err


def test_federated_mnist_recipe_runs_one_small_round(shared_dir, tmp_path, monkeypatch):
    recipe = yaml.safe_load(RECIPE.read_text())
    assert recipe["federated"]["clients"] == 10 and recipe["federated"]["alpha"] == 0.5
    assert recipe["data"]["init_args"]["root"] == "data/mnist"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mnist").symlink_to(shared_dir / "data" / "mnist")
    out = tmp_path / "r.json"
    argv = ["federate", "--config", str(RECIPE), "--results", str(out), "--federated.rounds", "1",
            "--federated.limit_train_batches", "2", "--data.init_args.limit", "2000"]
    assert main(argv) == 0
    rounds = json.loads(out.read_text())["rounds"]
    assert len(rounds) == 1 and rounds[0]["bytes_up"] < rounds[0]["float32_bytes"] / 2


def test_federate_float32_baseline_counts_float32_bytes_and_writes_plot(tmp_path, capsys):
    recipe = tmp_path / "fed.yaml"
    config = {**DIGITS, "federated": {**DIGITS["federated"], "rounds": 2, "clients": 2,
                                      "limit_train_batches": 3}}
    recipe.write_text(yaml.safe_dump(config))
    results = tmp_path / "fed.json"
    assert main(["federate", "--config", str(recipe), "--results", str(results), "--baseline", "true"]) == 0
    report = json.loads(results.read_text())
    values = 64 * 32 + 32 + 32 * 10 + 10  # the MLP's state_dict
    baseline = report["baseline"]["rounds"]
    assert [r["round"] for r in baseline] == [1, 2]
    for r in baseline:  # float32: 4 bytes × values × clients per direction; round 1 upstream only
        assert r["bytes_up"] == 4 * values * 2
        assert r["bytes_down"] == (0 if r["round"] == 1 else 4 * values * 2)
        assert r["bytes_up"] + r["bytes_down"] == r["float32_bytes"]
        assert 0 <= r["accuracy"] <= 1
    totals = report["baseline"]["total_bytes_up"] + report["baseline"]["total_bytes_down"]
    assert totals == 3 * 4 * values * 2  # two rounds up, one down
    # the NNC run of the same loop sends far less
    nnc = report["total_bytes_up"] + report["total_bytes_down"]
    assert 0 < nnc < 0.5 * report["total_float32_bytes"]
    png = results.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "float32 FedAvg round 2:" in capsys.readouterr().out
    # without --baseline: only the NNC run, and still the plot
    plain = tmp_path / "plain.json"
    assert main(["federate", "--config", str(recipe), "--results", str(plain)]) == 0
    assert "baseline" not in json.loads(plain.read_text())
    assert plain.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # same loop, same seeds: the NNC run is unchanged by the baseline run beside it
    assert json.loads(plain.read_text())["rounds"] == report["rounds"]
