"""The ``ecqx`` command.

``ecqx fit | validate | test [--config RECIPE.yaml] [--key value ...]`` run LightningCLI with the
:class:`~ecqx.training.ClassificationModule` (or a subclass) and any LightningDataModule, both chosen by
``class_path`` in the recipe. Without ``--config`` they run the embedded default recipe
(``ecqx/training/default.yaml``); ``--key value`` options override either.

``ecqx compress``, ``ecqx inspect`` and ``ecqx decode`` work on files without training (see ``--help`` of
each); they are dispatched to argparse before LightningCLI sees the arguments.
"""

from __future__ import annotations

import argparse
import math
import pickle
import re
import struct
import sys
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from importlib import resources

import torch
from pytorch_lightning import LightningDataModule
from pytorch_lightning.cli import LightningCLI

from ecqx.coding.cli import HANDLERS as FILE_HANDLERS
from ecqx.coding.cli import (
    FileCommandError,
    add_debug_option,
    add_decode_command,
    add_inspect_command,
    add_workers_option,
    check_input,
    check_output,
    check_workers,
    default_output,
    run_command,
    write_output,
)
from ecqx.training.models import extract_state_dict
from ecqx.training.module import ClassificationModule
from ecqx.training.report import finish_fit, format_report, place_outputs_in_run_folder
from ecqx.training.shortcuts import add_shortcut_arguments, apply_shortcuts

__all__ = [
    "main",
    "EcqxCLI",
    "run_lightning",
    "run_tool",
    "with_default_config",
    "default_config_path",
    "format_metrics",
    "TOOL_COMMANDS",
    "LIGHTNING_COMMANDS",
]

LIGHTNING_COMMANDS = ("fit", "validate", "test")
TOOL_COMMANDS = ("compress", "inspect", "decode")
FEDERATE_COMMAND = "federate"
DEFAULT_CONFIG = "default.yaml"
_EPILOG = (
    "file commands (no training): 'ecqx compress MODEL.pt -o MODEL.nnc', 'ecqx inspect FILE.nnc', "
    "'ecqx decode FILE.nnc -o FILE.pt'; see 'ecqx <command> --help'."
)
_DEFAULT_RUN = (
    "Without --config this runs the embedded default recipe: a small MLP on scikit-learn's 8x8 digits "
    "(bundled, no download), full-precision warm-up, then 4-bit ECQx (Λ 0.15), and writes the trained model "
    "as an .nnc file with its decoded accuracy. --config RECIPE.yaml runs a recipe (see recipes/). "
    "Shortcuts: --method {ecq,ecqx,ec2t} --bits B --lam L --start-epoch E --nnc PATH change the recipe's "
    "quantization callback and export; any other setting as --section.key value "
    "(e.g. --trainer.max_epochs 5); "
    "--print_config shows the resolved recipe."
)
OVERVIEW = """usage: ecqx <command> [options]

Quantization-aware training for bytes: ECQ, ECQx and EC2T during training, NNC (.nnc) model files.

training commands (a recipe; without --config the embedded default: digits MLP, 4-bit ECQx, .nnc export):
  fit        train and quantize, write the .nnc file and a rate-distortion report
             (shortcuts: --method {ecq,ecqx,ec2t} --bits B --lam L --start-epoch E --nnc PATH)
  validate   evaluate a model on the validation split
  test       evaluate a model on the test split

file commands (no training):
  compress   quantize a saved state_dict without data and write it as an .nnc file
  inspect    per-tensor table of an .nnc file
  decode     decode an .nnc file into a state_dict file

federated learning (needs the [federated] extra):
  federate   FedAvg on Flower with NNC-coded updates: --config RECIPE.yaml [--results FILE.json]

'ecqx <command> --help' shows the options of a command.
"""


def default_config_path() -> str:
    """Path of the embedded default recipe that ``ecqx fit`` runs without ``--config``."""
    return str(resources.files("ecqx.training").joinpath(DEFAULT_CONFIG))


