"""Federated averaging on MNIST / LeNet-5: bytes per round with NNC-coded updates vs float32 FedAvg.

Runs ``ecqx federate`` with ``recipes/federated_mnist_lenet5.yaml`` (10 clients, Dirichlet α = 0.5, one local
epoch, 4-bit ECQ updates upstream, base model then 6-bit updates downstream) for ``--rounds`` rounds on the
shared MNIST copy and writes ``benchmarks/results/bench_federated.json`` and ``.md``: per round the bytes sent
upstream (all clients), downstream (stream × clients), what float32 FedAvg sends (the model in float32 to and
from every client) and the server-side test accuracy of the aggregate; plus totals.

    python benchmarks/bench_federated.py [--rounds 3] [--data /work/shared/data/mnist]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from ecqx.training.federated import federate

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "federated_mnist_lenet5.yaml"
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", default=os.environ.get("ECQX_SHARED", "/work/shared") + "/data/mnist")
    parser.add_argument("--out", default=str(RESULTS / "bench_federated"))
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "r.json"
        federate(["--config", str(RECIPE), "--results", str(raw), "--federated.rounds", str(args.rounds),
                  "--data.init_args.root", args.data])
        report = json.loads(raw.read_text())
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["recipe"] = str(RECIPE.relative_to(ROOT))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Federated MNIST / LeNet-5: NNC-coded FedAvg vs float32 FedAvg",
        "",
        f"`{report['recipe']}`, {report['config']['clients']} clients, Dirichlet α = "
        f"{report['config']['alpha']}, {report['config']['local_epochs']} local epoch(s) per round, "
        f"upstream {report['config']['up_bits']}-bit ECQ (Λ {report['config']['up_lam']}), downstream "
        f"{report['config']['down_bits']}-bit; {report['seconds']} s on this machine's CPUs.",
        "",
        "| round | bytes up | bytes down | float32 FedAvg bytes | NNC / float32 | test accuracy |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rounds"]:
        nnc = r["bytes_up"] + r["bytes_down"]
        lines.append(f"| {r['round']} | {r['bytes_up']} | {r['bytes_down']} | {r['float32_bytes']} | "
                     f"{100 * nnc / r['float32_bytes']:.2f} % | {r['accuracy']:.4f} |")
    total = report["total_bytes_up"] + report["total_bytes_down"]
    lines.append(f"| total | {report['total_bytes_up']} | {report['total_bytes_down']} | "
                 f"{report['total_float32_bytes']} | {100 * total / report['total_float32_bytes']:.2f} % | |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
