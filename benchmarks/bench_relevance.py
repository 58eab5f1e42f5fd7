"""Cost of ECQx's relevance refresh per training step, by ``relevance_every_n_steps`` (CPU, Lightning).

Trains with the real callbacks in a Lightning ``Trainer`` (``max_steps``, no validation, no export) and times
every training batch from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward, optimizer
step, callback work). Models: the embedded default of ``ecqx fit`` (sklearn digits, MLP 64-128-64-10, batch
64, Adam 3e-3) and LeNet-5 on MNIST (batch 128, as ``recipes/mnist_lenet5_ecqx4.yaml``). Rows: ECQ, and ECQx
refreshing the LRP relevances every n optimizer steps (and at the first step of every epoch, when the running
relevance restarts). The cost of one refresh is about (ECQx n=1 − ECQx n=20) per step.

Writes ``benchmarks/results/bench_relevance_t<threads>.json`` and ``.md`` (command, machine, versions, table).

    python benchmarks/bench_relevance.py [--threads 1] [--batches 60] [--mnist-root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from environment import environment
from pytorch_lightning.callbacks import Callback

from ecqx.callbacks import ECQ, ECQx
from ecqx.training.data import DigitsDataModule, MNISTDataModule
from ecqx.training.models import lenet5, mlp
from ecqx.training.module import ClassificationModule

RESULTS = Path(__file__).resolve().parent / "results"
REFRESH_EVERY = (1, 2, 5, 10, 20)
WARMUP_BATCHES = 5


class BatchTimer(Callback):
    """Wall time of every training batch (hooks run around forward, backward, step and the callbacks)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)


def _setups(mnist_root: str) -> dict:
    return {
        "digits MLP (ecqx fit default)": (
            lambda: ClassificationModule(
                mlp(64, [128, 64], 10),
                num_classes=10,
                optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
            ),
            lambda: DigitsDataModule(batch_size=64),
        ),
        "LeNet-5 MNIST": (
            lambda: ClassificationModule(lenet5(), num_classes=10),
            lambda: MNISTDataModule(mnist_root, batch_size=128, limit=12_800),
        ),
    }


def time_per_step(make_module, make_data, quantizer, batches: int) -> float:
    """Mean seconds per training batch after the warm-up batches (a refresh every n steps is amortised)."""
    pl.seed_everything(0, verbose=False)
    timer = BatchTimer()
    trainer = pl.Trainer(
        max_steps=batches + WARMUP_BATCHES,  # several epochs for digits (21 batches each)
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[quantizer, timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(make_module(), datamodule=make_data())
    measured = timer.times[WARMUP_BATCHES:]
    return sum(measured) / len(measured)


def run(batches: int, mnist_root: str) -> dict:
    results = {}
    for name, (make_module, make_data) in _setups(mnist_root).items():
        rows = {"ECQ": time_per_step(make_module, make_data, ECQ(bits=4, lam=0.15), batches)}
        for every in REFRESH_EVERY:
            quantizer = ECQx(bits=4, lam=0.15, relevance_every_n_steps=every)
            rows[f"ECQx n={every}"] = time_per_step(make_module, make_data, quantizer, batches)
        refresh = (rows["ECQx n=1"] - rows["ECQx n=20"]) / (1 - 1 / 20)
        results[name] = {"step_s": rows, "refresh_s": refresh, "refresh_in_ecq_steps": refresh / rows["ECQ"]}
    return results


def markdown(env: dict, results: dict, batches: int) -> str:
    lines = [
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}, {env['cpu_count']} CPUs (shared with other jobs), torch threads "
        f"{env['torch_threads']}; Python {env['python']}, torch {env['torch']}, Lightning "
        f"{env['pytorch_lightning']}; {env['date_utc']} UTC",
        "",
        f"Mean wall time per training batch over {batches} batches (after {WARMUP_BATCHES} warm-up batches), "
        "Lightning loop included; relative to ECQ in brackets.",
        "",
        "| model | ECQ | " + " | ".join(f"ECQx n={n}" for n in REFRESH_EVERY) + " | one refresh |",
        "|---|---|" + "---|" * len(REFRESH_EVERY) + "---|",
    ]
    for name, r in results.items():
        ecq = r["step_s"]["ECQ"]
        cells = [f"{ecq * 1e3:.1f} ms"]
        cells += [
            f"{r['step_s'][f'ECQx n={n}'] * 1e3:.1f} ms ({r['step_s'][f'ECQx n={n}'] / ecq:.2f}×)"
            for n in REFRESH_EVERY
        ]
        cells.append(f"{r['refresh_s'] * 1e3:.1f} ms = {r['refresh_in_ecq_steps']:.1f} ECQ steps")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=60, help="timed batches per configuration")
    default_root = os.path.join(os.environ.get("ECQX_SHARED", "../shared"), "data", "mnist")
    parser.add_argument("--mnist-root", default=default_root)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = environment(args.threads, pytorch_lightning=pl.__version__)
    results = run(args.batches, args.mnist_root)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench_relevance_t{args.threads}"
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "results": results}, indent=2))
    table = markdown(env, results, args.batches)
    stem.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
