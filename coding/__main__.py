"""Command line for .nnc files: `python -m ecqx.coding inspect FILE.nnc` / `decode FILE.nnc -o FILE.pt`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from ecqx.coding.inspect_stream import format_table, inspect_stream
from ecqx.coding.model import decode_state_dict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecqx.coding", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser("inspect", help="per-tensor table of an .nnc file")
    p_inspect.add_argument("file", type=Path)
    p_decode = sub.add_parser("decode", help="decode an .nnc file to a state_dict .pt file")
    p_decode.add_argument("file", type=Path)
    p_decode.add_argument("-o", "--output", type=Path, required=True)
    p_decode.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                          help="threads decoding tensors in parallel (default: the CPU count)")
    args = parser.parse_args(argv)
    try:
        data = args.file.read_bytes()
        if args.command == "inspect":
            print(format_table(inspect_stream(data)))
        else:
            torch.save(decode_state_dict(data, workers=args.workers), args.output)
            print(f"wrote {args.output}")
    except (OSError, ValueError) as exc:  # BitstreamError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
