"""Proof runs on real data: full-precision baselines vs ECQ / ECQx / EC2T on the test split.

Each experiment runs one recipe from ``recipes/`` through ``EcqxCLI`` (the LightningCLI class behind
``ecqx fit``) in this process, with a patched copy of the recipe (epochs, cosine T_max, data and weight paths,
output paths; nothing else changes), then evaluates on the *test* split:

* ``*_fp`` experiments: the recipe with no callbacks (plain full-precision training, same schedule and seed);
  reports the trained model's test accuracy (and, with pretrained weights, the starting model's).
* method experiments: the recipe as is (quantization callback + NNCExport); the ``.nnc`` file the callback
  wrote is decoded with :func:`ecqx.coding.decode_state_dict` into a copy of the module and that copy is
  evaluated. Zeros = fraction of exact zeros over the decoded quantized tensors. The accuracy drop is taken
  against the matching ``*_fp`` result if it has been run already.

Writes ``benchmarks/results/proof_<experiment>.json`` and ``.md``; ``--experiment summary`` collects every
``proof_*.json`` into ``proof_summary.md``. The patched recipe is kept in the output folder
(``<experiment>.yaml``), so ``ecqx fit --config OUT/<experiment>.yaml`` repeats the training alone.

    python benchmarks/proof_runs.py --experiment cifar10_fp --epochs 2 --out /tmp/proof
    python benchmarks/proof_runs.py --experiment summary
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("ECQX_SHARED", REPO.parent / "shared"))

# experiment -> (recipe, baseline experiment or None for a full-precision run, data folder under shared/data)
EXPERIMENTS = {
    "cifar10_fp": ("cifar10_resnet20_ecq4.yaml", None, "cifar10-jpeg"),
    "cifar10_ec2t": ("cifar10_resnet20_ec2t.yaml", "cifar10_fp", "cifar10-jpeg"),
    "cifar10_ecq4": ("cifar10_resnet20_ecq4.yaml", "cifar10_fp", "cifar10-jpeg"),
    "cifar10_ecqx4": ("cifar10_resnet20_ecqx4.yaml", "cifar10_fp", "cifar10-jpeg"),
    "mnist_fp": ("mnist_lenet5_ecqx4.yaml", None, "mnist"),
    "mnist_ecqx4": ("mnist_lenet5_ecqx4.yaml", "mnist_fp", "mnist"),
}


def patch_recipe(recipe: dict, name: str, args: argparse.Namespace, out: Path) -> tuple[dict, list[str]]:
    """The recipe with this run's schedule and paths; returns it and a list of what was changed."""
    cfg = copy.deepcopy(recipe)
    notes = []
    trainer, model_args = cfg["trainer"], cfg["model"]["init_args"]
    if args.epochs is not None and args.epochs != trainer["max_epochs"]:
        notes.append(f"max_epochs {trainer['max_epochs']} -> {args.epochs}")
        trainer["max_epochs"] = args.epochs
    epochs = trainer["max_epochs"]
    scheduler = model_args.get("lr_scheduler") or {}
    is_cosine = scheduler.get("class_path", "").endswith("CosineAnnealingLR")
    if is_cosine and scheduler["init_args"]["T_max"] != epochs:
        notes.append(f"cosine T_max {scheduler['init_args']['T_max']} -> {epochs}")
        scheduler["init_args"]["T_max"] = epochs
    trainer.update(enable_progress_bar=False, enable_checkpointing=False)
    trainer["logger"]["init_args"].update(save_dir=str(out / "lightning_logs"), name=name)
    cfg["data"]["init_args"]["root"] = str(args.data_root or SHARED / "data" / EXPERIMENTS[name][2])
    if args.limit is not None:
        cfg["data"]["init_args"]["limit"] = args.limit
        notes.append(f"data limited to {args.limit} samples per split (smoke test only)")
    if model_args.get("pretrained"):
        model_args["pretrained"] = str(args.pretrained or SHARED / "models" / "resnet20.pt")
    if EXPERIMENTS[name][1] is None:
        trainer["callbacks"] = []
        notes.append("callbacks removed (full-precision baseline)")
    else:
        _patch_callbacks(trainer["callbacks"], name, epochs, out, notes)
    return cfg, notes


def _patch_callbacks(callbacks: list[dict], name: str, epochs: int, out: Path, notes: list[str]) -> None:
    for callback in callbacks:
        kind, init = callback["class_path"].rsplit(".", 1)[-1], callback["init_args"]
        if kind == "NNCExport":
            init["path"] = str(out / f"{name}.nnc")
        elif kind == "RateDistortion":
            init["out_dir"] = str(out / f"{name}_rd")
        elif kind == "EC2T" and init.get("freeze_epoch") is not None and init["freeze_epoch"] >= epochs:
            # keep a frozen-assignment phase in a shortened schedule: freeze for the last epoch
            notes.append(f"EC2T freeze_epoch {init['freeze_epoch']} -> {epochs - 1}")
            init["freeze_epoch"] = epochs - 1


