"""Assignment throughput of ECQ/ECQx and its per-step overhead in ResNet-20 training (CPU).

Measures
* throughput (weights/s) of one entropy-constrained re-assignment, ECQ and ECQx (relevance given), for all 20
  quantized tensors of ResNet-20 and for one 10-million-weight linear layer;
* the time of a plain forward+backward step of ResNet-20 at batch 64 and the time the re-assignment of all its
  quantized tensors adds to that step (target: under 30 %); the LRP relevance pass of ECQx is reported too.

Writes ``benchmarks/results/bench_assign_t<threads>.json`` and ``.md`` (command, machine, versions, table).

    python benchmarks/bench_assign.py [--threads 2] [--repeats 5] [--big 10000000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from environment import environment
from torch import nn

from ecqx.assign import assign
from ecqx.entropy import size_decay
from ecqx.grid import uniform_grid
from ecqx.relevance import weight_relevances
from ecqx.targets import select_targets
from ecqx.training.models import resnet20

RESULTS = Path(__file__).resolve().parent / "results"


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _layer_setup(named_weights: dict[str, torch.Tensor], relevances: dict[str, torch.Tensor] | None):
    n_max = max(w.numel() for w in named_weights.values())
    return [(w, uniform_grid(w, 4), size_decay(w.numel(), n_max), relevances[n] if relevances else None)
            for n, w in named_weights.items()]


def _reassign_all(layers, use_relevance: bool) -> None:
    for weight, grid, decay, relevance in layers:
        assign(weight, grid, 0.05, decay, relevance=relevance if use_relevance else None)


def _training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    loss_fn = nn.CrossEntropyLoss()

    def step():
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()

    return step


def _interleaved(step, extra, repeats: int) -> tuple[float, float, float]:
    """Median step time, extra time and per-pair ratio, measured alternately (robust to load)."""
    step()
    extra()
    steps, extras = [], []
    for _ in range(repeats):
        for fn, times in ((step, steps), (extra, extras)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    ratios = [e / s for s, e in zip(steps, extras, strict=True)]
    return statistics.median(steps), statistics.median(extras), statistics.median(ratios)


def _heavy_tailed_relevance(shape, generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator) ** 8


def run(threads: int, repeats: int, big: int) -> dict:
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    model = resnet20().train()
    x = torch.randn(64, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (64,), generator=generator)
    names = select_targets(model)
    weights = {n: model.get_parameter(n).detach() for n in names}
    n_weights = sum(w.numel() for w in weights.values())
    relevances = {n: _heavy_tailed_relevance(w.shape, generator) for n, w in weights.items()}
    layers = _layer_setup(weights, relevances)

    train_step = _training_step(model, x, y)
    step, ecq, ecq_ratio = _interleaved(train_step, lambda: _reassign_all(layers, False), repeats)
    _, ecqx_time, ecqx_ratio = _interleaved(train_step, lambda: _reassign_all(layers, True), repeats)
    _, lrp, lrp_ratio = _interleaved(train_step, lambda: weight_relevances(model, x, y), max(1, repeats // 2))

    big_weight = torch.randn(big // 1000, 1000, generator=generator) * 0.02
    big_relevance = _heavy_tailed_relevance(big_weight.shape, generator)
    big_layers = _layer_setup({"big": big_weight}, {"big": big_relevance})
    big_repeats = max(1, repeats // 2)
    big_ecq = _median_time(lambda: _reassign_all(big_layers, False), big_repeats)
    big_ecqx = _median_time(lambda: _reassign_all(big_layers, True), big_repeats)
    return {
        "resnet20_weights": n_weights,
        "resnet20_step_s": step,
        "resnet20_ecq_reassign_s": ecq,
        "resnet20_ecqx_reassign_s": ecqx_time,
        "resnet20_lrp_relevance_s": lrp,
        "resnet20_ecq_weights_per_s": n_weights / ecq,
        "resnet20_ecqx_weights_per_s": n_weights / ecqx_time,
        "resnet20_ecq_overhead": ecq_ratio,
        "resnet20_ecqx_overhead": ecqx_ratio,
        "resnet20_lrp_overhead": lrp_ratio,
        "big_linear_weights": big_weight.numel(),
        "big_linear_ecq_s": big_ecq,
        "big_linear_ecqx_s": big_ecqx,
        "big_linear_ecq_weights_per_s": big_weight.numel() / big_ecq,
        "big_linear_ecqx_weights_per_s": big_weight.numel() / big_ecqx,
    }


def markdown(env: dict, r: dict) -> str:
    ecq_note = (f"{r['resnet20_ecq_weights_per_s'] / 1e6:.1f} M weights/s, "
                f"+{r['resnet20_ecq_overhead']:.0%} of a step")
    ecqx_note = (f"{r['resnet20_ecqx_weights_per_s'] / 1e6:.1f} M weights/s, "
                 f"+{r['resnet20_ecqx_overhead']:.0%} of a step")
    big = f"linear {r['big_linear_weights'] / 1e6:.0f} M weights"
    rows = [
        ("ResNet-20 fwd+bwd step, batch 64", f"{r['resnet20_step_s'] * 1e3:.1f} ms", "—"),
        ("ResNet-20 ECQ re-assignment (all 20 tensors)", f"{r['resnet20_ecq_reassign_s'] * 1e3:.1f} ms",
         ecq_note),
        ("ResNet-20 ECQx re-assignment (relevance given)", f"{r['resnet20_ecqx_reassign_s'] * 1e3:.1f} ms",
         ecqx_note),
        ("ResNet-20 LRP weight relevances (zennit, batch 64)",
         f"{r['resnet20_lrp_relevance_s'] * 1e3:.1f} ms",
         f"+{r['resnet20_lrp_overhead']:.0%} of a step per relevance refresh (ECQx only)"),
        (f"{big}, ECQ", f"{r['big_linear_ecq_s'] * 1e3:.0f} ms",
         f"{r['big_linear_ecq_weights_per_s'] / 1e6:.1f} M weights/s"),
        (f"{big}, ECQx", f"{r['big_linear_ecqx_s'] * 1e3:.0f} ms",
         f"{r['big_linear_ecqx_weights_per_s'] / 1e6:.1f} M weights/s"),
    ]
    lines = [
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}, {env['cpu_count']} CPUs, torch threads {env['torch_threads']}; "
        f"Python {env['python']}, torch {env['torch']}; {env['date_utc']} UTC",
        "",
        "Overheads are medians of (extra time / step time) over alternately measured pairs.",
        "",
        "| measurement | median time | throughput / overhead |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--big", type=int, default=10_000_000, help="weights of the large linear layer")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    env = environment(args.threads)
    results = run(args.threads, args.repeats, args.big)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench_assign_t{args.threads}"
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "results": results}, indent=2))
    table = markdown(env, results)
    stem.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
