"""Per-step cost of quantization-aware training: plain vs ECQ / ECQx / EC2T in a Lightning training loop.

For every model and method: wall ms per steady-state step and × plain, top-level aten ops per step and
× plain, host synchronisations per step, aten ops at all depths, the bytes the callback holds per quantized
weight (its ``state_dict()`` and all its tensor storages) and on CUDA kernel launches, CUDA synchronising
calls and peak memory; measured by :func:`step_profile.measure_steps` (definitions in
``benchmarks/step_profile.py``).

Models:

* ``resnet20``: CIFAR ResNet-20 (3×32×32 inputs, 10 classes), SGD lr 0.1 momentum 0.9, batch 128;
* ``linear25m``: a transformer-shaped stack of ``nn.Linear`` layers, d = 512, 8 blocks, each with four d×d
  projections (q, k, v branches merged by an add, output projection o) and a d×4d / 4d×d ReLU MLP, residual
  adds, a linear 10-class head (25.2 M parameters, 49 quantized weight tensors); tokens are a batch of
  d-vectors; SGD lr 0.001 momentum 0.9 (0.01 diverges within 10 steps), batch 256. Only Linear/ReLU/adds
  (zennit ``Sum``), so the zennit LRP rules of ECQx apply.

Methods: ``plain``, ``ecq`` (4 bit, Λ 0.05), ``ecqx`` (4 bit, Λ 0.05, relevances every 10 steps; measure a
multiple of 10 steps so the average holds the right share of relevance passes), ``ec2t`` (Λ 0.15); all start
at epoch 0, so the warm-up steps absorb their setup.

Writes ``<out>_<device>.json`` and ``.md`` (default ``benchmarks/results/bench_step_cpu.*``).

    python benchmarks/bench_step.py [--device cpu|cuda] [--limit] [--steps 20] [--warmup 3]
        [--models resnet20 linear25m] [--methods plain ecq ecqx ec2t] [--batch resnet20=16] [--threads 2]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from environment import environment
from step_profile import measure_steps, ratio, synthetic_batches
from torch import nn
from zennit.layer import Sum

from ecqx.callbacks import EC2T, ECQ, ECQx
from ecqx.training.models import resnet20
from ecqx.training.module import ClassificationModule

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("plain", "ecq", "ecqx", "ec2t")
RELEVANCE_EVERY = 10


class LinearBlock(nn.Module):
    """q/k/v projections merged by an add, output projection, residual add; ReLU MLP d→4d→d, residual add.

    The adds are zennit ``Sum`` layers (sum over a stacked last axis), so the LRP composite of ECQx
    redistributes relevance over the summands (Norm rule) instead of copying it into every branch, which
    multiplies it by the branching factor at every block (infinite relevances after 8 blocks)."""

    def __init__(self, d: int):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.act_q, self.act_k, self.act_mlp = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.merge, self.residual1, self.residual2 = Sum(), Sum(), Sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.merge(torch.stack([self.act_q(self.q(x)), self.act_k(self.k(x)), self.v(x)], dim=-1))
        h = self.residual1(torch.stack([x, self.o(a)], dim=-1))
        return self.residual2(torch.stack([h, self.fc2(self.act_mlp(self.fc1(h)))], dim=-1))


class LinearStack(nn.Module):
    def __init__(self, d: int = 512, blocks: int = 8, num_classes: int = 10):
        super().__init__()
        self.blocks = nn.Sequential(*(LinearBlock(d) for _ in range(blocks)))
        self.head = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


# name: (network factory, input shape, classes, SGD lr, full batch, --limit batch)
MODELS = {
    "resnet20": (lambda: resnet20(num_classes=10), (3, 32, 32), 10, 0.1, 128, 16),
    "linear25m": (lambda: LinearStack(512, 8, 10), (512,), 10, 0.001, 256, 16),
}


def make_callbacks(method: str, created: list) -> list[pl.Callback]:
    if method == "plain":
        return []
    callback = {
        "ecq": lambda: ECQ(bits=4, lam=0.05, start_epoch=0),
        "ecqx": lambda: ECQx(bits=4, lam=0.05, start_epoch=0, relevance_every_n_steps=RELEVANCE_EVERY),
        "ec2t": lambda: EC2T(lam=0.15, start_epoch=0),
    }[method]()
    created.append(callback)
    return [callback]


def module_factory(model: str):
    network, _, classes, lr, _, _ = MODELS[model]

    def make():
        return ClassificationModule(network(), num_classes=classes,
                                    optimizer=functools.partial(torch.optim.SGD, lr=lr, momentum=0.9))

    return make


def _relevance_check(callback) -> str:
    """ECQx: how many quantized tensors hold a finite running relevance at the end of the run."""
    relevances = getattr(callback, "relevances", {})
    finite = sum(bool(torch.isfinite(r).all()) for r in relevances.values())
    return f"{finite}/{len(getattr(callback, 'targets', relevances))} tensors with finite relevances"


def run_model(model: str, methods, batch: int, warmup: int, measured: int, device: str,
              same_fit: bool = False, repeats: int = 1) -> dict:
    _, shape, classes, _, _, _ = MODELS[model]
    batches = synthetic_batches(batch, shape, classes, device)
    params = sum(p.numel() for p in MODELS[model][0]().parameters())
    rows = {}
    for method in methods:
        if method == "ecqx" and measured % RELEVANCE_EVERY:
            print(f"warning: {model}/ecqx measured {measured} steps, not a multiple of {RELEVANCE_EVERY}",
                  file=sys.stderr)
        created: list = []
        start = time.perf_counter()
        profile = measure_steps(module_factory(model), lambda m=method, c=created: make_callbacks(m, c),
                                batches, warmup=warmup, measured=measured, device=device, same_fit=same_fit,
                                repeats=repeats)
        row = profile.as_dict()
        row["run_seconds"] = time.perf_counter() - start
        if method == "ecqx" and created:
            row["relevance_check"] = _relevance_check(created[-1])
        rows[method] = row
        print(f"{model:10s} {method:6s} {row['ms_per_step']:9.1f} ms/step  {row['top_level_ops']:8.1f} ops  "
              f"{row['syncs']:6.1f} syncs  ({row['run_seconds']:.0f} s)", flush=True)
    plain = rows.get("plain")
    for row in rows.values():
        row["x_plain_time"] = ratio(row["ms_per_step"], plain and plain["ms_per_step"])
        row["x_plain_ops"] = ratio(row["top_level_ops"], plain and plain["top_level_ops"])
        row["extra_ops"] = row["top_level_ops"] - plain["top_level_ops"] if plain else math.nan
        row["extra_syncs"] = row["syncs"] - plain["syncs"] if plain else math.nan
        if plain and row.get("cuda_peak_bytes") is not None and plain.get("cuda_peak_bytes") is not None:
            row["cuda_peak_extra_bytes"] = row["cuda_peak_bytes"] - plain["cuda_peak_bytes"]
    return {"parameters": params, "batch_size": batch, "warmup": warmup, "measured": measured,
            "timed_under_profiler": same_fit, "timing_repeats": 1 if same_fit else repeats, "methods": rows}


def _f(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, fmt)


def markdown(env: dict, device: str, results: dict) -> str:
    lines = [
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}, {env['cpu_count']} CPUs, torch threads {env['torch_threads']}; "
        f"Python {env['python']}, torch {env['torch']}, Lightning {env['lightning']}, ecqx {env['ecqx']}, "
        f"commit {env['commit']}; device {device}; {env['date_utc']} UTC"
        + ("  " if env.get("label") else ""),
        *([f"Code: {env['label']}"] if env.get("label") else []),
        *([f"Assignment path: `{env['assignment_path']}` (ecqx.grouped.PATH)  "]
          if env.get("assignment_path") else []),
        "",
        "Steady state after the warm-up steps (the callbacks start at epoch 0; the warm-up absorbs their",
        "setup). ms/step: one fit without profiler. ops: top-level `aten::*` events per step (a",
        "`_foreach_*` call counts once); syncs: host synchronisations per step (`_local_scalar_dense` =",
        "`.item()`/`bool()`/`float()`, `nonzero`, `masked_select`, `unique`, `bincount`, `equal`,",
        "tensor-repeats `repeat_interleave`), from a second fit under `torch.profiler`; all ops: aten events",
        "at every depth. B/w: bytes the callback holds per quantized weight (all its tensor storages / its",
        "`state_dict()` tensors). Definitions: `benchmarks/step_profile.py`.",
        "",
    ]
    cuda = device.startswith("cuda")
    for model, r in results.items():
        lines += [
            f"### {model}: {r['parameters'] / 1e6:.2f} M parameters, batch {r['batch_size']}, "
            f"{r['measured']} measured steps after {r['warmup']}"
            + (f", ms/step = median of {r['timing_repeats']} timed fits" if r.get("timing_repeats", 1) > 1
               else "")
            + (" (ms/step timed in the profiled fit: includes profiler overhead)"
               if r.get("timed_under_profiler") else ""),
            "",
            "| method | ms/step | × plain | ops/step | × plain ops | syncs/step | all-depth ops/step | "
            "quantized tensors | B/w held / state_dict |" + (" launches/step | CUDA syncs/step | "
                                                                "peak extra MiB |" if cuda else ""),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if cuda else ""),
        ]
        for method, row in r["methods"].items():
            line = (
                f"| {method} | {_f(row['ms_per_step'], '.1f')} | {_f(row['x_plain_time'], '.2f')} | "
                f"{_f(row['top_level_ops'], '.1f')} | {_f(row['x_plain_ops'], '.2f')} | "
                f"{_f(row['syncs'], '.1f')} | {_f(row['all_ops'], '.1f')} | {row['quantized_tensors']} | "
                f"{_f(row['held_bytes_per_weight'], '.2f')} / "
                f"{_f(row['state_dict_bytes_per_weight'], '.2f')} |"
            )
            if cuda:
                peak = row.get("cuda_peak_extra_bytes")
                line += (f" {_f(row['kernel_launches'] or row.get('gpu_kernels'), '.1f')} | "
                         f"{_f(sum((row['cuda_sync_calls'] or {}).values()), '.1f')} | "
                         f"{_f(None if peak is None else peak / 2**20, '.1f')} |")
            lines.append(line)
        lines.append("")
        by_op = {method: ", ".join(f"{k.removeprefix('aten::')} {v:g}" for k, v in row["sync_ops"].items())
                 for method, row in r["methods"].items()}
        lines.append("Host syncs per step by op: "
                     + "; ".join(f"{method}: {ops or 'none'}" for method, ops in by_op.items()))
        for method, row in r["methods"].items():
            if "relevance_check" in row:
                lines.append(f"ECQx relevance check ({method}): {row['relevance_check']}.")
        lines.append("")
    return "\n".join(lines)


def _per_model(values: list[str] | None, default, cast=int) -> dict:
    """``["20"]``: the value for every model; ``["resnet20=16"]``: per model; missing: ``default(model)``."""
    out = {}
    for item in values or []:
        if "=" in item:
            key, value = item.split("=", 1)
            if key not in MODELS:
                raise SystemExit(f"unknown model {key!r} in {item!r}")
            out[key] = cast(value)
        else:
            out.update({m: cast(item) for m in MODELS if m not in out})
    return {m: out.get(m, default(m)) for m in MODELS}


def _commit() -> str:
    """Commit of the ecqx code that runs (``+dirty`` with uncommitted changes to tracked files)."""
    import subprocess

    import ecqx

    where = Path(ecqx.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=where, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=where, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return f"not a git checkout ({where})"


def _select_path(path: str) -> None:
    """Which assignment implementation the callbacks run; "grouped" also runs every β trial, as on a GPU."""
    import ecqx.grouped

    ecqx.grouped.PATH = path
    if path == "grouped":
        ecqx.grouped.STOP_WHEN_DONE_ON_CPU = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--limit", action="store_true",
                        help="quick check: 10 measured steps after 2, batch 16 (unless given)")
    parser.add_argument("--steps", nargs="+", help="measured steps: N or MODEL=N (default 20; --limit 10)")
    parser.add_argument("--warmup", nargs="+", help="warm-up steps: N or MODEL=N (default 3; --limit 2)")
    parser.add_argument("--batch", nargs="+", help="batch size: N or MODEL=N (default: 128 resnet20, "
                                                   "256 linear25m; --limit 16)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--same-fit", nargs="*", default=[], choices=list(MODELS), metavar="MODEL",
                        help="models timed in the profiled fit (one fit per method, not two; slow runs)")
    parser.add_argument("--repeats", nargs="+", help="timed fits per configuration, median: N or MODEL=N "
                                                     "(default 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--label", default="", help="free text recorded with the run (e.g. which code)")
    parser.add_argument("--path", choices=["auto", "grouped", "per_tensor"], default="auto",
                        help="ecqx.grouped.PATH: the assignment implementation (auto: per tensor on the CPU, "
                             "grouped on accelerators; grouped on the CPU is the accelerator's step)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_step",
                        help="output prefix; writes <out>_<device>.json and .md")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    if "plain" not in args.methods:
        args.methods = ["plain", *args.methods]
    torch.set_num_threads(args.threads)
    _select_path(args.path)
    steps = _per_model(args.steps, lambda m: 10 if args.limit else 20)
    warmup = _per_model(args.warmup, lambda m: 2 if args.limit else 3)
    batch = _per_model(args.batch, lambda m: MODELS[m][5] if args.limit else MODELS[m][4])
    repeats = _per_model(args.repeats, lambda m: 1)
    env = environment(args.threads, lightning=pl.__version__, commit=_commit())
    env["label"] = args.label
    env["assignment_path"] = args.path
    env["device_name"] = (torch.cuda.get_device_name(torch.device(args.device))
                          if args.device.startswith("cuda") else env["machine"])
    results = {m: run_model(m, args.methods, batch[m], warmup[m], steps[m], args.device, m in args.same_fit,
                            repeats[m])
               for m in args.models}
    stem = Path(f"{args.out}_{args.device.replace(':', '')}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "results": results}, indent=2))
    table = markdown(env, args.device, results)
    stem.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
