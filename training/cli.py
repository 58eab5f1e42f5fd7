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
import os
import sys
from collections.abc import Mapping, Sequence
from importlib import resources

import torch
from pytorch_lightning import LightningDataModule
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities import rank_zero_only

from ecqx.training.models import extract_state_dict
from ecqx.training.module import ClassificationModule
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

'ecqx <command> --help' shows the options of a command.
"""


def default_config_path() -> str:
    """Path of the embedded default recipe that ``ecqx fit`` runs without ``--config``."""
    return str(resources.files("ecqx.training").joinpath(DEFAULT_CONFIG))


class EcqxCLI(LightningCLI):
    """LightningCLI with the ``fit``, ``validate`` and ``test`` subcommands; prints the metrics after fit."""

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

    def after_fit(self) -> None:
        _print_summary(self.trainer.callback_metrics)


@rank_zero_only
def _print_summary(metrics: Mapping[str, torch.Tensor]) -> None:
    if metrics:
        print(format_metrics(metrics))


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


def build_tool_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``compress``, ``inspect`` and ``decode``."""
    parser = argparse.ArgumentParser(prog="ecqx", description="Work with NNC (.nnc) model files.")
    commands = parser.add_subparsers(dest="command", required=True)

    compress = commands.add_parser(
        "compress",
        help="post-training ECQ/EC2T quantization of a state_dict file, written as an NNC bitstream",
        description="Quantize a saved state_dict (no data needed) and write it as an NNC bitstream. "
        "Tensors the quantizer selects are coded losslessly from their integer levels, the other float "
        "tensors with the fine --nonweight-qp step, integer buffers losslessly.",
    )
    compress.add_argument("model", help="state_dict file (torch.save; a checkpoint dict works too)")
    compress.add_argument("-o", "--output", help="output .nnc file (default: MODEL with suffix .nnc)")
    compress.add_argument("--method", choices=("ecq", "ec2t"), default="ecq", help="quantizer (default: ecq)")
    compress.add_argument("--bits", type=int, default=4, help="ecq grid bit width (default: 4)")
    compress.add_argument("--lam", type=float, default=0.05, help="entropy constraint λ (default: 0.05)")
    compress.add_argument(
        "--mode", choices=("clean", "faithful"), default="clean", help="quantizer variant (default: clean)"
    )
    compress.add_argument(
        "--nonweight-qp", type=int, default=-75, help="qp of the non-quantized float tensors (default: -75)"
    )
    _add_workers_option(compress)

    inspect = commands.add_parser("inspect", help="print the per-tensor table of an .nnc file")
    inspect.add_argument("file", help=".nnc file")

    decode = commands.add_parser("decode", help="decode an .nnc file into a state_dict file (torch.save)")
    decode.add_argument("file", help=".nnc file")
    decode.add_argument("-o", "--output", help="output file (default: FILE with suffix .pt)")
    _add_workers_option(decode)
    return parser


def _add_workers_option(parser: argparse.ArgumentParser) -> None:
    default = os.cpu_count() or 1
    parser.add_argument("--workers", type=int, default=default,
                        help=f"threads coding tensors in parallel; the bytes do not depend on it "
                             f"(default: the CPU count, {default})")


def run_tool(argv: Sequence[str]) -> int:
    """Run ``compress``/``inspect``/``decode``; returns the exit status (errors are reported on stderr)."""
    args = build_tool_parser().parse_args(list(argv))
    handler = {"compress": _compress, "inspect": _inspect, "decode": _decode}[args.command]
    try:
        handler(args)
    except _tool_errors() as error:
        print(f"ecqx {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


def _tool_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, TypeError, RuntimeError)
    try:
        from ecqx.coding import NativeBuildError
    except ImportError:
        return errors
    return (*errors, NativeBuildError)


def _compress(args: argparse.Namespace) -> None:
    import ecqx
    from ecqx.coding import encode_state_dict

    if args.bits < 1:
        raise ValueError(f"--bits must be a positive integer, got {args.bits}.")
    if args.lam < 0 or not math.isfinite(args.lam):
        raise ValueError(f"--lam must be a finite number >= 0, got {args.lam}.")
    state_dict = _load_state_dict(args.model)
    quantized = ecqx.quantize(state_dict, method=args.method, bits=args.bits, lam=args.lam, mode=args.mode)
    data = encode_state_dict(state_dict, quantized=quantized, nonweight_qp=args.nonweight_qp,
                             workers=args.workers)
    output = args.output or _replace_suffix(args.model, ".nnc")
    _write_bytes(output, data)
    float_bytes = sum(4 * t.numel() for t in state_dict.values() if t.is_floating_point())
    zeros, total = _zero_count(quantized)
    grid = "ternary" if args.method == "ec2t" else f"{args.bits} bit"
    print(
        f"{output}: {len(data)} bytes ({float_bytes / max(len(data), 1):.1f}x smaller than float32 "
        f"{float_bytes} bytes); {len(quantized)} of {len(state_dict)} tensors quantized "
        f"({args.method}, {grid}, λ={args.lam}), {zeros / max(total, 1):.1%} zeros"
    )


def _inspect(args: argparse.Namespace) -> None:
    from ecqx.coding import format_table, inspect_stream

    print(format_table(inspect_stream(_read_bytes(args.file))))


def _decode(args: argparse.Namespace) -> None:
    from ecqx.coding import decode_state_dict

    state_dict = decode_state_dict(_read_bytes(args.file), workers=args.workers)
    output = args.output or _replace_suffix(args.file, ".pt")
    torch.save(state_dict, output)
    print(f"{output}: {len(state_dict)} tensors")


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no state_dict file at {path!r}")
    return extract_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)


def _read_bytes(path: str) -> bytes:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file at {path!r}")
    with open(path, "rb") as handle:
        return handle.read()


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def _replace_suffix(path: str, suffix: str) -> str:
    return os.path.splitext(path)[0] + suffix


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
    run_lightning(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
