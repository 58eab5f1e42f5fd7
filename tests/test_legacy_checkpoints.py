"""Checkpoints written by the per-tensor implementation resume with the grouped state to the same end state.

``tests/golden/legacy_<method>.ckpt`` and the end states of resuming them with the old code were recorded by
``tests/record_legacy_checkpoints.py`` before the grouped quantizer state replaced the per-tensor one. The
EC2T
checkpoint also carries the old per-magnitude Adam state, which must be converted, not reset.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from record_legacy_checkpoints import FACTORIES, end_state, fit

GOLDEN = Path(__file__).resolve().parent / "golden"
EXPECTED = torch.load(GOLDEN / "legacy_resume.pt", weights_only=True)


@pytest.mark.parametrize("method", sorted(FACTORIES))
def test_legacy_checkpoint_resumes_to_the_same_end_state(method):
    checkpoint = torch.load(GOLDEN / f"legacy_{method}.ckpt", weights_only=False)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith(("ECQ", "EC2T"))]
    assert "tensors" in state and "group" not in state  # really the per-tensor format
    module, callback, _ = fit(method, max_epochs=4, ckpt_path=GOLDEN / f"legacy_{method}.ckpt")
    got, expected = end_state(module, callback), EXPECTED[method]
    assert sorted(got) == sorted(expected)
    different = [k for k, v in expected.items() if not torch.equal(got[k], v)]
    assert not different, different


def test_grouped_checkpoint_round_trips_through_the_group_state_dict(tmp_path):
    _, callback, trainer = fit("ec2t", max_epochs=2)
    state = callback.state_dict()
    assert set(state["group"]["tensors"]) == set(callback.targets)
    fresh = FACTORIES["ec2t"]()
    fresh.load_state_dict(state)
    assert fresh._pending_state is state
