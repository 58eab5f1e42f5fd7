"""Resuming a checkpoint whose quantization state does not fit the callback is a clear error, not a restart.

Lightning hands each callback only the state stored under its own key (the class name), so without a check a
checkpoint written with ``ECQ`` and resumed with ``EC2T`` or ``ECQx`` would silently drop the ECQ state and
quantize from scratch.
"""

from __future__ import annotations

import pytest
import torch
from callback_helpers import synthetic_loader, tiny_module, tiny_trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from ecqx.callbacks import EC2T, ECQ, ECQx


def _fit(tmp_path, callbacks, max_epochs, ckpt_path=None):
    module = tiny_module()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = tiny_trainer([*callbacks, checkpoint], max_epochs=max_epochs, limit_train_batches=2,
                           limit_val_batches=1, enable_checkpointing=True, default_root_dir=tmp_path)
    trainer.fit(module, synthetic_loader(), synthetic_loader(n=64, seed=7), ckpt_path=ckpt_path)
    return module, tmp_path / "ckpt" / "last.ckpt"


@pytest.fixture
def ecq_checkpoint(tmp_path):
    _, path = _fit(tmp_path / "first", [ECQ(bits=4, lam=0.1)], max_epochs=1)
    assert "ECQ" in torch.load(path, weights_only=False)["callbacks"]
    return path


@pytest.mark.parametrize(
    ("resumed", "name", "method"),
    [(lambda: EC2T(lam=0.1), "EC2T", "ec2t"), (lambda: ECQx(bits=4, lam=0.1), "ECQx", "ecqx")],
)
def test_checkpoint_of_another_method_is_an_error_at_resume(tmp_path, ecq_checkpoint, resumed, name, method):
    callback = resumed()
    message = (
        r"the checkpoint holds 'ecq' quantization state \(written by the ECQ callback\), but this run "
        rf"quantizes with {name} \('{method}'\).*HINT: start a fresh run \(no ckpt_path\) or pass the "
        r"matching callback \(ECQ\)"
    )
    with pytest.raises(ValueError, match=message):
        _fit(tmp_path / "resumed", [callback], max_epochs=2, ckpt_path=ecq_checkpoint)
    assert callback.optimizer_steps == 0 and callback.group is None  # nothing trained


def test_ecqx_checkpoint_resumed_with_ecq_is_an_error(tmp_path):
    _, path = _fit(tmp_path / "first", [ECQx(bits=4, lam=0.1)], max_epochs=1)
    with pytest.raises(ValueError, match=r"holds 'ecqx' quantization state \(written by the ECQx callback\), "
                                         r"but this run quantizes with ECQ \('ecq'\)"):
        _fit(tmp_path / "resumed", [ECQ(bits=4, lam=0.1)], max_epochs=2, ckpt_path=path)


def test_other_bits_at_resume_is_an_error(tmp_path, ecq_checkpoint):
    with pytest.raises(ValueError, match=r"state was written with bits=4, but this callback has bits=3; .*"
                                         r"HINT: resume with bits=4, or start a fresh run \(no ckpt_path\)"):
        _fit(tmp_path / "resumed", [ECQ(bits=3, lam=0.1)], max_epochs=2, ckpt_path=ecq_checkpoint)


def test_other_targets_at_resume_is_an_error(tmp_path, ecq_checkpoint):
    with pytest.raises(ValueError, match=r"only in the checkpoint: \['model.fc3.weight'\]; only here: \[\].*"
                                         r"or start a fresh run \(no ckpt_path\)"):
        _fit(tmp_path / "resumed", [ECQ(bits=4, lam=0.1, exclude_last=True)], max_epochs=2,
             ckpt_path=ecq_checkpoint)


def test_same_callback_resumes_and_a_full_precision_checkpoint_starts_quantization(tmp_path, ecq_checkpoint):
    callback = ECQ(bits=4, lam=0.1)
    _fit(tmp_path / "resumed", [callback], max_epochs=2, ckpt_path=ecq_checkpoint)
    assert callback.optimizer_steps == 4  # 2 restored + 2 new
    # a checkpoint without quantization state (full-precision training) may be continued with a quantizer
    _, plain = _fit(tmp_path / "plain", [], max_epochs=1)
    callback = EC2T(lam=0.1, exclude_first=False)
    _fit(tmp_path / "quantized", [callback], max_epochs=2, ckpt_path=plain)
    assert callback.is_active and callback.optimizer_steps == 2


def test_validating_a_checkpoint_with_another_quantizer_attached_is_not_an_error(ecq_checkpoint):
    # only fit resumes quantization state; validate/test just load the (quantized) weights
    trainer = tiny_trainer([EC2T(lam=0.1)], limit_val_batches=1)
    (metrics,) = trainer.validate(tiny_module(), synthetic_loader(n=64, seed=7), ckpt_path=ecq_checkpoint)
    assert "val_loss" in metrics
