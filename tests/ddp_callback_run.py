"""Train the tiny MLP with ECQx + NNCExport; run as a script for DDP (Lightning re-launches it per rank).

Usage: ``python ddp_callback_run.py OUT_DIR DEVICES``. Every rank saves its final parameters, export results
and relevances to ``OUT_DIR/rank<r>.pt``; the export goes to ``OUT_DIR/model.nnc``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from callback_helpers import synthetic_loader, tiny_module  # noqa: E402

from ecqx.callbacks import ECQx, NNCExport  # noqa: E402

GLOBAL_BATCH = 32


def run(out_dir: Path, devices: int) -> dict:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    module = tiny_module()
    quantizer = ECQx(bits=4, lam=0.1, start_epoch=1)
    export = NNCExport(out_dir / "model.nnc")
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        callbacks=[quantizer, export],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    per_rank = GLOBAL_BATCH // devices
    trainer.fit(module, synthetic_loader(n=256, batch_size=per_rank), synthetic_loader(n=64, seed=7))
    result = {
        "params": {n: p.detach().clone() for n, p in module.named_parameters()},
        "relevances": {n: r.clone() for n, r in quantizer.relevances.items()},
        "export": [vars(r) for r in export.results],
        "world_size": trainer.world_size,
    }
    torch.save(result, out_dir / f"rank{trainer.global_rank}.pt")
    return result


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]))
