"""Command line for .nnc files: `python -m ecqx.coding inspect FILE.nnc` / `decode FILE.nnc -o FILE.pt`.

The commands are implemented once, in :mod:`ecqx.coding.cli`, and shared with the ``ecqx`` command.
"""

from __future__ import annotations

import sys

from ecqx.coding.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
