"""Cost of a CIFAR-10 training batch in the data pipeline: old per-sample path vs the batched one (CPU).

Rows, each with ``num_workers`` 0 and 2:

- **old per-sample**: the pipeline before issue 9 (reimplemented here as the baseline): the loader fetches
  each sample in Python, applies torchvision v2 ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``,
  ``ToDtype(scale)`` and ``Normalize`` under ``torch.random.fork_rng`` seeded from the sample's
  :class:`~ecqx.training.data.SeededIndex`, then torch's default collate stacks the samples;
- **new, device path**: what a fit runs: the loader gathers the uint8 batch with one indexing op and yields
  ``RawBatch(images, labels, seeds)``; ``on_after_batch_transfer`` (here on the CPU, the stand-in for the
  training device) crops, flips and normalises the whole batch. Loader and hook are timed separately;
- **new, host path**: the same batched transform run inside the loader (what validation/test loaders and a
  training loader built outside a fit do), so worker processes can take it over.

Times are the median over ``--repeats`` runs (the pipelines interleaved, so that load from other jobs hits
them alike) of the mean wall time per batch over ``--batches`` batches, after ``--warmup`` batches (so worker
start-up and the epoch's first batch are excluded; the epoch start is listed separately), for each torch
thread count in ``--threads``. The hook's time on a GPU is a handful of kernel launches; on the CPU it is an
upper bound.

Writes ``benchmarks/results/bench_data.json`` and ``.md`` (command, machine, versions, table).

    python benchmarks/bench_data.py [--root ../shared/data/cifar10-jpeg] [--batches 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torchvision
from environment import environment
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ecqx.training.data import (
    CIFAR10JPEGDataModule,
    ClassificationDataModule,
    ImageDataset,
    ResumableDataLoader,
    SeededCropFlip,
    SeededEpochSampler,
    finish_batch,
    raw_batch,
)

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "cifar10-jpeg"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class OldPerSampleDataset(Dataset):
    """The pre-issue-9 ``ImageDataset`` with the old CIFAR training transform, one sample at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels
        self.transform = v2.Compose(
            [
                v2.RandomCrop(32, padding=4),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(MEAN, STD),
            ]
        )

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(index.seed)
            return self.transform(self.images[index]), self.labels[index]


def load_images(root: Path, limit: int | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The training split of CIFAR-10 (decoded once), or synthetic images when the archive is absent."""
    if (root / CIFAR10JPEGDataModule.file_name).is_file():
        module = CIFAR10JPEGDataModule(str(root), limit=limit)
        module.setup()
        train = module.datasets["train"]
        return train.images, train.labels, f"CIFAR-10 JPEG q75 from {root} ({len(train)} training images)"
    n = limit or 45_000
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return images, labels, f"synthetic uint8 images ({n}; {root} has no CIFAR-10 archive)"


def make_loader(dataset: Dataset, batch_size: int, workers: int, collate_fn=None) -> ResumableDataLoader:
    kwargs = {} if collate_fn is None else {"collate_fn": collate_fn}
    return ResumableDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=SeededEpochSampler(len(dataset), seed=0, shuffle=True, seed_samples=True),
        num_workers=workers,
        persistent_workers=workers > 0,
        **kwargs,
    )


def time_run(loader, finish, epoch: int, batches: int, warmup: int) -> tuple[float, float, float]:
    """One epoch's first batch (ms) and the mean ms per batch of the loader and of ``finish`` (the hook)."""
    loader.sampler.set_epoch(epoch)
    start = time.perf_counter()
    iterator = iter(loader)
    finish(next(iterator))  # epoch start: sampler order and seeds, (worker start-up), first batch
    first = (time.perf_counter() - start) * 1e3
    for _ in range(warmup):
        finish(next(iterator))
    fetch = hook = 0.0
    for _ in range(batches):
        t0 = time.perf_counter()
        batch = next(iterator)
        t1 = time.perf_counter()
        x, y = finish(batch)
        t2 = time.perf_counter()
        fetch, hook = fetch + (t1 - t0), hook + (t2 - t1)
    assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) and y.dtype == torch.int64
    del iterator
    return first, fetch / batches * 1e3, hook / batches * 1e3


