"""Record checkpoints written by the per-tensor implementation, and where resuming from them ends.

Writes ``tests/golden/legacy_<method>.ckpt`` (a Lightning checkpoint after 2 of 4 epochs) and
``tests/golden/legacy_resume.pt`` (the end state of resuming each of them to epoch 4, with the same code).
Recorded once with the implementation before the grouped quantizer state (commit c4a2ae0, imported from a
copy of that tree on PYTHONPATH); ``tests/test_legacy_checkpoints.py`` resumes the same checkpoints with
today's
callbacks and demands the same end state.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from callback_helpers import synthetic_loader, tiny_module, tiny_trainer  # noqa: E402

from ecqx.callbacks import EC2T, ECQ, ECQx  # noqa: E402

FACTORIES = {
    "ecq": lambda: ECQ(bits=4, lam=0.1, start_epoch=1),
    "ecqx": lambda: ECQx(bits=4, lam=0.2, start_epoch=0, relevance_every_n_steps=3, p=0.05),
    "ec2t": lambda: EC2T(lam=0.15, freeze_epoch=3, centroid_lr=1e-3, exclude_first=False),
}


def end_state(module, callback) -> dict[str, torch.Tensor]:
    out = {f"param/{k}": p.detach().clone() for k, p in module.named_parameters()}
    for name, q in callback.quantized_tensors().items():
        out[f"levels/{name}"] = q.levels.cpu().clone()
    for name, shadow in callback.shadows.items():
        out[f"shadow/{name}"] = shadow.detach().cpu().clone()
    return out


def fit(method: str, max_epochs: int, ckpt_path=None):
    module, callback = tiny_module(seed=3), FACTORIES[method]()
    trainer = tiny_trainer([callback], max_epochs=max_epochs, limit_train_batches=3)
    trainer.fit(module, synthetic_loader(), synthetic_loader(n=64, seed=7), ckpt_path=ckpt_path)
    return module, callback, trainer


def main() -> None:
    results = {}
    for method in FACTORIES:
        _, _, trainer = fit(method, max_epochs=2)
        path = HERE / "golden" / f"legacy_{method}.ckpt"
        trainer.save_checkpoint(path)
        module, callback, _ = fit(method, max_epochs=4, ckpt_path=path)
        results[method] = end_state(module, callback)
    torch.save(results, HERE / "golden" / "legacy_resume.pt")


if __name__ == "__main__":
    main()