def build_cli(config_path: Path):
    """The objects ``ecqx fit --config config_path`` would train, not yet run."""
    from pytorch_lightning import LightningDataModule

    from ecqx.training.cli import EcqxCLI
    from ecqx.training.module import ClassificationModule

    return EcqxCLI(
        ClassificationModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=["--config", str(config_path)],
        run=False,
    )


def evaluate_decoded(module, nnc_path: Path, quantized_names: list[str], loader) -> dict:
    """Decode the ``.nnc`` file into a copy of ``module`` (strict load) and score it on ``loader``."""
    from ecqx.coding import decode_state_dict, float32_bytes

    data = nnc_path.read_bytes()
    decoded_state = decode_state_dict(data)
    decoded = copy.deepcopy(module)
    decoded.load_state_dict(decoded_state, strict=True)
    zeros = sum(int((decoded_state[n] == 0).sum()) for n in quantized_names)
    numel = sum(decoded_state[n].numel() for n in quantized_names)
    reference = float32_bytes(decoded_state)
    per_layer = {n: float((decoded_state[n] == 0).float().mean()) for n in quantized_names}
    return {
        "test": decoded.evaluate(loader),
        "nnc_bytes": len(data),
        "float32_bytes": reference,
        "ratio": len(data) / reference,
        "quantized_weights": numel,
        "zeros": zeros / numel,
        "zeros_per_layer": per_layer,
    }


def run_experiment(name: str, args: argparse.Namespace) -> dict:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    recipe_name, baseline, _ = EXPERIMENTS[name]
    recipe = yaml.safe_load((REPO / "recipes" / recipe_name).read_text())
    cfg, notes = patch_recipe(recipe, name, args, out)
    config_path = out / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    torch.set_num_threads(args.threads)
    cli = build_cli(config_path)
    module, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    datamodule.setup("test")
    # the starting model's accuracy (meaningful with pretrained weights; chance level for a scratch model)
    result = {"start_test": module.evaluate(datamodule.test_dataloader())} if baseline is None else {}

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    result["fit_wall_s"] = time.perf_counter() - start
    result["final_val"] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    result["trained_test"] = module.evaluate(datamodule.test_dataloader())
    if baseline is not None:
        quantizer = next(c for c in trainer.callbacks if hasattr(c, "quantized_tensors"))
        export = next(c for c in trainer.callbacks if type(c).__name__ == "NNCExport")
        result["decoded"] = evaluate_decoded(
            module, export.path, sorted(quantizer.quantized_tensors()), datamodule.test_dataloader()
        )
        result["callback_summary"] = quantizer.summary()
        result["baseline"] = baseline
    return {
        "experiment": name,
        "recipe": f"recipes/{recipe_name}",
        "changes": notes,
        "schedule": _schedule(cfg),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "equivalent_cli": f"ecqx fit --config {config_path}",
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": _machine(),
        "versions": _versions(),
        "threads": args.threads,
        "result": result,
    }


def _schedule(cfg: dict) -> dict:
    model_args, data_args = cfg["model"]["init_args"], cfg["data"]["init_args"]
    optimizer = model_args["optimizer"]
    scheduler = model_args.get("lr_scheduler") or {}
    return {
        "epochs": cfg["trainer"]["max_epochs"],
        "seed": cfg["seed_everything"],
        "optimizer": optimizer["class_path"].rsplit(".", 1)[-1],
        "optimizer_args": optimizer.get("init_args", {}),
        "lr_scheduler": scheduler.get("class_path", "none").rsplit(".", 1)[-1],
        "lr_scheduler_args": scheduler.get("init_args", {}),
        "batch_size": data_args.get("batch_size"),
        "augment": data_args.get("augment", False),
        "pretrained": model_args.get("pretrained"),
        "callbacks": [
            {"class": c["class_path"].rsplit(".", 1)[-1], **c.get("init_args", {})}
            for c in cfg["trainer"]["callbacks"]
        ],
    }


def _machine() -> dict:
    cpu = ""
    if Path("/proc/cpuinfo").exists():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return {"platform": platform.platform(), "cpu": cpu, "logical_cpus": os.cpu_count()}