def summarise(runs: list[tuple[float, float, float]]) -> dict:
    """Median over runs (and the fastest run's total, the least disturbed by other jobs)."""
    first, fetch, hook = zip(*runs, strict=True)
    totals = [a + b for a, b in zip(fetch, hook, strict=True)]
    return {
        "loader_ms": round(statistics.median(fetch), 3),
        "hook_ms": round(statistics.median(hook), 3),
        "total_ms": round(statistics.median(totals), 3),
        "total_min_ms": round(min(totals), 3),
        "epoch_start_ms": round(statistics.median(first), 1),
        "runs_total_ms": [round(t, 3) for t in totals],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="folder holding cifar10_jpeg_q75.npz")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=50, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op threads")
    parser.add_argument("--limit", type=int, default=None, help="decode at most this many images per split")
    parser.add_argument("--out", default=str(RESULTS / "bench_data"), help="output stem (.json and .md)")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    images, labels, source = load_images(Path(args.root), args.limit)
    needed = (args.warmup + args.batches + 1) * args.batch_size
    if needed > len(labels):
        raise SystemExit(f"--batches/--warmup need {needed} images per epoch, the data has {len(labels)}.")
    transform = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    new = ImageDataset(images, labels, transform, SeededCropFlip(padding=4))
    old = OldPerSampleDataset(images, labels)

    holder = ClassificationDataModule()  # the data modules' on_after_batch_transfer, over `new`
    holder.datasets["train"] = new

    def hook(batch):  # on the CPU here; on the training device in a fit
        return holder.on_after_batch_transfer(batch, 0)

    def done(batch):  # the loader already yields [x, y]
        return batch

    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for workers in args.workers:
            pipelines = {
                "old per-sample": (make_loader(old, args.batch_size, workers), done),
                "new, device path (loader + hook)": (
                    make_loader(new, args.batch_size, workers, raw_batch),
                    hook,
                ),
                "new, host path (transform in loader)": (
                    make_loader(new, args.batch_size, workers, finish_batch),
                    done,
                ),
            }
            runs = {name: [] for name in pipelines}
            for repeat in range(args.repeats):  # interleaved, so load from other jobs hits all alike
                for name, (loader, finish) in pipelines.items():
                    runs[name].append(time_run(loader, finish, repeat, args.batches, args.warmup))
            for name, timings in runs.items():
                row = {"pipeline": name, "torch_threads": threads, "num_workers": workers}
                results.append(row | summarise(timings))
                print(results[-1], flush=True)
            del pipelines

    env = environment(args.threads, lightning=pl.__version__, torchvision=torchvision.__version__)
    env.update(batch_size=args.batch_size, batches=args.batches, warmup=args.warmup, repeats=args.repeats)
    env["data"] = source
    env["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # at start, at end
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    report = {"environment": env, "results": results}
    write_atomically(stem.with_suffix(".json"), json.dumps(report, indent=2))
    write_atomically(stem.with_suffix(".md"), markdown(env, results))


def markdown(env: dict, results: list[dict]) -> str:
    base = {
        (r["torch_threads"], r["num_workers"]): r["total_ms"]
        for r in results
        if r["pipeline"] == "old per-sample"
    }
    lines = [
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}, {env['cpu_count']} CPUs (shared with other jobs), torch threads per row "
        f"{env['torch_threads']}; Python {env['python']}, torch {env['torch']}, torchvision "
        f"{env['torchvision']}, Lightning {env['lightning']}; {env['date_utc']} UTC  ",
        f"Data: {env['data']}  ",
        "Load average (1 min) at start and end: {}, {}".format(*env["load_average_1min"]),
        "",
        f"Wall time per training batch of {env['batch_size']} on the CPU: median over {env['repeats']} "
        f"interleaved runs of the mean over {env['batches']} batches (after {env['warmup']} warm-up "
        "batches); 'total' is the median of the runs' totals (so loader + hook need not add up exactly), "
        "'fastest' the fastest run's total (least disturbed by other jobs). 'hook' is "
        "`on_after_batch_transfer` (crop, flip, scale, normalise of the whole batch), run here on the CPU; "
        "on a GPU it runs there instead. "
        "'epoch start' is the first batch of an epoch (sampler order, worker start-up).",
        "",
        "With a load average above the CPU count, rows with more than one torch thread swing widely: the "
        "batched ops (128×3×32×32 elements, above torch's parallel grain size) split across both intra-op "
        "threads and wait whenever the other thread is descheduled, while the old per-sample ops (3 k "
        "elements) never go parallel. Compare the 'fastest' column there, or the 1-thread rows.",
        "",
        "| pipeline | threads | workers | loader | hook | total | fastest | vs old | epoch start |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        speedup = base.get((r["torch_threads"], r["num_workers"]), float("nan")) / r["total_ms"]
        lines.append(
            f"| {r['pipeline']} | {r['torch_threads']} | {r['num_workers']} | {r['loader_ms']:.2f} ms | "
            f"{r['hook_ms']:.2f} ms | {r['total_ms']:.2f} ms | {r['total_min_ms']:.2f} ms | {speedup:.1f}× | "
            f"{r['epoch_start_ms']:.0f} ms |"
        )
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


if __name__ == "__main__":
    main()
