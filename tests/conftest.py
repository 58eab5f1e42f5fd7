"""Shared pytest fixtures.

The read-only project folder with specs, models and data is found through the environment variable
``ECQX_SHARED``; by default it is the folder ``shared`` next to the repository root (``../shared``).

Tests that need that folder carry the marker ``shared_data``: it is added automatically to every test that
uses the ``shared_dir`` or ``reference_model`` fixture (directly or through other fixtures), and can be
set by hand (``@pytest.mark.shared_data``) on a test that reaches for :func:`shared_path` itself. When the
folder is present they run as usual; when it is absent they are deselected (not skipped, not failed) and
the terminal summary says how many and why, so that ``python -m pytest`` passes on a bare clone. With
``ECQX_REQUIRE_SHARED=1`` (set by ``.ci/run``) an absent folder is an error instead.
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


SHARED_MARK = "shared_data"
# fixtures that reach into the shared folder; any test whose fixture closure holds one gets SHARED_MARK
SHARED_FIXTURES = frozenset({"shared_dir", "reference_model"})


def needs_shared(item: pytest.Item) -> bool:
    """Whether a collected test needs the shared folder (marked, or uses one of :data:`SHARED_FIXTURES`)."""
    return item.get_closest_marker(SHARED_MARK) is not None or not SHARED_FIXTURES.isdisjoint(
        getattr(item, "fixturenames", ())
    )


class _SharedDataGate:
    """Without the shared folder: deselects the tests marked ``shared_data``, says so in the summary."""

    def __init__(self) -> None:
        self.path = shared_path()
        self.present = self.path.is_dir()
        self.deselected = 0

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        # last, so that the count covers only tests that ``-m``/``-k`` left selected
        if self.present:
            return
        if os.environ.get("ECQX_REQUIRE_SHARED", "") not in ("", "0"):
            raise pytest.UsageError(
                f"ECQX_REQUIRE_SHARED is set but the shared data folder {self.path} is absent; "
                "set ECQX_SHARED to its location"
            )
        gone = [item for item in items if item.get_closest_marker(SHARED_MARK) is not None]
        if not gone:
            return
        items[:] = [item for item in items if item.get_closest_marker(SHARED_MARK) is None]
        config.hook.pytest_deselected(items=gone)
        self.deselected = len(gone)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.deselected:
            n = self.deselected
            what = "1 test deselected: it needs" if n == 1 else f"{n} tests deselected: they need"
            terminalreporter.write_sep(
                "=", f"{what} the shared data folder {self.path} (set ECQX_SHARED)", yellow=True
            )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_SharedDataGate(), "ecqx-shared-data-gate")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # first, so that ``-m``/``-k`` see the automatic marks (``-m shared_data``, ``-m "not shared_data"``)
    for item in items:
        if item.get_closest_marker(SHARED_MARK) is None and needs_shared(item):
            item.add_marker(SHARED_MARK)


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
