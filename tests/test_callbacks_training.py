"""The shadow-weight mechanics of ECQ / EC2T inside a real Trainer (tiny MLP, CPU, a few batches)."""

from __future__ import annotations

import pytest
import torch
from callback_helpers import params, synthetic_loader, tiny_module, tiny_trainer
from pytorch_lightning.callbacks import Callback

from ecqx.callbacks import EC2T, ECQ
from ecqx.ste import ste_gradient

TARGETS = ["model.fc1.weight", "model.fc2.weight", "model.fc3.weight"]


class GradientProbe(Callback):
    """Records parameter values and gradients at ``on_before_optimizer_step`` (at its list position)."""

    def __init__(self):
        self.values, self.grads = [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.values.append(params(pl_module))
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.named_parameters()})


def _fit(module, callbacks, **kwargs):
    trainer = tiny_trainer(callbacks, **kwargs)
    trainer.fit(module, synthetic_loader(), synthetic_loader(n=64))
    return trainer


def _assert_on_grid(module, callback):
    described = callback.quantized_tensors()
    assert sorted(described) == sorted(callback.targets)
    for name, value in params(module).items():
        if name in described:
            assert torch.equal(value, described[name].dequantize()), name


def test_warmup_is_full_precision_then_weights_are_exactly_on_the_grid():
    module, callback = tiny_module(), ECQ(bits=3, lam=0.05, start_epoch=1)
    _fit(module, [callback], max_epochs=1)
    assert not callback.is_active and callback.quantized_tensors() == {}
    assert all(torch.unique(params(module)[n]).numel() > 8 for n in TARGETS)  # still full precision
    _fit(module, [callback], max_epochs=2)
    assert callback.is_active and callback.targets == TARGETS
    _assert_on_grid(module, callback)
    for name in TARGETS:
        assert torch.unique(params(module)[name]).numel() <= 8  # 3 bits
        assert callback.shadows[name].data_ptr() != dict(module.named_parameters())[name].data_ptr()
        assert not torch.equal(
            callback.shadows[name], params(module)[name]
        )  # the shadow stays full precision


@pytest.mark.parametrize("scale", ["abs", "identity"])
def test_user_optimizer_steps_the_shadow_with_the_straight_through_gradient(scale):
    module = tiny_module()
    lr = 0.5
    module.configure_optimizers = lambda: torch.optim.SGD(module.parameters(), lr=lr)
    before, callback, after = GradientProbe(), ECQ(bits=4, lam=0.05, gradient_scale=scale), GradientProbe()
    _fit(module, [before, callback, after], max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    for name in TARGETS:
        quantized, raw_grad = before.values[0][name], before.grads[0][name]
        assert torch.equal(after.grads[0][name], ste_gradient(raw_grad, quantized, scale))
        swapped_in = after.values[0][name]  # the optimizer sees the shadow, not the quantized values
        assert not torch.equal(swapped_in, quantized)
        torch.testing.assert_close(
            callback.shadows[name], swapped_in - lr * after.grads[0][name], rtol=0, atol=1e-7
        )
    _assert_on_grid(module, callback)


def test_gradient_accumulation_steps_the_shadow_only_when_the_optimizer_steps():
    module, callback, probe = tiny_module(), ECQ(bits=4, lam=0.05), GradientProbe()
    _fit(module, [callback, probe], max_epochs=1, limit_train_batches=4, accumulate_grad_batches=2)
    assert callback.optimizer_steps == 2 and len(probe.values) == 2
    _assert_on_grid(module, callback)


@pytest.mark.parametrize("shape", ["optimizer", "list", "dict_with_scheduler"])
def test_common_configure_optimizers_shapes(shape):
    module = tiny_module()

    def configure():
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        if shape == "optimizer":
            return optimizer
        if shape == "list":
            return [optimizer]
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    module.configure_optimizers = configure
    callback = ECQ(bits=4, lam=0.05, start_epoch=1)
    trainer = _fit(module, [callback], max_epochs=3, limit_train_batches=2)
    _assert_on_grid(module, callback)
    assert callback.optimizer_steps == 4
    if shape == "dict_with_scheduler":
        assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_logged_statistics_match_the_model():
    module, callback = tiny_module(), ECQ(bits=4, lam=0.2)
    trainer = _fit(module, [callback], max_epochs=1)
    weights = params(module)
    zeros = sum(int((weights[n] == 0).sum()) for n in TARGETS)
    total = sum(weights[n].numel() for n in TARGETS)
    metrics = trainer.callback_metrics
    assert float(metrics["quant/sparsity"]) == pytest.approx(zeros / total)
    assert float(metrics["quant/lambda"]) == pytest.approx(0.2)
    first = weights[TARGETS[0]]
    _, counts = torch.unique(first, return_counts=True)
    pmf = counts.double() / first.numel()
    expected_bits = float(-(pmf * pmf.log2()).sum())
    assert float(metrics[f"quant/{TARGETS[0]}/bits_per_weight"]) == pytest.approx(expected_bits, rel=1e-5)
    assert float(metrics[f"quant/{TARGETS[0]}/sparsity"]) == pytest.approx(
        float((first == 0).double().mean())
    )
    assert float(metrics["quant/estimated_bytes"]) > 0


def test_bf16_mixed_precision_keeps_float32_grid_values():
    module, callback = tiny_module(), ECQ(bits=4, lam=0.05)
    _fit(module, [callback], max_epochs=1, limit_train_batches=2, precision="bf16-mixed")
    _assert_on_grid(module, callback)


def test_ec2t_ternary_weights_and_frozen_assignment_phase():
    module, callback = tiny_module(), EC2T(lam=0.15, freeze_epoch=1, centroid_lr=1e-2)

    class Snapshot(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                self.signs = torch.sign(params(pl_module)["model.fc2.weight"])
                self.shadow = callback.shadows["model.fc2.weight"].clone()
                self.values = torch.unique(params(pl_module)["model.fc2.weight"])

    snapshot = Snapshot()
    _fit(module, [callback, snapshot], max_epochs=2)
    assert callback.targets == ["model.fc2.weight"]  # first and last layer stay full precision
    weight = params(module)["model.fc2.weight"]
    values = torch.unique(weight)
    assert values.numel() == 3 and values[0] < 0 == values[1] < values[2]
    description = callback.quantized_tensors()["model.fc2.weight"]
    assert description.codebook.tolist() == sorted(set(description.levels.flatten().tolist()))
    assert torch.equal(weight, description.dequantize())
    # frozen phase: same assignment, shadow not stepped, but the magnitudes kept training
    assert torch.equal(torch.sign(weight), snapshot.signs)
    assert torch.equal(callback.shadows["model.fc2.weight"], snapshot.shadow)
    assert not torch.equal(values, snapshot.values)
