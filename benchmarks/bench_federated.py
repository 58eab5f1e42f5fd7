"""Federated averaging on MNIST / LeNet-5: bytes and accuracy of NNC-coded FedAvg vs float32 FedAvg.

Runs ``ecqx federate --baseline true`` with ``recipes/federated_mnist_lenet5.yaml`` (10 clients,
Dirichlet α = 0.5, one local epoch, 4-bit ECQ updates upstream, base model then 6-bit updates downstream)
for ``--rounds`` rounds on the shared MNIST copy: the NNC-coded run and the float32 FedAvg run of the same
loop (same clients, split, seeds and rounds; float32 parameters both ways). Writes
``benchmarks/results/bench_federated.json``, ``.md`` and ``.png``: per round the bytes sent upstream (all
clients), downstream (stream × clients) and the server-side test accuracy of the aggregate for both runs;
totals, the ratio of total bytes and the accuracy difference at the last round; the plot of test accuracy
against cumulative bytes.

    python benchmarks/bench_federated.py [--rounds 20] [--data /work/shared/data/mnist] [--set up_lam=0.5 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import fields
from importlib.metadata import version
from pathlib import Path

import torch

from ecqx.training.federated import federate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "federated_mnist_lenet5.yaml"
RESULTS = ROOT / "benchmarks" / "results"


def reach(rounds: list[dict], target: float) -> dict | None:
    """The first round whose accuracy is at least ``target``, with the bytes sent up to and including it
    (up + down, all clients); None if no round reaches it."""
    sent = 0
    for r in rounds:
        sent += r["bytes_up"] + r["bytes_down"]
        if r["accuracy"] >= target:
            return {"round": r["round"], "bytes": sent, "accuracy": r["accuracy"]}
    return None


def recipe_overrides(pairs: list[str]) -> list[str]:
    """``KEY=VALUE`` pairs (keys of the recipe's ``federated:`` section) as ``ecqx federate`` arguments."""
    from ecqx.training.federated import FederatedConfig

    known = {f.name for f in fields(FederatedConfig)}
    argv = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY one of {sorted(known)}")
        argv += [f"--federated.{key}", value]
    return argv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--data", default=os.environ.get("ECQX_SHARED", "/work/shared") + "/data/mnist")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the recipe's federated: section (repeatable)")
    parser.add_argument("--out", default=str(RESULTS / "bench_federated"))
    parser.add_argument("--replot", action="store_true",
                        help="only redraw OUT.png from OUT.json (no training)")
    args = parser.parse_args()
    if args.replot:
        replot(Path(args.out))
        return
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "r.json"
        federate(["--config", str(RECIPE), "--results", str(raw), "--federated.rounds", str(args.rounds),
                  "--data.init_args.root", args.data, "--baseline", "true", *recipe_overrides(args.set)])
        report = json.loads(raw.read_text())
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw.with_suffix(".png"), out.with_suffix(".png"))
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["recipe"] = str(RECIPE.relative_to(ROOT))
    report["environment"] = environment(torch.get_num_threads(), flwr=version("flwr"))
    base = report["baseline"]
    nnc_total = report["total_bytes_up"] + report["total_bytes_down"]
    f32_total = base["total_bytes_up"] + base["total_bytes_down"]
    report["total_bytes_nnc"] = nnc_total
    report["total_bytes_float32_fedavg"] = f32_total
    report["bytes_ratio_nnc_over_float32"] = nnc_total / f32_total
    last, base_last = report["rounds"][-1], base["rounds"][-1]
    report["last_round_accuracy_difference"] = last["accuracy"] - base_last["accuracy"]
    target = base_last["accuracy"] - 0.005
    report["target_accuracy"] = target
    report["reach_nnc"] = reach(report["rounds"], target)
    report["reach_float32"] = reach(base["rounds"], target)
    config = report["config"]
    lines = [
        "# Federated MNIST / LeNet-5: NNC-coded FedAvg vs float32 FedAvg",
        "",
        f"Command: `{report['environment']['command']}` ({report['environment']['date_utc']} UTC, "
        f"{report['environment']['cpu_count']} CPUs, torch {report['environment']['torch']}, flwr "
        f"{report['environment']['flwr']}); both runs {report['seconds']} s.",
        "",
        f"`{report['recipe']}`, {config['clients']} clients, Dirichlet α = {config['alpha']}, "
        f"{config['local_epochs']} local epoch(s) per round, {len(report['rounds'])} rounds; upstream "
        f"{config['up_bits']}-bit ECQ updates (Λ {config['up_lam']}), downstream {config['down_bits']}-bit "
        f"(Λ {config['down_lam']}), both with error feedback; initial model: {config['initial_model']}. "
        "float32 FedAvg: the same loop, clients, split, seeds and rounds with float32 parameters both ways "
        "(4 bytes × values × clients per direction; round 1 sends nothing downstream when every participant "
        "builds the recipe's initial model). Plot: `bench_federated.png`.",
        "",
        "| round | NNC bytes up | NNC bytes down | NNC bytes | float32 FedAvg bytes | NNC / float32 "
        "| NNC accuracy | float32 FedAvg accuracy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r, b in zip(report["rounds"], base["rounds"], strict=True):
        nnc, f32 = r["bytes_up"] + r["bytes_down"], b["bytes_up"] + b["bytes_down"]
        lines.append(f"| {r['round']} | {r['bytes_up']} | {r['bytes_down']} | {nnc} | {f32} | "
                     f"{100 * nnc / f32:.2f} % | {r['accuracy']:.4f} | {b['accuracy']:.4f} |")
    lines.append(f"| total | {report['total_bytes_up']} | {report['total_bytes_down']} | {nnc_total} | "
                 f"{f32_total} | {100 * nnc_total / f32_total:.2f} % | | |")
    lines += [
        "",
        f"Total bytes NNC / float32 FedAvg: {nnc_total} / {f32_total} = "
        f"{100 * report['bytes_ratio_nnc_over_float32']:.2f} % (**{f32_total / nnc_total:.1f}× fewer**). "
        f"Test accuracy after round {last['round']}: NNC {last['accuracy']:.4f}, float32 FedAvg "
        f"{base_last['accuracy']:.4f}, difference {100 * report['last_round_accuracy_difference']:+.2f} "
        "percentage points.",
        "",
        f"To reach the float32 run's final accuracy − 0.5 point ({target:.4f}): " + _reach_text(report),
    ]
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def replot(out: Path) -> None:
    """Redraws ``out.png`` from the results in ``out.json`` with ``ecqx federate``'s plot."""
    from ecqx.training.federated import RoundResult, write_accuracy_bytes_plot

    report = json.loads(out.with_suffix(".json").read_text())
    runs = {label: [RoundResult(**r) for r in rounds["rounds"]]
            for label, rounds in (("NNC-coded FedAvg", report), ("float32 FedAvg", report["baseline"]))}
    config = report["config"]
    write_accuracy_bytes_plot(out.with_suffix(".png"), runs,
                              title=f"FedAvg, {config['clients']} clients, Dirichlet α = {config['alpha']}")


def _reach_text(report: dict) -> str:
    ours, theirs = report["reach_nnc"], report["reach_float32"]
    def one(label, hit):
        return f"{label} never" if hit is None else f"{label} at round {hit['round']} after {hit['bytes']} B"
    text = one("NNC-coded FedAvg", ours) + "; " + one("float32 FedAvg", theirs)
    if ours and theirs:
        text += f" — {theirs['bytes'] / ours['bytes']:.1f}× fewer bytes"
    return text + "."


if __name__ == "__main__":
    main()
