"""The file commands on NNC streams, shared by ``python -m ecqx.coding`` and the ``ecqx`` command.

``inspect FILE.nnc`` prints the per-tensor table, ``decode FILE.nnc [-o FILE.pt]`` writes the decoded
state_dict with ``torch.save``. The helpers used by every file command live here too, so that ``ecqx
compress`` behaves the same way: inputs are checked before any work, an output that is (or links to) an
input is refused, outputs are written atomically (a failed run leaves the previous file as it was), and
errors are one line ``PROG COMMAND: error: FILE: what is wrong`` with exit status 1; ``--debug`` re-raises
instead, to show the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import BinaryIO

import torch

from ecqx.coding.common import DEFAULT_MAX_ELEMENTS
from ecqx.coding.errors import BitstreamError, NativeBuildError
from ecqx.coding.files import atomic_write
from ecqx.coding.inspect_stream import format_table, inspect_stream
from ecqx.coding.model import decode_state_dict

__all__ = [
    "FileCommandError",
    "HANDLERS",
    "add_debug_option",
    "add_decode_command",
    "add_inspect_command",
    "add_workers_option",
    "build_parser",
    "check_input",
    "check_output",
    "check_workers",
    "default_output",
    "main",
    "read_input",
    "run_command",
    "run_decode",
    "run_inspect",
    "write_output",
]

PROG = "python -m ecqx.coding"
NNC_EXPECTED = "an NNC bitstream (.nnc)"
_ZIP_MAGIC = b"PK\x03\x04"


class FileCommandError(Exception):
    """A problem with the user's files or options; reported as one line whose text names the file."""


# -- arguments -------------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback instead of the one-line message")


def add_workers_option(parser: argparse.ArgumentParser) -> None:
    default = os.cpu_count() or 1
    parser.add_argument("--workers", type=int, default=default,
                        help=f"threads coding tensors in parallel; the result does not depend on it "
                             f"(default: the CPU count, {default})")


def _add_max_elements_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-elements", type=positive_int, default=None, metavar="N",
                        help="refuse a stream whose tensors hold more than N values in total before "
                             f"allocating them (default: {DEFAULT_MAX_ELEMENTS}); raise it for a trusted "
                             "stream of a larger model")


def add_inspect_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``inspect`` subcommand to a subparsers object; returns its parser."""
    parser = commands.add_parser("inspect", help="print the per-tensor table of an .nnc file",
                                 description="Print one row per tensor of an NNC stream: shape, dtype, "
                                             "payload type, qp, step size, bytes, bits per value, zeros.")
    parser.add_argument("file", help=".nnc file")
    parser.add_argument("--values", action="store_true",
                        help="also decode every tensor for its fraction of zeros (the table is otherwise "
                             "read from the headers; decoding is bounded by --max-elements)")
    _add_max_elements_option(parser)
    add_debug_option(parser)
    return parser


def add_decode_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``decode`` subcommand to a subparsers object; returns its parser."""
    parser = commands.add_parser("decode", help="decode an .nnc file into a state_dict file (torch.save)",
                                 description="Decode an NNC stream into a state_dict file (torch.save).")
    parser.add_argument("file", help=".nnc file")
    parser.add_argument("-o", "--output",
                        help="output file (default: FILE with suffix .pt, or FILE.decoded.pt when that "
                             "would be FILE itself); never the input file")
    add_workers_option(parser)
    _add_max_elements_option(parser)
    add_debug_option(parser)
    return parser


def check_workers(workers: int) -> None:
    """Raise :class:`FileCommandError` unless ``--workers`` is a positive integer."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise FileCommandError(f"--workers must be an int >= 1, got {workers!r}")


# -- inputs and outputs ----------------------------------------------------------------------------------


def check_input(path: str, expected: str) -> None:
    """Raise :class:`FileCommandError` unless ``path`` is a readable, non-empty file."""
    if not os.path.lexists(path):
        raise FileCommandError(f"{path}: no such file; expected {expected}")
    if os.path.isdir(path):
        raise FileCommandError(f"{path}: is a directory; expected {expected}")
    try:
        size = os.stat(path).st_size
    except OSError as error:
        reason = error.strerror or error
        raise FileCommandError(f"{path}: cannot read it ({reason}); expected {expected}") from error
    if size == 0 and os.path.isfile(path):
        raise FileCommandError(f"{path}: the file is empty; expected {expected}")


def read_input(path: str, expected: str = NNC_EXPECTED) -> bytes:
    """The bytes of an input file, after :func:`check_input`."""
    check_input(path, expected)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise FileCommandError(f"{path}: cannot read it ({error.strerror or error})") from error
    if not data:
        raise FileCommandError(f"{path}: the file is empty; expected {expected}")
    return data


def _same_file(first: str, second: str) -> bool:
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        return os.path.samefile(first, second)  # hard links; False when either does not exist
    except OSError:
        return False


def check_output(output: str, *inputs: str) -> None:
    """Refuse an output path that is a directory, lies in a missing folder, or is one of the inputs.

    "Is an input" covers the same path spelt differently, symbolic links (real paths compared) and hard
    links (``os.path.samefile``).
    """
    if os.path.isdir(output):
        raise FileCommandError(f"{output}: is a directory; give the path of the output file")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise FileCommandError(f"{output}: the folder {folder} does not exist")
    for source in inputs:
        if _same_file(output, source):
            raise FileCommandError(f"{output}: refusing to overwrite the input file {source} (the output is "
                                   f"the same file); choose another output path with -o")


def default_output(source: str, suffix: str, tag: str) -> str:
    """``source`` with ``suffix`` instead of its own; ``<stem>.<tag><suffix>`` when that is ``source``."""
    stem = os.path.splitext(source)[0]
    candidate = stem + suffix
    return f"{stem}.{tag}{suffix}" if _same_file(candidate, source) else candidate


def write_output(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Atomically write ``path`` (see :func:`ecqx.coding.files.atomic_write`); I/O errors name the file."""
    try:
        atomic_write(path, write)
    except OSError as error:
        raise FileCommandError(f"{path}: cannot write it ({error.strerror or error}); "
                               f"the previous file, if any, is unchanged") from error


