"""``ecqx federate``: FedAvg on Flower with NNC-coded updates up and down; Dirichlet split; both engines.

Most tests run the in-process engine (``DIGITS``: ``engine: inprocess``): every start of Flower's simulation
engine costs ray's start-up and its actors' imports (~20 s on a small machine). The simulation engine is
tested against it: equal bytes, accuracies and update records, client errors, missing ray."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from dataclasses import asdict
from dataclasses import fields as fields_of
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from ecqx.training import federated as fed
from ecqx.training.cli import main
from ecqx.training.federated import dirichlet_split, engines

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "federated_mnist_lenet5.yaml"

DIGITS = {
    "model": {"class_path": "ecqx.training.ClassificationModule", "init_args": {
        "num_classes": 10,
        "model": {"class_path": "ecqx.training.MLP",
                  "init_args": {"in_features": 64, "hidden": [32], "num_classes": 10}},
        "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}}},
    "data": {"class_path": "ecqx.training.DigitsDataModule",
             "init_args": {"batch_size": 32, "val_size": 0.1, "test_size": 0.2, "seed": 0}},
    "federated": {"clients": 3, "rounds": 2, "local_epochs": 1, "alpha": 0.5, "seed": 0,
                  "engine": "inprocess"},
}


def _instantiate(tmp_path, **federated):
    """The recipe objects of DIGITS with ``federated`` overrides, parsed and seeded as ``ecqx federate``."""
    recipe = tmp_path / "fed.yaml"
    recipe.write_text(yaml.safe_dump({**DIGITS, "federated": {**DIGITS["federated"], **federated}}))
    parser = fed._parser()
    cfg = parser.parse_args(["--config", str(recipe)])
    pl.seed_everything(cfg.federated.seed, workers=True, verbose=False)
    return parser.instantiate_classes(cfg)


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


class BatchNormMLP(torch.nn.Module):
    """An MLP with BatchNorm: ``num_batches_tracked`` is a 0-D int64 buffer the clients update."""

    def __init__(self, in_features: int = 64, hidden: int = 16, num_classes: int = 10):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(in_features, hidden), torch.nn.BatchNorm1d(hidden),
                                       torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x.flatten(1))


def test_federate_batch_norm_model_averages_buffers(tmp_path):
    recipe = tmp_path / "fed.yaml"
    model = {"class_path": "test_federated.BatchNormMLP", "init_args": {"hidden": 16}}
    config = {**DIGITS, "model": {**DIGITS["model"], "init_args": {**DIGITS["model"]["init_args"],
                                                                   "model": model}},
              "federated": {**DIGITS["federated"], "clients": 2, "limit_train_batches": 3,
                            "engine": "inprocess"}}
    recipe.write_text(yaml.safe_dump(config))
    results = tmp_path / "fed.json"
    assert main(["federate", "--config", str(recipe), "--results", str(results), "--baseline", "true"]) == 0
    report = json.loads(results.read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert all(0 <= r["accuracy"] <= 1 for r in report["rounds"] + report["baseline"]["rounds"])


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


@pytest.mark.parametrize("recipe_name, data_folder", [("federated_mnist_lenet5.yaml", "mnist"),
                                                      ("federated_cifar10_resnet20.yaml", "cifar10-jpeg")])
def test_federated_recipes_run_two_small_rounds(recipe_name, data_folder, shared_dir, tmp_path, monkeypatch):
    path = RECIPE.parent / recipe_name
    recipe = yaml.safe_load(path.read_text())
    assert recipe["federated"]["clients"] == 10 and recipe["federated"]["alpha"] == 0.5
    assert recipe["federated"].get("engine", "simulation") == "simulation"  # Flower's engine by default
    assert recipe["data"]["init_args"]["root"] == f"data/{data_folder}"  # relative to the working folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / data_folder).symlink_to(shared_dir / "data" / data_folder)
    out = tmp_path / "r.json"
    argv = ["federate", "--config", str(path), "--results", str(out), "--federated.rounds", "2",
            "--federated.limit_train_batches", "2", "--data.init_args.limit", "1000",
            "--federated.engine", "inprocess"]  # 10 clients: in-process is faster here than ray's start
    assert main(argv) == 0
    rounds = json.loads(out.read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["bytes_down"] == 0  # every participant builds the recipe's initial model
    for r in rounds:  # the recipes' 2-/3-bit ECQ updates: far below float32 in both directions
        assert 0 < r["bytes_up"] + r["bytes_down"] < 0.1 * r["float32_bytes"]


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


def _same_records(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        (x.direction, x.round, x.sender, x.data) == (y.direction, y.round, y.sender, y.data)
        and x.difference.keys() == y.difference.keys()
        and all(torch.equal(x.difference[k], y.difference[k]) for k in x.difference)
        for x, y in zip(a, b, strict=True))


def test_simulation_engine_equals_inprocess_engine(tmp_path):
    """Flower's simulation engine (clients in ray actors, state in the node contexts) gives the bytes,
    accuracies and update records of the in-process loop, round by round (initial_model "nnc": round 1
    sends the base, round 2 a difference update)."""
    runs = {}
    for engine in ("inprocess", "simulation"):
        init = _instantiate(tmp_path, clients=2, rounds=2, limit_train_batches=2, initial_model="nnc",
                            engine=engine)
        records = []
        results = fed.run_federated(init.model, init.data, init.federated, observer=records.append)
        runs[engine] = ([asdict(r) for r in results], records)
    (inprocess, inprocess_records), (simulation, simulation_records) = runs["inprocess"], runs["simulation"]
    assert simulation == inprocess
    assert [r["round"] for r in simulation] == [1, 2] and all(r["bytes_up"] > 0 for r in simulation)
    assert [(r.direction, r.round, r.sender) for r in simulation_records] == [
        ("up", 1, 0), ("up", 1, 1), ("down", 2, None), ("up", 2, 0), ("up", 2, 1)]
    assert _same_records(simulation_records, inprocess_records)


def test_client_state_dict_round_trip_gives_identical_next_round_bytes(tmp_path):
    """A client restored from its state_dict (through bytes, as the simulation engine keeps it) sends the
    same next update as the client that kept running."""
    init = _instantiate(tmp_path, clients=2, rounds=2, limit_train_batches=2)
    config = init.federated
    train_loader, shards = fed._training_split(init.data, config)
    server = fed._FederatedServer(init.model, init.data.test_dataloader(), config)
    client_class = fed._make_client_class()

    def client(cid):
        loader = fed._client_loader(train_loader, shards[cid], cid, config)
        return client_class(cid, init.model, loader, config)

    running, other = client(0), client(1)
    first = server.downstream(1)
    server.aggregate(1, [(0, running.fit(first)), (1, other.fit(first))])
    restored = client(0)
    restored.load_state_dict(fed._from_bytes(fed._to_bytes(running.state_dict())))
    second = server.downstream(2)
    expected, got = running.fit(second), restored.fit(second)
    assert got.parameters.tensors == expected.parameters.tensors and len(got.parameters.tensors[0]) > 0
    state, restored_state = running.state_dict(), restored.state_dict()
    assert torch.equal(state["generator"], restored_state["generator"])  # the same batches next round
    assert all(torch.equal(state["held"][k], restored_state["held"][k]) for k in state["held"])


def test_simulation_client_error_is_raised_by_the_run(tmp_path, monkeypatch, capsys):
    """An exception inside a simulated client comes back as Flower's error reply: the run stops with it, and
    ``ecqx federate`` reports it in one line."""
    monkeypatch.setattr(engines, "check_machine", lambda config: None)  # let the clients find out themselves
    recipe = _recipe(tmp_path, clients=2, rounds=2, limit_train_batches=2, engine="simulation",
                     accelerator="mps")  # Lightning raises in the client: no MPS on this platform
    assert main(["federate", "--config", recipe]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert re.match(r"ecqx federate: error: federated round 1: 2 of 2 clients failed; the first error: .*MPS",
                    err[0])


def test_simulation_engine_without_ray_names_the_extra_and_the_inprocess_engine(tmp_path, monkeypatch,
                                                                                capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    recipe = tmp_path / "fed.yaml"
    config = {**DIGITS, "federated": {**DIGITS["federated"], "engine": "simulation"}}
    recipe.write_text(yaml.safe_dump(config))
    assert main(["federate", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert 'pip install "ecqx[federated]"' in err and "--federated.engine inprocess" in err
    assert len(err.strip().splitlines()) == 1


def test_federated_config_checks_engine_and_resources():
    with pytest.raises(ValueError, match="federated.engine"):
        fed.FederatedConfig(engine="ray")
    with pytest.raises(ValueError, match="federated.client_cpus"):
        fed.FederatedConfig(client_cpus=0)
    with pytest.raises(ValueError, match="federated.client_gpus"):
        fed.FederatedConfig(client_gpus=-1)
    config = fed.FederatedConfig(clients=3, client_cpus=2, client_gpus=0.5)
    backend = fed._backend_config(config)
    assert backend["client_resources"] == {"num_cpus": 2, "num_gpus": 0.5}
    assert 2 <= backend["init_args"]["num_cpus"] <= 6  # at least one client, at most all three at once


# ------------------------------------------------------------------------------------------------ errors
def _recipe(tmp_path, **federated) -> str:
    recipe = tmp_path / "fed.yaml"
    recipe.write_text(yaml.safe_dump({**DIGITS, "federated": {**DIGITS["federated"], **federated}}))
    return str(recipe)


def _not_started(*args, **kwargs):
    raise AssertionError("the engine was started")


def test_client_gpus_without_a_gpu_is_refused_before_the_engine_starts(tmp_path, monkeypatch, capsys):
    """Ray's actor pool would be empty: Flower logged the error and the run waited for clients forever."""
    monkeypatch.setattr(engines, "_run_simulation", _not_started)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["federate", "--config", _recipe(tmp_path, engine="simulation"), "--federated.client_gpus", "0.5"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "federated.client_gpus" in err[0] and "no CUDA GPU" in err[0]
    # with a GPU present, the clients must also train on it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert main([*argv, "--federated.accelerator", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "federated.client_gpus" in err[0] and "federated.accelerator" in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_accelerator_is_one_line_naming_the_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engines, "_run_inprocess", _not_started)
    assert main(["federate", "--config", _recipe(tmp_path), "--federated.accelerator", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "federated.accelerator 'cuda'" in err[0] and "not available" in err[0]


class _SilentGrid:
    """A grid whose nodes registered but never reply (Flower's when its ray backend failed to start)."""

    def get_node_ids(self):
        return [11, 12]

    def push_messages(self, messages):
        return [str(index) for index, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        return []

    def send_and_receive(self, messages, *, timeout=None):
        while True:  # Flower's InMemoryGrid without a timeout: until every reply came
            time.sleep(0.05)


def test_engine_failure_ends_the_run_instead_of_waiting_forever(tmp_path, monkeypatch):
    """Flower's run_simulation raises when its backend fails (e.g. ray finds no resources for a client), while
    the ServerApp thread it started waits for replies: the run raises the cause and that thread ends."""
    import flwr.simulation

    threads = []

    def failing_engine(server_app, client_app, num_supernodes, backend_config):
        thread = threading.Thread(target=server_app, args=(_SilentGrid(), None), daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(0.3)  # the ServerApp sent round 1 and waits
        try:
            raise ValueError("ActorPool is empty. Stopping Simulation. Check `num_cpus` and/or `num_gpus`")
        except ValueError as error:
            raise RuntimeError("An error was encountered. Ending simulation.") from error

    monkeypatch.setattr(flwr.simulation, "run_simulation", failing_engine)
    init = _instantiate(tmp_path, clients=2, rounds=1, engine="simulation")
    with pytest.raises(fed.FederatedError, match=r"simulation engine failed: ValueError: ActorPool is empty"):
        fed.run_federated(init.model, init.data, init.federated)
    threads[0].join(timeout=5)
    assert not threads[0].is_alive()


@pytest.mark.parametrize("key, value", [("down_lam", -1), ("up_lam", float("nan")), ("qp_density", 9),
                                        ("qp_density", -1), ("limit_train_batches", 1.5),
                                        ("limit_train_batches", 0), ("limit_train_batches", 0.0),
                                        ("limit_train_batches", -2), ("tca", "yes")])
def test_federated_config_names_the_key_of_a_bad_value(key, value):
    with pytest.raises(ValueError, match=rf"^federated\.{key} must be"):
        fed.FederatedConfig(**{key: value})


@pytest.mark.parametrize("value", [None, 1, 7, 0.5, 1.0])
def test_federated_config_accepts_batch_limits(value):
    assert fed.FederatedConfig(limit_train_batches=value).limit_train_batches == value


def _usage_and_error(err: str) -> tuple[list[str], str]:
    before, _, after = err.partition("error:")
    return before.strip().splitlines(), after


@pytest.mark.parametrize("option", [["--model.init_args.typo", "1"],
                                    ["--data.class_path", "ecqx.training.NoSuchDataModule"]])
def test_recipe_errors_show_a_one_line_usage_then_the_cause(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as exit_info:
        main(["federate", "--config", _recipe(tmp_path), *option])
    assert exit_info.value.code != 0
    usage, error = _usage_and_error(capsys.readouterr().err)
    assert usage[0].startswith("usage: ecqx federate --config RECIPE.yaml") and len(usage) <= 2  # + the tip
    assert option[0].split(".")[-1] in error or option[1] in error


def test_run_errors_are_one_line_and_debug_raises(tmp_path, monkeypatch, capsys):
    def client_failure(*args, **kwargs):
        raise fed.FederatedError("federated round 1: 1 of 3 clients failed; the first error: boom\n(report)")

    monkeypatch.setattr(engines, "_run_inprocess", client_failure)
    assert main(["federate", "--config", _recipe(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == "ecqx federate: error: federated round 1: 1 of 3 clients failed; the first error: boom\n"
    with pytest.raises(fed.FederatedError, match=r"(?s)boom.*report"):
        main(["federate", "--config", _recipe(tmp_path), "--debug"])


# ------------------------------------------------------------------------------------------------ output
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_output_is_each_round_once_without_lightning_or_library_noise(tmp_path, monkeypatch, capsys):
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    lightning = _Records()
    rank_zero.addHandler(lightning)
    level, root_handlers = rank_zero.level, list(logging.getLogger().handlers)
    try:
        assert main(["federate", "--config", _recipe(tmp_path, clients=2, limit_train_batches=2)]) == 0
    finally:
        rank_zero.removeHandler(lightning)
    assert not [m for m in lightning.messages if "GPU available" in m or "Tip" in m]
    assert rank_zero.level == level and logging.getLogger().handlers == root_handlers
    out = capsys.readouterr().out
    for rnd in (1, 2):
        assert len(re.findall(rf"^round {rnd}:", out, flags=re.M)) == 1, out
    assert "float32 FedAvg would send" in out and "float32 FedAvg round" not in out


def test_help_describes_every_federated_key(capsys):
    with pytest.raises(SystemExit):
        fed._parser().parse_args(["--help"])
    text = capsys.readouterr().out
    blocks = dict(re.findall(r"--federated\.(\w+) \S+\n((?:\s{10,}.*\n)+)", text))
    described = {name: re.sub(r"\s+", " ", re.sub(r"\(type: [^)]*\)|\(default: [^)]*\)", "", block)).strip()
                 for name, block in blocks.items()}
    fields = [f.name for f in fields_of(fed.FederatedConfig)]
    assert set(fields) <= set(described), sorted(set(fields) - set(described))
    assert all(described[name] for name in fields), [name for name in fields if not described[name]]
    assert "debug" in text
