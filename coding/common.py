"""Limits and small helpers shared by the codec's input normalisation, encoder and decoder.

This module imports nothing from the rest of the package, so that every codec module can use it without an
import cycle.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

DEFAULT_QP_DENSITY = 2
QP_BASE_RANGE = (-(2**12), 2**12 - 1)
INT32_RANGE = (-(2**31) + 1, 2**31 - 1)  # -2^31 cannot be coded (spec §7.1)
DEFAULT_MAX_ELEMENTS = 1 << 28


def _geometry(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, width) of the matrix the coder scans: the first dimension by the product of the others
    (width 1 for 1-D tensors)."""
    count = math.prod(shape)
    width = math.prod(shape[1:]) if len(shape) > 1 else 1
    return count // width, width


def _check_workers(workers: object) -> int:
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be an int >= 1 (tensors coded in parallel threads), got {workers!r}")
    return int(workers)


def _map_in_order(fn, items: list, workers: int) -> list:
    """fn over items, in order; with workers > 1 in a thread pool (the native coder releases the GIL, and
    every tensor is an independent NDU, so the bytes do not depend on the number of workers)."""
    if workers == 1 or len(items) < 2:
        return [fn(it) for it in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))
