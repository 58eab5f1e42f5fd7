"""The runs behind README.md's "Measured" table (``ecqx fit`` and ``ecqx compress`` rows) and the fidelity
figures of callbacks/README.md's relevance-refresh paragraph.

Subcommands (each writes ``benchmarks/results/readme_<name>.json`` and ``.md`` with the command, machine,
versions and the code state it measured):

* ``fit``: the default ``ecqx fit`` exactly as a user types it (embedded digits recipe, nothing overridden),
  run through ``ecqx.training.cli.main(["fit"])`` in a temporary folder. The numbers are read from the run's
  ``metrics.json`` (``lightning_logs/digits_mlp_ecqx4/version_0/``); the wall time is that of the call. The
  same command is then run once more as a fresh ``ecqx fit`` process, whose wall time includes Python's start
  and the imports, and whose ``metrics.json`` must hold the same headline (the recipe is deterministic).
* ``compress``: ``ecqx compress resnet20.pt --method ecq --bits 4 --lam 0.05`` (no data, no training), then
  ``ecqx decode`` of the written file, and the test-split accuracy of the decoded model against the float
  model, both loaded into ``CifarResNet(depth=20)``. Zeros are counted in the decoded tensors that
  ``ecqx.quantize`` selects (which are also checked to decode to exactly the quantized values).
* ``relevance``: the default recipe with its ECQx callback's ``relevance_every_n_steps`` set to each of
  ``--every`` (default 1 and 10), for each of ``--seeds`` (default 0, 1, 2; a seed sets both
  ``seed_everything`` and the digits data module's ``seed``, i.e. initialisation, split and shuffle order),
  30 epochs as the recipe says. Per run: the decoded ``.nnc`` model's validation accuracy (``metrics.json``),
  its test-split accuracy, the ``.nnc`` bytes and zeros.
* ``all``: the three in turn.

    python benchmarks/readme_runs.py all [--shared DIR] [--threads 1]
    python benchmarks/readme_runs.py compress --test-limit 1000   # a seeded random subset of the test split

Data and weights default to ``$ECQX_SHARED`` (itself defaulting to ``shared`` beside the repository).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml
from environment import environment

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("ECQX_SHARED", REPO.parent / "shared"))
DEFAULT_RUN = "digits_mlp_ecqx4"  # the logger name of the embedded default recipe


# -- helpers ----------------------------------------------------------------------------------------------


def code_state() -> dict:
    """HEAD commit and the tracked files that differ from it, so a result names the code it measured."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read-only: never refresh the index

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, env=env,
                              check=False)
        return done.stdout.strip()

    modified = [line for line in git("diff", "--name-only", "HEAD").splitlines() if line]
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown", "modified_tracked_files": modified}


