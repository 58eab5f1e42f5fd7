"""Run description written into every benchmark's JSON: command, machine, threads and versions.

Shared by the benchmark scripts, which are run as ``python benchmarks/<script>.py`` (this folder is then on
``sys.path``)."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch

import ecqx


def environment(threads: int, **versions: str) -> dict:
    """Command line, machine, CPU count, torch threads, Python/torch/ecqx (and `versions`), UTC time."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        **versions,
        "ecqx": getattr(ecqx, "__version__", "dev"),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
