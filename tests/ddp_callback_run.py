"""Train the tiny MLP with ECQx + NNCExport; run as a script for DDP (Lightning re-launches it per rank).

Usage: ``python ddp_callback_run.py OUT_DIR DEVICES``. Every rank saves its final parameters, shadows, levels,
grid steps, relevances and export results to ``OUT_DIR/rank<r>.pt``; the export goes to ``OUT_DIR/model.nnc``.

Both runs see the same global batches. Under DDP Lightning replaces the training sampler with
``DistributedSampler(shuffle=True, seed=PL_GLOBAL_SEED)`` (it always shuffles training data), which permutes
the 256 samples with the epoch's seed and gives rank r the positions r, r + 2, r + 4, ...; with 16 samples per
rank, step b of the two ranks together covers permutation positions 32b .. 32b + 31. The single-process run
uses ``DistributedSampler(num_replicas=1, shuffle=True, seed=0)``: the same permutation in batches of 32, so
its step b covers the same 32 samples. (A plain sequential loader there would train on other batches.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))

from callback_helpers import synthetic_loader, tiny_module  # noqa: E402

from ecqx.callbacks import ECQx, NNCExport  # noqa: E402

GLOBAL_BATCH = 32
SEED = 0


def train_loader(devices: int) -> DataLoader:
    dataset = synthetic_loader(n=256).dataset
    if devices > 1:  # Lightning injects DistributedSampler(shuffle=True, seed=SEED) per rank
        return DataLoader(dataset, batch_size=GLOBAL_BATCH // devices)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=SEED)
    return DataLoader(dataset, batch_size=GLOBAL_BATCH, sampler=sampler)


def run(out_dir: Path, devices: int) -> dict:
    torch.set_num_threads(1)
    pl.seed_everything(SEED)
    module = tiny_module()
    quantizer = ECQx(bits=4, lam=0.1, start_epoch=1, relevance_every_n_steps=1)  # all-reduced every step
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
    trainer.fit(module, train_loader(devices), synthetic_loader(n=64, seed=7))
    result = {
        "params": {n: p.detach().clone() for n, p in module.named_parameters()},
        "shadows": {n: s.clone() for n, s in quantizer.shadows.items()},
        "levels": {n: v.clone() for n, v in quantizer.levels.items()},
        "steps": {n: quantizer.quantized_tensors()[n].step for n in quantizer.targets},
        "optimizer_steps": quantizer.optimizer_steps,
        "relevances": {n: r.clone() for n, r in quantizer.relevances.items()},
        "export": [vars(r) for r in export.results],
        "world_size": trainer.world_size,
    }
    torch.save(result, out_dir / f"rank{trainer.global_rank}.pt")
    return result


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]))