@contextlib.contextmanager
def inside(folder: Path):
    """Run with ``folder`` as the current folder (the recipes' relative log paths land there)."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(previous)


def describe(threads: int) -> dict:
    return {**environment(threads, pytorch_lightning=pl.__version__), "code": code_state()}


def metrics_json(folder: Path, name: str) -> dict:
    """The ``metrics.json`` of the only version folder of run ``name`` under ``folder/lightning_logs``."""
    found = sorted((folder / "lightning_logs" / name).glob("version_*/metrics.json"))
    if len(found) != 1:
        raise RuntimeError(f"expected one metrics.json for run {name!r} in {folder}, found {len(found)}")
    return json.loads(found[0].read_text())


HEADLINE = ("fp_accuracy", "fp_source", "decoded_accuracy", "decoded_source", "nnc_bytes", "float32_bytes",
            "percent_of_float32", "zeros", "tensors_quantized", "tensors_total", "method", "warning")


def headline(report: dict) -> dict:
    return {key: report.get(key) for key in HEADLINE}


def code_line(env: dict) -> str:
    code = env["code"]
    dirty = ", ".join(f"`{p}`" for p in code["modified_tracked_files"])
    return f"commit {code['commit']}" + (f" with uncommitted changes to {dirty}" if dirty else "")


def header(title: str, env: dict) -> list[str]:
    return [
        f"# {title}",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}, {env['cpu_count']} logical CPUs (shared with other jobs), "
        f"{env['torch_threads']} torch thread(s)  ",
        f"Versions: Python {env['python']}, torch {env['torch']}, "
        f"pytorch-lightning {env['pytorch_lightning']}, ecqx {env['ecqx']}; code: {code_line(env)}; "
        f"{env['date_utc']} UTC",
        "",
    ]


def write(name: str, result: dict, lines: list[str], results_dir: Path) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"readme_{name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (results_dir / f"readme_{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def pct(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f} %"


# -- fit --------------------------------------------------------------------------------------------------


def run_fit(args: argparse.Namespace) -> None:
    from ecqx.training.cli import main

    env = describe(args.threads)
    with tempfile.TemporaryDirectory(prefix="readme-fit-") as tmp, inside(Path(tmp)) as folder:
        start = time.perf_counter()
        status = main(["fit"])
        call_s = time.perf_counter() - start
        if status:
            raise RuntimeError(f"ecqx fit returned {status}")
        report = metrics_json(folder, DEFAULT_RUN)

        fresh = folder / "fresh"
        fresh.mkdir()
        script = Path(sys.executable).with_name("ecqx")
        command = [str(script)] if script.is_file() else [sys.executable, "-m", "ecqx.training.cli"]
        command.append("fit")
        process_env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        start = time.perf_counter()
        subprocess.run(command, cwd=fresh, env=process_env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        process_s = time.perf_counter() - start
        again = metrics_json(fresh, DEFAULT_RUN)
    result = {
        "environment": env,
        "run": "ecqx.training.cli.main(['fit']) (embedded default recipe, nothing overridden)",
        "fit_call_wall_s": call_s,
        "fresh_process": {"command": "ecqx fit", "OMP_NUM_THREADS": args.threads, "wall_s": process_s,
                          "same_headline": headline(again) == headline(report)},
        "headline": headline(report),
        "metrics_json": report,
    }
    h = result["headline"]
    lines = header("Default `ecqx fit` run", env) + [
        "`ecqx.training.cli.main([\"fit\"])` in an empty temporary folder (embedded default recipe: digits "
        "MLP 64-128-64-10, 10 full-precision epochs, then ECQx 4 bit, Λ = 0.15, 30 epochs in all). Numbers "
        "from the run's `metrics.json`.",
        "",
        "| decoded accuracy | full precision | zeros | `.nnc` size | % of float32 | wall time of the call | "
        "wall time of a fresh `ecqx fit` process |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {pct(h['decoded_accuracy'])} ({h['decoded_source']}) | "
        f"{pct(h['fp_accuracy'])} ({h['fp_source']}) | {pct(h['zeros'], 1)} | {h['nnc_bytes']:,} B | "
        f"{h['percent_of_float32']:.2f} % (of {h['float32_bytes']:,} B) | {call_s:.1f} s | "
        f"{process_s:.1f} s |",
        "",
        f"The fresh process (`OMP_NUM_THREADS={args.threads}`; Python start and imports included) wrote the "
        f"same headline: {'yes' if result['fresh_process']['same_headline'] else 'NO'}.",
    ]
    write("fit", result, lines, Path(args.results))


# -- compress ---------------------------------------------------------------------------------------------


def run_compress(args: argparse.Namespace) -> None:
    import ecqx
    from ecqx.coding import decode_state_dict, float32_bytes
    from ecqx.training.cli import main
    from ecqx.training.data import CIFAR10JPEGDataModule
    from ecqx.training.models import CifarResNet, extract_state_dict, load_pretrained
    from ecqx.training.module import ClassificationModule

    env = describe(args.threads)
    model_path = Path(args.model or args.shared / "models" / "resnet20.pt")
    data_root = Path(args.data_root or args.shared / "data" / "cifar10-jpeg")
    settings = {"method": "ecq", "bits": 4, "lam": 0.05}
    with tempfile.TemporaryDirectory(prefix="readme-compress-") as tmp:
        nnc, decoded_pt = Path(tmp) / "resnet20.nnc", Path(tmp) / "resnet20_decoded.pt"
        compress_argv = ["compress", str(model_path), "-o", str(nnc), "--method", settings["method"],
                         "--bits", str(settings["bits"]), "--lam", str(settings["lam"])]
        printed = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(printed):
            status = main(compress_argv)
        compress_s = time.perf_counter() - start
        if status or main(["decode", str(nnc), "-o", str(decoded_pt)]):
            raise RuntimeError("ecqx compress/decode failed")
        data = nnc.read_bytes()
        decoded_state = decode_state_dict(data)

        def module_from(path: Path) -> ClassificationModule:
            model = CifarResNet(depth=20, num_classes=10)
            load_pretrained(model, path)
            return ClassificationModule(model=model, num_classes=10)

        float_module, decoded_module = module_from(model_path), module_from(decoded_pt)

    state_dict = extract_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    quantized = ecqx.quantize(state_dict, **settings)
    exact = all(
        torch.equal(decoded_state[n], q.dequantize().reshape(decoded_state[n].shape).to(torch.float32))
        for n, q in quantized.items()
    )
    zeros = sum(int((decoded_state[n] == 0).sum()) for n in quantized)
    numel = sum(decoded_state[n].numel() for n in quantized)
    reference = float32_bytes(state_dict)

    datamodule = CIFAR10JPEGDataModule(root=str(data_root), batch_size=500, augment=False,
                                       limit=args.test_limit)
    datamodule.setup("test")
    images = len(datamodule.datasets["test"])
    start = time.perf_counter()
    float_test = float_module.evaluate(datamodule.test_dataloader())
    decoded_test = decoded_module.evaluate(datamodule.test_dataloader())
    eval_s = time.perf_counter() - start

    subset = "the whole test split" if args.test_limit is None else (
        f"a seeded random subset of the test split (`CIFAR10JPEGDataModule(limit={args.test_limit})`)")
    result = {
        "environment": env,
        "compress_command": "ecqx " + " ".join(
            [compress_argv[0], model_path.name, "-o", nnc.name, *compress_argv[4:]]),
        "compress_printed": printed.getvalue().strip(),
        "compress_wall_s": compress_s,
        "model": str(model_path),
        "data": str(data_root),
        "test_images": images,
        "test_subset": subset,
        "nnc_bytes": len(data),
        "float32_bytes": reference,
        "percent_of_float32": 100 * len(data) / reference,
        "times_smaller": reference / len(data),
        "tensors_quantized": len(quantized),
        "tensors_total": len(state_dict),
        "quantized_weights": numel,
        "zeros": zeros / numel,
        "quantized_tensors_decode_exactly": exact,
        "float_test": float_test,
        "decoded_test": decoded_test,
        "drop_points": 100 * (decoded_test["acc"] - float_test["acc"]),
        "eval_wall_s": eval_s,
    }
    lines = header("`ecqx compress` on ResNet-20: one-shot ECQ, decoded accuracy", env) + [
        f"`{result['compress_command']}` (no data, no training), then `ecqx decode`; both state_dicts loaded "
        f"into `CifarResNet(depth=20)` and evaluated on {images:,} CIFAR-10 JPEG (q75) test images "
        f"({subset}, `CIFAR10JPEGDataModule` defaults).",
        "",
        "| decoded test accuracy | float test accuracy | drop (points) | zeros | `.nnc` size | "
        "% of float32 | smaller than float32 | tensors quantized |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {pct(decoded_test['acc'])} | {pct(float_test['acc'])} | {result['drop_points']:+.2f} | "
        f"{pct(result['zeros'], 1)} | {len(data):,} B | {result['percent_of_float32']:.2f} % (of "
        f"{reference:,} B) | {result['times_smaller']:.1f}× | {len(quantized)} of {len(state_dict)} |",
        "",
        f"`ecqx compress` printed: `{result['compress_printed']}`  ",
        f"Quantized tensors decode to exactly the quantized values: {'yes' if exact else 'NO'}.",
    ]
    write("compress", result, lines, Path(args.results))


# -- relevance --------------------------------------------------------------------------------------------


def relevance_recipe(every: int, out: Path) -> Path:
    """The embedded default recipe with its ECQx callback refreshing relevances every ``every`` steps."""
    from ecqx.training.cli import default_config_path

    recipe = yaml.safe_load(Path(default_config_path()).read_text())
    ecqx_entries = [c for c in recipe["trainer"]["callbacks"] if c["class_path"] == "ecqx.callbacks.ECQx"]
    if len(ecqx_entries) != 1:
        raise RuntimeError("the default recipe no longer has exactly one ECQx callback")
    ecqx_entries[0]["init_args"]["relevance_every_n_steps"] = every
    recipe["trainer"]["logger"]["init_args"]["save_dir"] = str(out / "lightning_logs")
    path = out / f"default_every{every}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_relevance(args: argparse.Namespace) -> None:
    from ecqx import load
    from ecqx.training.cli import run_lightning

    env = describe(args.threads)
    runs = []
    with tempfile.TemporaryDirectory(prefix="readme-relevance-") as tmp, inside(Path(tmp)) as out:
        for every in args.every:
            recipe = relevance_recipe(every, out)
            for seed in args.seeds:
                name = f"every{every}_seed{seed}"
                argv = ["fit", "--config", str(recipe), "--seed_everything", str(seed),
                        "--data.seed", str(seed), f"--trainer.logger.init_args.name={name}",
                        "--trainer.enable_progress_bar=false"]
                start = time.perf_counter()
                cli = run_lightning(argv)
                wall = time.perf_counter() - start
                report = metrics_json(out, name)
                decoded = load(copy.deepcopy(cli.model), report["files"][".nnc"][0])
                test = decoded.evaluate(cli.datamodule.test_dataloader())
                runs.append({"relevance_every_n_steps": every, "seed": seed, "wall_s": wall,
                             "val_images": len(cli.datamodule.datasets["val"]),
                             "test_images": len(cli.datamodule.datasets["test"]),
                             "decoded_test_acc": test["acc"], **headline(report)})

    summary = {}
    for every in args.every:
        mine = [r for r in runs if r["relevance_every_n_steps"] == every]
        summary[str(every)] = {
            "mean_decoded_val_acc": statistics.fmean(r["decoded_accuracy"] for r in mine),
            "mean_decoded_test_acc": statistics.fmean(r["decoded_test_acc"] for r in mine),
            "mean_fp_val_acc": statistics.fmean(r["fp_accuracy"] for r in mine),
            "mean_nnc_bytes": statistics.fmean(r["nnc_bytes"] for r in mine),
            "mean_zeros": statistics.fmean(r["zeros"] for r in mine),
        }
    result = {"environment": env, "seeds": args.seeds, "every": args.every, "runs": runs, "summary": summary}
    val_n, test_n = runs[0]["val_images"], runs[0]["test_images"]
    lines = header("ECQx relevance refresh interval on the `ecqx fit` default: decoded accuracy and size",
                   env) + [
        "The embedded default recipe (digits MLP, 30 epochs, ECQx 4 bit, Λ = 0.15 from epoch 10) with the "
        "ECQx callback's `relevance_every_n_steps` set as below; seed s = "
        "`--seed_everything s --data.seed s` (initialisation, split and shuffle order). "
        f"Validation split {val_n} images, test split {test_n}; "
        "accuracies of the model decoded from the written `.nnc` file.",
        "",
        "| relevance_every_n_steps | seed | decoded val acc | decoded test acc | "
        "FP val acc (end of warm-up) | zeros | `.nnc` bytes | fit wall s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['relevance_every_n_steps']} | {r['seed']} | {pct(r['decoded_accuracy'])} | "
        f"{pct(r['decoded_test_acc'])} | {pct(r['fp_accuracy'])} | {pct(r['zeros'], 1)} | "
        f"{r['nnc_bytes']:,} | {r['wall_s']:.1f} |"
        for r in runs
    ]
    lines += [
        "",
        "| relevance_every_n_steps | mean decoded val acc | mean decoded test acc | mean zeros | "
        "mean `.nnc` bytes |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {every} | {pct(s['mean_decoded_val_acc'])} | {pct(s['mean_decoded_test_acc'])} | "
        f"{pct(s['mean_zeros'], 1)} | {s['mean_nnc_bytes']:,.0f} |"
        for every, s in summary.items()
    ]
    write("relevance", result, lines, Path(args.results))


# -- entry point ------------------------------------------------------------------------------------------


COMMANDS = {"fit": run_fit, "compress": run_compress, "relevance": run_relevance}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=[*COMMANDS, "all"])
    parser.add_argument("--shared", type=Path, default=SHARED,
                        help="shared data folder (default: $ECQX_SHARED or ../shared)")
    parser.add_argument("--model", help="compress: state_dict file (default: SHARED/models/resnet20.pt)")
    parser.add_argument("--data-root",
                        help="compress: CIFAR-10 JPEG folder (default: SHARED/data/cifar10-jpeg)")
    parser.add_argument("--test-limit", type=int, help="compress: evaluate on a seeded random subset of N "
                        "test images (default: the whole test split)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="relevance: seeds")
    parser.add_argument("--every", type=int, nargs="+", default=[1, 10],
                        help="relevance: relevance_every_n_steps values")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--results", default=str(RESULTS), help="folder for readme_*.json/.md")
    args = parser.parse_args(argv)
    args.shared = args.shared.resolve()
    args.results = str(Path(args.results).resolve())
    torch.set_num_threads(args.threads)
    for name in COMMANDS if args.command == "all" else [args.command]:
        COMMANDS[name](args)


if __name__ == "__main__":
    main()
