"""Shared pytest fixtures.

The read-only project folder with specs, models and data is found through the environment variable
``ECQX_SHARED``; by default it is the folder ``shared`` next to the repository root (``../shared``).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent

# test helper modules (e.g. nncodec_oracle) live beside the tests
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


def shared_path() -> Path:
    """Root of the shared read-only folder (``$ECQX_SHARED`` or ``<repo>/../shared``)."""
    return Path(os.environ.get("ECQX_SHARED", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_path()
    assert path.is_dir(), f"shared folder not found at {path}; set ECQX_SHARED to its location"
    return path


@pytest.fixture(scope="session")
def reference_model(shared_dir):
    """The slow pure-Python NNC model of the spec (``spec/nnc-reference-model/nncproto.py``), as a module."""
    model_dir = shared_dir / "spec" / "nnc-reference-model"
    assert (model_dir / "nncproto.py").is_file(), f"reference model missing in {model_dir}"
    if str(model_dir) not in sys.path:
        sys.path.insert(0, str(model_dir))
    return importlib.import_module("nncproto")


@pytest.fixture(scope="session")
def oracle():
    """NNCodec 2.1.3 driven through :mod:`nncodec_oracle` (installed by the dev extra; never skipped)."""
    return importlib.import_module("nncodec_oracle")