def _versions() -> dict:
    import ecqx

    versions = {"python": platform.python_version(), "torch": torch.__version__, "ecqx_file": ecqx.__file__}
    for package in ("pytorch-lightning", "ecqx", "zennit"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["git_commit"] = _git_commit()
    return versions


def _git_commit() -> str:
    command = ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


# ---------------------------------------------------------------------------------------------- reporting


def load_results(results_dir: Path) -> dict[str, dict]:
    return {
        path.stem.removeprefix("proof_"): json.loads(path.read_text())
        for path in sorted(results_dir.glob("proof_*.json"))
        if path.stem != "proof_summary"
    }


def summary_rows(results: dict[str, dict]) -> list[list[str]]:
    """One table row per experiment; method rows take the FP accuracy from their baseline's result."""
    return [_row(name, report, results) for name, report in results.items()]


def _row(name: str, report: dict, results: dict[str, dict]) -> list[str]:
    r, s = report["result"], report["schedule"]
    lr = s["optimizer_args"].get("lr")
    schedule = f"{s['epochs']} ep, {s['optimizer']} lr {lr}, {s['lr_scheduler']}"
    wall = f"{r['fit_wall_s'] / 60:.1f}"
    if "decoded" not in r:
        pretrained = r.get("start_test") and s.get("pretrained")
        start = f" (start {100 * r['start_test']['acc']:.2f})" if pretrained else ""
        fp_text = f"{100 * r['trained_test']['acc']:.2f}{start}"
        return [name, schedule, fp_text, "—", "—", "—", "—", "—", wall]
    d = r["decoded"]
    base = results.get(r["baseline"])
    fp_acc = base["result"]["trained_test"]["acc"] if base else None
    drop = f"{100 * (d['test']['acc'] - fp_acc):+.2f}" if fp_acc is not None else "n/a"
    fp_text = f"{100 * fp_acc:.2f}" if fp_acc is not None else "n/a"
    return [
        name, schedule, fp_text, f"{100 * d['test']['acc']:.2f}", drop, f"{100 * d['zeros']:.1f}",
        f"{d['nnc_bytes']:,}", f"{100 * d['ratio']:.2f}", wall,
    ]


HEADER = ["experiment", "schedule", "FP test acc %", "decoded test acc %", "drop (points)", "zeros %",
          ".nnc bytes", "% of float32", "fit wall min"]


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(report: dict, results_dir: Path) -> None:
    name = report["experiment"]
    (results_dir / f"proof_{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    m, v = report["machine"], report["versions"]
    everything = {**load_results(results_dir), name: report}
    text = [
        f"# Proof run `{name}` ({report['date_utc']} UTC)",
        "",
        f"Command: `{report['command']}` (training alone: `{report['equivalent_cli']}`)",
        f"Recipe: `{report['recipe']}`; changed: {', '.join(report['changes']) or 'nothing'}",
        f"Machine: {m['platform']}, {m['cpu']} ({m['logical_cpus']} logical CPUs), {report['threads']} torch "
        "thread(s)",
        f"Versions: Python {v['python']}, torch {v['torch']}, pytorch-lightning {v['pytorch-lightning']}, "
        f"ecqx {v['ecqx']} imported from `{v['ecqx_file']}` (repository HEAD when run: {v['git_commit']}), "
        f"zennit {v['zennit']}",
        f"Schedule: `{json.dumps(report['schedule'])}`",
        "",
        markdown_table([row for row in summary_rows(everything) if row[0] == name]),
        "",
    ]
    (results_dir / f"proof_{name}.md").write_text("\n".join(text))


def write_summary(results_dir: Path) -> None:
    results = load_results(results_dir)
    rows = summary_rows(results)
    text = ["# Proof runs: test-split accuracy, zeros and .nnc size", "",
            "Written by `python benchmarks/proof_runs.py --experiment summary` from the `proof_*.json`",
            "files; the drop is the decoded model's test accuracy minus that of the full-precision run",
            "with the same schedule.",
            "",
            markdown_table(rows), ""]
    (results_dir / "proof_summary.md").write_text("\n".join(text))
    print("\n".join(text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, choices=[*EXPERIMENTS, "summary"])
    parser.add_argument("--epochs", type=int, help="override max_epochs (and cosine T_max) of the recipe")
    parser.add_argument("--data-root", help="data folder (default: $ECQX_SHARED/data/<dataset>)")
    parser.add_argument("--pretrained", help="starting weights (default: $ECQX_SHARED/models/resnet20.pt)")
    parser.add_argument("--out", default="proof_out", help="folder for logs, patched recipes and .nnc files")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--limit", type=int, help="cut every split to N samples (quick check of the script)")
    parser.add_argument("--results", default=str(RESULTS), help="folder for proof_*.json/.md")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    if args.experiment == "summary":
        write_summary(results_dir)
        return
    report = run_experiment(args.experiment, args)
    write_report(report, results_dir)
    print(json.dumps(report["result"], indent=2, default=str))


if __name__ == "__main__":
    main()
