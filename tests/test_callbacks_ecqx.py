"""ECQx: relevance refresh schedule, running average, reference data, and its use in the assignment."""

from __future__ import annotations

import pytest
import torch
from callback_helpers import params, synthetic_loader, tiny_module, tiny_trainer

import ecqx.relevance
from ecqx.assign import assign, levels_of
from ecqx.callbacks import ECQx


@pytest.fixture
def recorded(monkeypatch):
    """Record every call of ``ecqx.relevance.weight_relevances`` (inputs and results), still running it."""
    calls = []
    original = ecqx.relevance.weight_relevances

    def recording(model, inputs, targets, **kwargs):
        result = original(model, inputs, targets, **kwargs)
        calls.append(
            {"inputs": inputs.clone(), "result": {k: v.clone() for k, v in result.items()}, "kwargs": kwargs}
        )
        return result

    monkeypatch.setattr(ecqx.relevance, "weight_relevances", recording)
    return calls


def _fit(callback, max_epochs=1, batches=4, **kwargs):
    module = tiny_module()
    trainer = tiny_trainer([callback], max_epochs=max_epochs, limit_train_batches=batches, **kwargs)
    trainer.fit(module, synthetic_loader(), synthetic_loader(n=64, seed=7))
    return module, trainer


def test_refresh_every_n_steps_and_reset_each_epoch(recorded):
    callback = ECQx(bits=4, lam=0.1, relevance_every_n_steps=3)
    _fit(callback, max_epochs=2)
    # epoch 0: steps 1 (no running relevance yet) and 3; epoch 1 (reset): steps 5 (empty) and 6
    assert len(recorded) == 4
    assert recorded[0]["kwargs"]["names"] == callback.targets
    assert recorded[0]["kwargs"]["backend"] == "zennit"


def test_default_refreshes_every_10_steps_and_at_each_epoch_start(recorded):
    # the default trades the reference's every-step LRP pass (2.6x the cost of an ECQ step on LeNet-5) for one
    # pass per 10 steps (1.26x); see benchmarks/results/bench_relevance_t1.md
    callback = ECQx(bits=4, lam=0.1)
    module = tiny_module()
    trainer = tiny_trainer([callback], max_epochs=2, limit_train_batches=12)
    trainer.fit(module, synthetic_loader(n=12 * 32), synthetic_loader(n=64, seed=7))
    # epoch 0: steps 1 (no running relevance yet) and 10; epoch 1 (reset): steps 13 and 20
    assert len(recorded) == 4


def test_running_average_weights_the_previous_value_with_alpha(recorded):
    callback = ECQx(bits=4, lam=0.1, alpha=0.25, relevance_every_n_steps=1)
    _fit(callback, batches=2)
    assert len(recorded) == 2
    for name in callback.targets:
        first, second = recorded[0]["result"][name], recorded[1]["result"][name]
        torch.testing.assert_close(callback.relevances[name], 0.75 * second + 0.25 * first)


def test_relevances_on_the_current_batch_or_a_fixed_reference(recorded):
    _fit(ECQx(bits=4, lam=0.1, relevance_every_n_steps=1), batches=2)
    train_batches = [x for x, _ in synthetic_loader()]
    assert torch.equal(recorded[0]["inputs"], train_batches[0])
    assert torch.equal(recorded[1]["inputs"], train_batches[1])
    recorded.clear()
    every_step = dict(relevance_every_n_steps=1)
    _fit(ECQx(bits=4, lam=0.1, relevance_source="val", relevance_batches=2, **every_step), batches=2)
    val_batches = [x for x, _ in synthetic_loader(n=64, seed=7)]
    assert [torch.equal(c["inputs"], v) for c, v in zip(recorded, val_batches * 2, strict=True)] == [True] * 4


def test_running_relevance_drives_the_assignment():
    callback = ECQx(bits=4, lam=0.3, p=0.2, relevance_every_n_steps=1)
    module, trainer = _fit(callback, batches=3)
    weights = params(module)
    group = callback.group
    for t, name in enumerate(callback.targets):
        grid = group.grids[t]
        expected = assign(
            callback.shadows[name],
            grid,
            0.3,
            group.decays[t],
            "clean",
            relevance=callback.relevances[name],
            p=0.2,
        )
        assert torch.equal(callback.levels[name], levels_of(expected, grid))
        assert torch.equal(weights[name], callback.quantized_tensors()[name].dequantize())
    assert "quant/relevance_flips" in trainer.callback_metrics


def test_captum_backend():
    callback = ECQx(bits=4, lam=0.1, backend="captum")
    module, _ = _fit(callback, batches=2)
    assert set(callback.relevances) == set(callback.targets)
    assert all(torch.isfinite(r).all() for r in callback.relevances.values())
