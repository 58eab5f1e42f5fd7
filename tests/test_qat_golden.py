"""The grouped quantizer step reproduces the per-tensor implementation bit for bit (golden end states).

``tests/golden/qat_golden.pt`` holds the end state of ten short training runs (ECQ 3/4/7 bit, ECQx, EC2T
with a
frozen phase; clean and faithful; an MLP and LeNet-5) recorded by ``tests/record_qat_golden.py`` with the
per-tensor implementation. Every parameter, every tensor of the callback's checkpoint state and every exported
level must be identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from qat_scenarios import SCENARIOS, run_scenario

import ecqx.grouped

GOLDEN = torch.load(Path(__file__).resolve().parent / "golden" / "qat_golden.pt", weights_only=True)


@pytest.mark.parametrize("path", ["grouped", "per_tensor"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_end_state_equals_per_tensor_implementation(name, path, monkeypatch):
    monkeypatch.setattr(ecqx.grouped, "PATH", path)  # both implementations of the group assignment
    expected = GOLDEN["scenarios"][name]
    got = run_scenario(name)
    assert sorted(got) == sorted(expected)
    different = [key for key, value in expected.items() if not torch.equal(got[key], value)]
    assert not different, f"{len(different)} of {len(expected)} tensors differ, e.g. {different[:5]}"