class EcqxCLI(LightningCLI):
    """LightningCLI with the ``fit``, ``validate`` and ``test`` subcommands.

    Relative output paths of the recipe's ``NNCExport``/``RateDistortion`` go into the run's versioned log
    folder; after fit it prints the run report (:mod:`ecqx.training.report`) and writes ``metrics.json``.
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: spec for name, spec in LightningCLI.subcommands().items() if name in LIGHTNING_COMMANDS}

    def parse_arguments(self, parser, args) -> None:
        # main() always passes the arguments (the command line plus the embedded default), so Lightning's
        # warning about receiving both `args` and a command line does not apply here.
        self.config = parser.parse_args(args)

    def add_arguments_to_parser(self, parser) -> None:
        add_shortcut_arguments(parser)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        try:
            apply_shortcuts(config)
        except ValueError as error:
            self.parser.error(str(error))

    def after_instantiate_classes(self) -> None:
        place_outputs_in_run_folder(self.trainer)

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print(format_report(finish_fit(self.trainer)))


def format_metrics(metrics: Mapping[str, torch.Tensor | float]) -> str:
    """Two-column text table of the final logged metrics (name, value), sorted by name."""
    rows = [(name, float(value)) for name, value in sorted(metrics.items()) if _is_scalar(value)]
    width = max((len(name) for name, _ in rows), default=6)
    lines = ["final metrics", "-" * (width + 16)]
    lines += [f"{name:<{width}}  {value:>14.6g}" for name, value in rows]
    return "\n".join(lines)


def _is_scalar(value: object) -> bool:
    return isinstance(value, float | int) or (isinstance(value, torch.Tensor) and value.numel() == 1)


def run_lightning(argv: Sequence[str]) -> EcqxCLI:
    """Run a LightningCLI subcommand; the embedded default recipe is used when no ``--config`` is given."""
    return EcqxCLI(
        ClassificationModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=with_default_config(argv),
        parser_kwargs={
            "epilog": _EPILOG,
            **{name: {"description": _DEFAULT_RUN, "usage": _usage(name)} for name in LIGHTNING_COMMANDS},
        },
    )


def _usage(command: str) -> str:
    return (f"ecqx {command} [--config RECIPE.yaml] [--method {{ecq,ecqx,ec2t}}] [--bits B] [--lam L] "
            f"[--start-epoch E] [--nnc PATH] [--section.key VALUE ...] [--print_config]")


def with_default_config(argv: Sequence[str]) -> list[str]:
    """Insert ``--config <embedded default>`` after a fit/validate/test subcommand that names no config."""
    argv = list(argv)
    if not argv or argv[0] not in LIGHTNING_COMMANDS:
        return argv
    names_config = any(arg in ("--config", "-c") or arg.startswith("--config=") for arg in argv[1:])
    if names_config:
        return argv
    return [argv[0], "--config", default_config_path(), *argv[1:]]


# -- file commands ---------------------------------------------------------------------------------------

STATE_DICT_EXPECTED = (
    "a state_dict saved with torch.save (a dict of tensors, or a checkpoint dict holding one)"
)
# What torch.load(weights_only=True) raises on files that are not (intact) torch.save archives of tensors.
_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    EOFError, pickle.UnpicklingError, KeyError, IndexError, TypeError, ValueError, RuntimeError,
    OverflowError, struct.error, zipfile.BadZipFile,
)
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# One stream signals every qp relative to one base with 6 + qp_density bits: its step sizes span < 2^64.
_STEP_SPREAD = 2.0**64


def build_tool_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``compress``, ``inspect`` and ``decode``."""
    parser = argparse.ArgumentParser(prog="ecqx", description="Work with NNC (.nnc) model files.")
    commands = parser.add_subparsers(dest="command", required=True)

    compress = commands.add_parser(
        "compress",
        help="post-training ECQ/EC2T quantization of a state_dict file, written as an NNC bitstream",
        description="Quantize a saved state_dict (no data needed) and write it as an NNC bitstream. "
        "Tensors the quantizer selects are coded losslessly from their integer levels, the other float "
        "tensors with a step tied to each tensor's own scale (--nonweight-qp auto, --nonweight-bits) or one "
        "fixed qp, never above their float32 size; integer buffers losslessly.",
    )
    compress.add_argument("model", help="state_dict file (torch.save; a checkpoint dict works too)")
    compress.add_argument(
        "-o", "--output",
        help="output .nnc file (default: MODEL with suffix .nnc, or MODEL.compressed.nnc when that would be "
        "MODEL itself); never the input file",
    )
    compress.add_argument("--method", choices=("ecq", "ec2t"), default="ecq", help="quantizer (default: ecq)")
    compress.add_argument("--bits", type=int, default=4, help="ecq grid bit width (default: 4)")
    compress.add_argument("--lam", type=float, default=0.05, help="entropy constraint λ (default: 0.05)")
    compress.add_argument(
        "--mode", choices=("clean", "faithful"), default="clean", help="quantizer variant (default: clean)"
    )
    compress.add_argument(
        "--nonweight-qp", type=_nonweight_qp, default="auto",
        help="step of the non-quantized float tensors (BatchNorm, biases): 'auto' (a step 2^-B of each "
        "tensor's largest magnitude, B = --nonweight-bits) or one qp for all (e.g. -75); default: auto",
    )
    compress.add_argument(
        "--nonweight-bits", type=int, default=10,
        help="relative precision B of --nonweight-qp auto, 1..24 (default: 10)",
    )
    add_workers_option(compress)
    add_debug_option(compress)

    add_inspect_command(commands)
    add_decode_command(commands)
    return parser


