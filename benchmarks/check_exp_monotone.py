"""Checks the two float32 properties the grouped ECQx β search relies on, on one device, exhaustively.

ecqx.grouped finds, per weight, the first float32 β at which the reference's zero test holds; that is exact
only if float32 ``exp`` never decreases as its argument grows (over every float32 in [-104, 0], below which it
returns 0) and float32 ``log`` of every value in (0, 1] is <= 0. torch documents neither for every device, so
run this once per device kind before relying on bit-identity there:

    python benchmarks/check_exp_monotone.py --device cuda

Prints one line per property and exits 1 when one fails (with the first offending inputs).
"""

from __future__ import annotations

import argparse
import sys

import torch

CHUNK = 1 << 26


def _float32_range(low: float, high: float) -> tuple[int, int]:
    """Bit patterns (as int64) of the float32 values from low up to high, in increasing value order."""
    to_bits = lambda x: torch.tensor([x], dtype=torch.float32).view(torch.int32).item()  # noqa: E731
    return to_bits(low), to_bits(high)


def _values_in_order(device: torch.device):
    """Every float32 in [-104, 0] in increasing order, in chunks (negative floats: bit patterns descend)."""
    first, last = _float32_range(-104.0, -0.0)
    # for negative floats a larger bit pattern is a smaller value: walk the patterns downwards
    start = first
    while start >= last:
        stop = max(start - CHUNK, last - 1)
        bits = torch.arange(start, stop, -1, dtype=torch.int64, device=device).to(torch.int32)
        yield bits.view(torch.float32)
        start = stop


def check_exp(device: torch.device) -> bool:
    previous = None
    for values in _values_in_order(device):
        out = torch.exp(values)
        if previous is not None and bool(out[0] < previous):
            print(f"exp: not monotone across a chunk boundary at {values[0].item()!r}")
            return False
        bad = torch.nonzero(out[1:] < out[:-1])
        if bad.numel():
            i = int(bad[0, 0])
            print(f"exp: exp({values[i].item()!r}) = {out[i].item()!r} > exp({values[i + 1].item()!r}) = "
                  f"{out[i + 1].item()!r}")
            return False
        previous = out[-1]
    print(f"exp: monotone over every float32 in [-104, 0] on {device}")
    return True


def check_log(device: torch.device) -> bool:
    first, last = _float32_range(torch.finfo(torch.float32).tiny / 2**23, 1.0)
    for start in range(first, last + 1, CHUNK):
        bits = torch.arange(start, min(start + CHUNK, last + 1), dtype=torch.int64, device=device)
        values = bits.to(torch.int32).view(torch.float32)
        bad = torch.nonzero(torch.log(values) > 0)
        if bad.numel():
            print(f"log: log({values[int(bad[0, 0])].item()!r}) > 0")
            return False
    print(f"log: <= 0 for every float32 in (0, 1] on {device}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    return 0 if check_exp(device) & check_log(device) else 1


if __name__ == "__main__":
    sys.exit(main())