# -- commands --------------------------------------------------------------------------------------------


def _budget(max_elements: int | None) -> dict[str, int]:
    return {} if max_elements is None else {"max_elements": max_elements}


def _read_stream(path: str, function: Callable, data: bytes, **options):
    """``function(data, **options)`` with bitstream problems turned into one-line errors naming ``path``."""
    try:
        return function(data, **options)
    except BitstreamError as error:
        hint = ""
        if data.startswith(_ZIP_MAGIC):
            hint = " (this is a zip archive such as a torch.save file; 'ecqx compress' codes a state_dict)"
        raise FileCommandError(f"{path}: cannot read it as an NNC stream: {error}{hint}") from error
    except ValueError as error:
        raise FileCommandError(f"{path}: {error}") from error


def run_inspect(args: argparse.Namespace) -> None:
    """The ``inspect`` command: print the table of ``args.file``."""
    data = read_input(args.file)
    rows = _read_stream(args.file, inspect_stream, data, values=args.values, **_budget(args.max_elements))
    print(format_table(rows))


def run_decode(args: argparse.Namespace) -> None:
    """The ``decode`` command: decode ``args.file`` and ``torch.save`` the state_dict to the output."""
    check_workers(args.workers)
    output = args.output or default_output(args.file, ".pt", "decoded")
    check_output(output, args.file)
    data = read_input(args.file)
    state_dict = _read_stream(args.file, decode_state_dict, data, workers=args.workers,
                              **_budget(args.max_elements))
    write_output(output, lambda handle: torch.save(state_dict, handle))
    print(f"{output}: {len(state_dict)} tensors")


HANDLERS: dict[str, Callable[[argparse.Namespace], None]] = {"inspect": run_inspect, "decode": run_decode}


def run_command(prog: str, handler: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Run one file command; returns the exit status (0, 1 on an error, 130 when interrupted).

    Errors are reported as one line on stderr. :class:`FileCommandError` and :class:`NativeBuildError`
    carry a message for the user; any other exception is reported with its type name, since it is
    unexpected. With ``args.debug`` every exception propagates, traceback included.
    """
    label = f"{prog} {args.command}"
    try:
        handler(args)
    except (FileCommandError, NativeBuildError) as error:
        if getattr(args, "debug", False):
            raise
        print(f"{label}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print(f"{label}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of stdout stopped early (`... | head`): what it read is complete, nothing to report
        _silence_stdout()
        return 0
    except Exception as error:
        if getattr(args, "debug", False):
            raise
        lines = str(error).strip().splitlines()
        detail = f": {lines[0]}" if lines else ""
        print(f"{label}: error: {type(error).__name__}{detail} (--debug shows the traceback)",
              file=sys.stderr)
        return 1
    return 0


def _silence_stdout() -> None:
    """Point stdout at the null device, so that the final flush at exit does not fail a second time."""
    try:
        descriptor = os.open(os.devnull, os.O_WRONLY)
        os.dup2(descriptor, sys.stdout.fileno())
        os.close(descriptor)
    except (OSError, ValueError):  # no real descriptor behind sys.stdout (captured output)
        pass


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The parser of ``python -m ecqx.coding`` (``inspect`` and ``decode``)."""
    parser = argparse.ArgumentParser(prog=prog, description="Inspect or decode NNC (.nnc) files.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_inspect_command(commands)
    add_decode_command(commands)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Entry point of ``python -m ecqx.coding``; returns the exit status."""
    args = build_parser(prog).parse_args(None if argv is None else list(argv))
    return run_command(prog, HANDLERS[args.command], args)