def _nonweight_qp(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer qp, got {text!r}") from None


def run_tool(argv: Sequence[str]) -> int:
    """Run ``compress``/``inspect``/``decode``; returns the exit status (errors are reported on stderr)."""
    args = build_tool_parser().parse_args(list(argv))
    handler = _compress if args.command == "compress" else FILE_HANDLERS[args.command]
    return run_command("ecqx", handler, args)


def _compress(args: argparse.Namespace) -> None:
    import ecqx
    from ecqx.coding import float32_bytes

    if args.bits < 1:
        raise FileCommandError(f"--bits must be a positive integer, got {args.bits}.")
    if args.lam < 0 or not math.isfinite(args.lam):
        raise FileCommandError(f"--lam must be a finite number >= 0, got {args.lam}.")
    check_workers(args.workers)
    output = args.output or default_output(args.model, ".nnc", "compressed")
    check_output(output, args.model)
    state_dict = _load_state_dict(args.model)
    _check_codable(state_dict, args.model)
    quantized = ecqx.quantize(state_dict, method=args.method, bits=args.bits, lam=args.lam, mode=args.mode)
    data = _encode(state_dict, quantized, args)
    write_output(output, lambda handle: handle.write(data))
    float_bytes = float32_bytes(state_dict)
    zeros, total = _zero_count(quantized)
    grid = "ternary" if args.method == "ec2t" else f"{args.bits} bit"
    print(
        f"{output}: {len(data)} bytes ({float_bytes / max(len(data), 1):.1f}x smaller than float32 "
        f"{float_bytes} bytes); {len(quantized)} of {len(state_dict)} tensors quantized "
        f"({args.method}, {grid}, λ={args.lam}), {zeros / max(total, 1):.1%} zeros"
    )


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The state_dict in a torch.save file; a file that is not one gives a one-line error naming it."""
    check_input(path, STATE_DICT_EXPECTED)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. about the pickle protocol of junk input
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise FileCommandError(f"{path}: cannot read it ({error.strerror or error})") from error
    except _LOAD_ERRORS as error:
        if _is_nnc_stream(path):
            raise FileCommandError(f"{path}: this is an NNC stream, not a state_dict; 'ecqx decode' turns it "
                                   "into one") from error
        raise FileCommandError(f"{path}: {_load_failure(error)}") from error
    try:
        return extract_state_dict(loaded, path)
    except TypeError as error:
        raise FileCommandError(str(error)) from error


def _is_nnc_stream(path: str) -> bool:
    from ecqx.coding import inspect_stream

    try:
        with open(path, "rb") as handle:
            inspect_stream(handle.read())  # headers only
    except (OSError, ValueError):
        return False
    return True


def _load_failure(error: BaseException) -> str:
    """What a torch.load error says about the file, and what is expected instead."""
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (f"it stores Python objects ({found.group(1)}), e.g. a whole model saved with "
                "torch.save(model); only tensors are loaded (weights_only=True), so save model.state_dict() "
                "instead")
    if isinstance(error, EOFError):
        reason = "the data ends early (a truncated file)"
    elif isinstance(error, RuntimeError) and "zip archive" in text:
        reason = "a damaged or truncated torch.save archive"
    else:
        found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = found.group(1) if found else (text.strip().splitlines() or [""])[0]
        detail = detail if len(detail) <= 100 else detail[:97] + "..."
        reason = f"not a file torch.load can read ({type(error).__name__}{': ' + detail if detail else ''})"
    return f"{reason}; expected {STATE_DICT_EXPECTED}"


def _check_codable(state_dict: Mapping[str, torch.Tensor], path: str) -> None:
    """Reject values no NNC stream can carry, naming the tensor (the codec's errors do not know the file)."""
    for name, tensor in state_dict.items():
        if tensor.numel() == 0:
            raise FileCommandError(f"{path}: tensor {name!r} is empty (shape {tuple(tensor.shape)}); NNC "
                                   "codes only tensors with at least one value")
        if not tensor.is_floating_point():
            continue
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise FileCommandError(f"{path}: tensor {name!r} holds {bad} NaN or infinite values; only finite "
                                   "values can be coded")
        peak = float(tensor.detach().abs().max())
        if peak > _FLOAT32_MAX:
            raise FileCommandError(f"{path}: tensor {name!r} holds values up to {peak:.4g} in magnitude; "
                                   f"NNC codes float32, allowed |x| <= {_FLOAT32_MAX:.4g}")


def _encode(state_dict: dict[str, torch.Tensor], quantized: Mapping[str, object],
            args: argparse.Namespace) -> bytes:
    from ecqx.coding import encode_state_dict

    try:
        return encode_state_dict(state_dict, quantized=quantized, nonweight_qp=args.nonweight_qp,
                                 nonweight_bits=args.nonweight_bits, workers=args.workers)
    except (ValueError, TypeError) as error:
        fixed_qp = args.nonweight_qp != "auto"
        reason = (_step_spread(state_dict, quantized, args.nonweight_qp) if fixed_qp else None) or str(error)
        raise FileCommandError(f"{args.model}: cannot be coded as one NNC stream: {reason}") from error


def _step_spread(state_dict: Mapping[str, torch.Tensor], quantized: Mapping[str, object],
                 nonweight_qp: int) -> str | None:
    """Name the tensors whose step sizes are too far apart for one stream, or ``None`` if they are not."""
    from ecqx.coding import quantize_tensor

    steps: dict[str, float] = {}
    for name, tensor in state_dict.items():
        if name in quantized:
            steps[name] = float(quantized[name].step)
        elif tensor.is_floating_point():
            # the step the coder will use: nonweight_qp, or coarser where the levels would overflow int32
            steps[name] = quantize_tensor(tensor.detach().float().reshape(-1), nonweight_qp).step
    if len(steps) < 2:
        return None
    fine, coarse = min(steps, key=steps.__getitem__), max(steps, key=steps.__getitem__)
    if steps[coarse] < steps[fine] * _STEP_SPREAD / 2:
        return None
    peak = float(state_dict[coarse].detach().abs().max())
    limit = steps[fine] * _STEP_SPREAD * 2.0**31  # levels reach 2^31 before the coder needs a coarser step
    hint = "" if fine in quantized else " (a larger --nonweight-qp raises it)"
    return (f"tensor {coarse!r} (values up to {peak:.3g}) needs the step {steps[coarse]:.3g} and tensor "
            f"{fine!r} the step {steps[fine]:.3g}, but the steps of one stream must lie within a factor "
            f"2^64; with these settings values must stay below about {limit:.2g} in magnitude{hint}")


def _zero_count(quantized: Mapping[str, object]) -> tuple[int, int]:
    zeros = sum(int((q.dequantize() == 0).sum()) for q in quantized.values())
    total = sum(q.levels.numel() for q in quantized.values())
    return zeros, total


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ecqx`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(OVERVIEW, end="")
        return 0 if argv else 2
    if argv and argv[0] in TOOL_COMMANDS:
        return run_tool(argv)
    if argv[0] == FEDERATE_COMMAND:
        from ecqx.training.federated import main as federate_main  # needs the [federated] extra (flwr)

        return federate_main(argv[1:])
    run_lightning(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
