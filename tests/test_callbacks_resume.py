"""Kill a run mid-epoch, resume with ``ckpt_path=``: same quantized weights and same ``.nnc`` bytes."""

from __future__ import annotations

import pytest
import torch
from callback_helpers import params, synthetic_loader, tiny_module, tiny_trainer
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from ecqx.callbacks import EC2T, ECQ, ECQx, NNCExport

FACTORIES = {
    "ecq": lambda: ECQ(bits=4, lam=0.1, start_epoch=1),
    "ecqx": lambda: ECQx(bits=4, lam=0.1, start_epoch=1, relevance_every_n_steps=3),
    "ec2t": lambda: EC2T(lam=0.15, freeze_epoch=2, centroid_lr=1e-3),
}


class Crash(Exception):
    pass


class KillMidEpoch(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 2 and batch_idx == 1:
            raise Crash("simulated kill")


def _run(tmp_path, tag, method, extra=(), ckpt_path=None, seed=0):
    quantizer = FACTORIES[method]()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / f"ckpt_{tag}", save_last=True)
    module = tiny_module(seed=seed)
    trainer = tiny_trainer(
        [quantizer, NNCExport(tmp_path / f"{tag}.nnc"), checkpoint, *extra],
        max_epochs=4,
        limit_train_batches=3,
        enable_checkpointing=True,
    )
    trainer.fit(module, synthetic_loader(), synthetic_loader(n=64, seed=7), ckpt_path=ckpt_path)
    return module, quantizer


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(FACTORIES))
def test_resume_after_kill_is_bit_identical(method, tmp_path):
    full, full_quantizer = _run(tmp_path, "full", method)
    with pytest.raises(Crash):
        _run(tmp_path, "killed", method, extra=[KillMidEpoch()])
    last = tmp_path / "ckpt_killed" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 1  # written at the end of epoch 1
    resumed, resumed_quantizer = _run(tmp_path, "resumed", method, ckpt_path=last, seed=123)

    for name, value in params(full).items():
        assert torch.equal(value, params(resumed)[name]), name
    for name in full_quantizer.targets:
        assert torch.equal(full_quantizer.shadows[name], resumed_quantizer.shadows[name]), name
    assert (tmp_path / "full.nnc").read_bytes() == (tmp_path / "resumed.nnc").read_bytes()


def test_checkpoint_of_another_method_is_rejected(tmp_path):
    state = ECQ(bits=4).state_dict()
    with pytest.raises(
        ValueError, match=r"checkpoint holds 'ecq' quantization state, but this callback is EC2T"
    ):
        EC2T().load_state_dict(state)
