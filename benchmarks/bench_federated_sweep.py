"""Federated MNIST / LeNet-5: how the update coding settings trade bytes for accuracy (the recipe's tuning).

Runs ``recipes/federated_mnist_lenet5.yaml`` (10 clients, Dirichlet α = 0.5, ``--rounds`` rounds, in-process
engine: identical numbers to Flower's simulation engine, without ray's start-up) once per setting below —
each a set of recipe overrides — and the float32 FedAvg run of every distinct optimizer / local-epoch
combination, then tabulates total bytes (up + down, all clients), the ratio to the matching float32 run,
the final test accuracy and its difference to that float32 run, and whether the issue's goal (≥ 100× fewer
bytes at ≤ 0.5 point accuracy loss) is met. Writes ``benchmarks/results/bench_federated_sweep.json``/``.md``.

    python benchmarks/bench_federated_sweep.py [--rounds 20] [--jobs 2] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "federated_mnist_lenet5.yaml"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))

ADAM = '{"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001}}'
RECIPE_BASE = "float32 SGD, 2 epochs (recipe)"
# name -> recipe overrides of a float32 FedAvg run
BASELINES = {
    RECIPE_BASE: [],
    "float32 SGD, 1 epoch": ["--federated.local_epochs", "1"],
    "float32 Adam, 2 epochs": ["--model.init_args.optimizer", ADAM],
}
OLD_CODING = ["--federated.up_bits", "4", "--federated.up_lam", "0.05", "--federated.down_bits", "6",
              "--federated.down_lam", "0", "--federated.nonweight_bits", "8",
              "--federated.percentile", "99.9", "--federated.size_decay", "true"]
# name -> (recipe overrides, the float32 run it is compared with)
SETTINGS = {
    "recipe": ([], RECIPE_BASE),
    "4-bit up, 6-bit down, 8-bit biases, P99.9 step, size decay": (OLD_CODING, RECIPE_BASE),
    "recipe coding, Adam": (["--model.init_args.optimizer", ADAM], "float32 Adam, 2 epochs"),
    "size decay of Λ (ECQ's layer rule)": (["--federated.size_decay", "true"], RECIPE_BASE),
    "step from P99.9 (not P97)": (["--federated.percentile", "99.9"], RECIPE_BASE),
    "8-bit bias updates (not 3)": (["--federated.nonweight_bits", "8"], RECIPE_BASE),
    "Λ up 0.4, down 0.25": (["--federated.up_lam", "0.4", "--federated.down_lam", "0.25"], RECIPE_BASE),
    "Λ up 0.6, down 0.35": (["--federated.up_lam", "0.6", "--federated.down_lam", "0.35"], RECIPE_BASE),
    "1 local epoch": (["--federated.local_epochs", "1"], "float32 SGD, 1 epoch"),
}


def run(overrides: list[str], rounds: int, data: str, float32: bool) -> dict:
    """One run of the recipe with ``overrides`` (parsed and seeded as ``ecqx federate`` does)."""
    import logging

    import pytorch_lightning as pl
    import torch

    from ecqx.training import federated

    torch.set_num_threads(1)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    argv = ["--config", str(RECIPE), "--data.init_args.root", data, "--federated.rounds", str(rounds),
            "--federated.engine", "inprocess", *overrides]
    parser = federated._parser()  # the parser of `ecqx federate` (recipe + overrides)
    cfg = parser.parse_args(argv)
    pl.seed_everything(cfg.federated.seed, workers=True, verbose=False)
    init = parser.instantiate_classes(cfg)
    start = time.perf_counter()
    results = federated.run_federated(init.model, init.data, init.federated, float32=float32)
    return {"overrides": overrides, "config": federated.asdict(init.federated),
            "seconds": round(time.perf_counter() - start, 1),
            "rounds": [federated.asdict(r) for r in results],
            "total_bytes": sum(r.bytes_up + r.bytes_down for r in results),
            "final_accuracy": results[-1].accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--data", default=os.environ.get("ECQX_SHARED", "/work/shared") + "/data/mnist")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="names of SETTINGS to run (default: all)")
    parser.add_argument("--out", default=str(RESULTS / "bench_federated_sweep"))
    args = parser.parse_args()
    settings = {k: v for k, v in SETTINGS.items() if args.only is None or k in args.only}
    needed = {base for _, base in settings.values()}
    jobs = {name: (BASELINES[name], True) for name in needed}
    jobs |= {name: (overrides, False) for name, (overrides, _) in settings.items()}
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {name: pool.submit(run, overrides, args.rounds, args.data, float32)
                   for name, (overrides, float32) in jobs.items()}
        done = {name: future.result() for name, future in futures.items()}
    from environment import environment

    report = {"environment": environment(1), "recipe": str(RECIPE.relative_to(ROOT)), "rounds": args.rounds,
              "seconds": round(time.perf_counter() - start, 1), "baselines": {}, "settings": {}}
    for name in needed:
        report["baselines"][name] = done[name]
    lines = ["# Federated MNIST / LeNet-5: update coding settings, bytes and accuracy", "",
             f"Command: `{report['environment']['command']}` ({report['environment']['date_utc']} UTC, "
             f"{report['environment']['cpu_count']} CPUs, torch {report['environment']['torch']}); "
             f"`{report['recipe']}` with the overrides below, {args.rounds} rounds, 10 clients, one seed "
             "(0). "
             "Ratio: total bytes (up + down, all clients) of the matching float32 FedAvg run / this run's; Δ "
             "accuracy: final test accuracy minus that run's. Goal of the issue: ratio ≥ 100 at Δ ≥ −0.5 "
             "point.", "",
             "| setting | overrides | float32 run (final accuracy) | total bytes | ratio | final accuracy "
             "| Δ accuracy | goal |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for name, (overrides, base_name) in settings.items():
        row, base = done[name], done[base_name]
        ratio = base["total_bytes"] / row["total_bytes"]
        delta = 100 * (row["final_accuracy"] - base["final_accuracy"])
        met = ratio >= 100 and delta >= -0.5
        report["settings"][name] = row | {"baseline": base_name, "ratio": ratio,
                                          "accuracy_delta_points": delta, "goal_met": met}
        shown = " ".join("torch.optim.Adam(lr=0.001)" if o == ADAM else o for o in overrides) or "(recipe)"
        lines.append(f"| {name} | `{shown}` | {base_name} ({base['final_accuracy']:.4f}) | "
                     f"{row['total_bytes']} | {ratio:.1f}× | {row['final_accuracy']:.4f} | {delta:+.2f} | "
                     f"{'met' if met else 'not met'} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
