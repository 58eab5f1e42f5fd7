"""Argument validation in ``__init__`` and model-dependent checks in ``setup``/``on_fit_start``."""

from __future__ import annotations

import warnings

import pytest
import torch
from callback_helpers import synthetic_loader, tiny_module, tiny_trainer
from pytorch_lightning import LightningModule
from torch import nn

from ecqx.callbacks import EC2T, ECQ, ECQx, NNCExport, RateDistortion


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: ECQ(bits=1), r"`bits` must be an integer in 2..8, got 1"),
        (lambda: ECQ(bits=4.0), r"`bits` must be an integer in 2..8, got 4.0"),
        (lambda: ECQ(lam=-0.1), r"`lam` must be a number in >= 0.0, got -0.1"),
        (lambda: ECQ(start_epoch=-1), r"`start_epoch` must be an integer >= 0, got -1"),
        (lambda: ECQ(mode="exact"), r"`mode` must be one of \('clean', 'faithful'\), got 'exact'"),
        (
            lambda: ECQ(gradient_scale="sign"),
            r"`gradient_scale` must be one of \('abs', 'signed', 'identity'\)",
        ),
        (lambda: ECQx(p=1.5), r"`p` must be a number in \[0.0, 1.0\], got 1.5"),
        (lambda: ECQx(alpha=-1), r"`alpha` must be a number in \[0.0, 1.0\], got -1"),
        (
            lambda: ECQx(relevance_every_n_steps=0),
            r"`relevance_every_n_steps` must be an integer >= 1, got 0",
        ),
        (
            lambda: ECQx(relevance_source="test"),
            r"`relevance_source` must be one of \('batch', 'val'\), got 'test'",
        ),
        (lambda: ECQx(backend="lime"), r"`backend` must be one of \('zennit', 'captum'\), got 'lime'"),
        (lambda: EC2T(start_epoch=2, freeze_epoch=1), r"`freeze_epoch` must be an integer >= 2, got 1"),
        (lambda: EC2T(init_scale=0), r"`init_scale` must be in \(0, 1\], got 0"),
        (lambda: EC2T(resolution=17), r"`resolution` must be an integer in 1..16, got 17"),
        (lambda: NNCExport(""), r"`path` must be a non-empty file path, got ''"),
        (
            lambda: NNCExport("m.nnc", every_n_epochs=0),
            r"`every_n_epochs` must be None or an integer >= 1, got 0",
        ),
        (lambda: NNCExport("m.nnc", stage="train"), r"`stage` must be one of \['test', 'val'\], got 'train'"),
        (lambda: RateDistortion("out", monitor=""), r"`monitor` must be the name of a logged metric, got ''"),
        (lambda: ECQ(module_types=()), r"`module_types` must be a tuple of nn.Module subclasses, got \(\)"),
        (lambda: EC2T(module_types=(nn.Linear, "x")), r"`module_types` must be a tuple of nn.Module subcl"),
    ],
)
def test_bad_arguments_name_argument_value_and_allowed_set(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def _fit(module, callbacks, **trainer_kwargs):
    tiny_trainer(callbacks, max_epochs=1, limit_train_batches=1, limit_val_batches=1, **trainer_kwargs).fit(
        module, synthetic_loader(), synthetic_loader()
    )


def test_no_quantizable_layer_fails_in_setup():
    with pytest.raises(
        ValueError, match=r"found no layer to quantize in ClassificationModule .*exclude_first=True"
    ):
        _fit(tiny_module(hidden=()), [EC2T()])  # a single linear layer: EC2T keeps first and last in FP


def test_manual_optimization_is_rejected():
    module = tiny_module()
    module.automatic_optimization = False
    with pytest.raises(ValueError, match="needs Lightning's automatic optimization"):
        _fit(module, [ECQ()])


def test_true_half_precision_is_rejected():
    with pytest.raises(ValueError, match=r"needs float32 parameters, got precision='bf16-true'"):
        _fit(tiny_module(), [ECQ()], precision="bf16-true")


def test_two_quantization_callbacks_are_rejected():
    with pytest.raises(
        ValueError, match="only one quantization callback per Trainer is supported, got ECQ, ECQx"
    ):
        _fit(tiny_module(), [ECQ(), ECQx()])


def test_lbfgs_is_rejected():
    module = tiny_module()
    module.configure_optimizers = lambda: torch.optim.LBFGS(module.parameters())
    with pytest.raises(ValueError, match="does not support LBFGS"):
        _fit(module, [ECQ()])


def test_quantized_tensor_outside_the_optimizer_is_rejected():
    module = tiny_module()
    module.configure_optimizers = lambda: torch.optim.Adam(module.model.fc3.parameters())
    with pytest.raises(
        ValueError, match=r"does not step the quantized tensors \['model.fc1.weight', 'model.fc2"
    ):
        _fit(module, [ECQ()])


def test_export_without_validation_step_is_rejected_before_training(tmp_path):
    module = tiny_module()

    class NoValidation(type(module)):  # is_overridden looks at the class
        validation_step = LightningModule.validation_step

    module.__class__ = NoValidation
    with pytest.raises(ValueError, match=r"NNCExport\(evaluate=True, stage='val'\) .*validation_step"):
        _fit(module, [ECQ(), NNCExport(tmp_path / "m.nnc")])


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -0.1])
@pytest.mark.parametrize("factory", [ECQ, ECQx, EC2T])
def test_lam_must_be_a_finite_nonnegative_number_at_construction(factory, value):
    with pytest.raises(ValueError, match=r"`lam` must be a number in >= 0.0, got .* \(finite numbers only\)"):
        factory(lam=value)


def _first_last_warnings(callback) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tiny_module(), [callback])
    return [str(w.message) for w in caught if "first and last layers" in str(w.message)]


def test_first_and_last_layer_defaults_and_the_two_bit_warning():
    # ECQ/ECQx quantize the first and last layer by default (the reference ECQ), EC2T keeps them in full
    # precision (the reference EC2T); the reasons are in the docstrings
    everything = ["model.fc1.weight", "model.fc2.weight", "model.fc3.weight"]
    for callback, targets in [(ECQ(), everything), (ECQx(), everything), (EC2T(), ["model.fc2.weight"])]:
        _fit(tiny_module(), [callback])
        assert callback.targets == targets, type(callback).__name__
    # at 2 bits the defaults warn (the grid is nearly as coarse as EC2T's ternary one); explicit flags do not
    (message,) = _first_last_warnings(ECQx(bits=2))
    layers = "['model.fc1.weight', 'model.fc3.weight']"
    assert f"ECQx(bits=2) quantizes the first and last layers {layers}" in message
    assert "exclude_first=True, exclude_last=True" in message
    assert _first_last_warnings(ECQ(bits=3)) == []
    assert _first_last_warnings(ECQ(bits=2, exclude_first=False, exclude_last=False)) == []
    quiet = ECQ(bits=2, exclude_first=True, exclude_last=True)
    assert _first_last_warnings(quiet) == [] and quiet.targets == ["model.fc2.weight"]
