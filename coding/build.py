"""Pre-builds the codec extension: `python -m ecqx.coding.build [--verbose]` (CI, clusters, containers).

The build goes to `$TORCH_EXTENSIONS_DIR` (else torch's default cache) in a folder named after a hash of the
sources and toolchain, where every later process of any install with the same sources and toolchain finds it.
"""

from __future__ import annotations

import argparse
import sys

from ecqx.coding.errors import NativeBuildError
from ecqx.coding.native import load_native


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecqx.coding.build", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands and output")
    args = parser.parse_args(argv)
    try:
        module = load_native(verbose=args.verbose)
    except NativeBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"codec extension ready: {module.__file__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
