"""``ecqx federate``: the command's parser, run, results file, output and exit status."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict

import pytorch_lightning as pl

from ecqx.coding.files import write_bytes_atomic

from .config import FederatedConfig, FederatedError, RoundResult, _first_line
from .engines import run_federated
from .plot import write_accuracy_bytes_plot

log = logging.getLogger(__package__)  # "ecqx.training.federated": one logger for the package
USAGE = ("ecqx federate --config RECIPE.yaml [--results FILE.json] [--baseline true] [--debug] "
         "[--section.key VALUE ...] [--print_config]")


def _package_doc() -> str:
    """The docstring of ``ecqx.training.federated`` (the package's module docstring, first line: the command's
    description)."""
    return sys.modules[__package__].__doc__


def _parser():
    from jsonargparse import ArgumentParser

    from ecqx.training.module import ClassificationModule

    # a one-line usage, as `ecqx fit` has (cli.py): jsonargparse prints the usage before every parse error,
    # and the generated one lists every option of the recipe in 20+ lines above the cause
    parser = ArgumentParser(prog="ecqx federate", description=_package_doc().split("\n")[0], usage=USAGE)
    parser.add_argument("--config", action="config", help="federated recipe (YAML)")
    parser.add_subclass_arguments(ClassificationModule, "model", required=True)
    parser.add_subclass_arguments(pl.LightningDataModule, "data", required=True)
    parser.add_class_arguments(FederatedConfig, "federated")
    parser.add_argument("--results", type=str | None, default=None,
                        help="write per-round results (JSON) and the accuracy-vs-bytes plot (FILE.png)")
    parser.add_argument("--baseline", type=bool, default=False,
                        help="also run float32 FedAvg (same clients, split, seeds, rounds) for comparison")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback and Flower's logs instead of the one-line "
                             "message")
    return parser


def _summary(config: FederatedConfig, results: Sequence[RoundResult]) -> dict:
    return {
        "config": asdict(config),
        "rounds": [asdict(r) for r in results],
        "total_bytes_up": sum(r.bytes_up for r in results),
        "total_bytes_down": sum(r.bytes_down for r in results),
        "total_float32_bytes": sum(r.float32_bytes for r in results),
    }


def federate(argv: Sequence[str]) -> list[RoundResult]:
    """Parses ``argv`` (``--config RECIPE.yaml [--results FILE.json] [--baseline true]
    [--federated.rounds N ...]``), runs; errors propagate (:func:`main` reports them)."""
    parser = _parser()
    cfg = parser.parse_args(list(argv))
    return _federate(parser, cfg)


def _federate(parser, cfg) -> list[RoundResult]:
    """Runs the parsed command: the rounds (and the baseline), the results file and plot, the totals."""
    with _command_logging(cfg.debug):
        pl.seed_everything(cfg.federated.seed, workers=True, verbose=False)  # the model's initial weights
        init = parser.instantiate_classes(cfg)
        config = init.federated
        template = copy.deepcopy(init.model) if cfg.baseline else None  # the same initial weights for both
        runs = {"NNC-coded FedAvg": run_federated(init.model, init.data, config)}
        if cfg.baseline:
            runs["float32 FedAvg"] = run_federated(template, init.data, config, float32=True)
        if cfg.results:
            _write_results(cfg.results, config, runs)
        for label, results in runs.items():
            log.info("%s", _totals(label, results))
        return runs["NNC-coded FedAvg"]


def _write_results(path: str, config: FederatedConfig, runs: Mapping[str, Sequence[RoundResult]]) -> None:
    """Writes ``path`` (JSON: the NNC run, the baseline under "baseline") and the plot next to it."""
    results, baseline = runs["NNC-coded FedAvg"], runs.get("float32 FedAvg")
    summary = _summary(config, results)
    if baseline is not None:
        summary["baseline"] = _summary(config, baseline) | {"mode": "float32 FedAvg"}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes_atomic(path, (json.dumps(summary, indent=2) + "\n").encode())
    stem, _ = os.path.splitext(path)
    write_accuracy_bytes_plot(stem + ".png", runs,
                              title=f"FedAvg, {config.clients} clients, Dirichlet α = {config.alpha}")
    log.info("results: %s, plot: %s", path, stem + ".png")


def _totals(label: str, results: Sequence[RoundResult]) -> str:
    """One line per run after the rounds (each round was logged as it finished)."""
    sent = sum(r.bytes_up + r.bytes_down for r in results)
    float32 = sum(r.float32_bytes for r in results)
    share = f" ({100 * sent / float32:.2f} % of float32 FedAvg's {float32} B)" if "NNC" in label else ""
    return (f"{label}: {len(results)} rounds, {sent} B sent{share}, final accuracy "
            f"{results[-1].accuracy:.4f}")


@contextlib.contextmanager
def _command_logging(debug: bool) -> Iterator[None]:
    """The command's output: ecqx's own INFO lines (each round's result) on stdout, without configuring the
    root logger (every library's INFO would appear, e.g. alembic's from ray). Without ``debug`` Flower's
    logger is silenced: its ERROR lines repeat, with ray's tracebacks, what :func:`main` reports in one."""
    logger = logging.getLogger("ecqx")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.ExitStack() as stack:
            if not debug:
                stack.enter_context(_silenced("flwr"))
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def _silenced(name: str) -> Iterator[None]:
    try:
        import flwr.common  # noqa: F401  (sets the "flwr" logger's level when first imported)
    except ImportError:
        pass  # run_federated says what to install
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def main(argv: Sequence[str]) -> int:
    """``ecqx federate``: returns the exit status. A bad recipe or option: jsonargparse's usage line and
    error (status 2); a bad value or a missing package: one line, status 2; a failed run: one line, status
    1. ``--debug`` raises instead, with the traceback (and the client's report)."""
    parser = _parser()
    cfg = parser.parse_args(list(argv))
    try:
        _federate(parser, cfg)
    except (ValueError, FileNotFoundError, ImportError) as error:
        if cfg.debug:
            raise
        print(f"ecqx federate: error: {_first_line(error)}", file=sys.stderr)
        return 2
    except FederatedError as error:
        if cfg.debug:
            raise
        print(f"ecqx federate: error: {_first_line(error)}", file=sys.stderr)
        return 1
    except Exception as error:
        if cfg.debug:
            raise
        print(f"ecqx federate: error: {type(error).__name__}: {_first_line(error)} (--debug shows the "
              "traceback)", file=sys.stderr)
        return 1
    return 0
