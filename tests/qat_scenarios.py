"""Short quantization-aware training runs whose end state is recorded as golden values (tests/golden/).

Each scenario trains a small model with one quantization callback on fixed synthetic data (CPU, deterministic)
and returns every tensor that defines where it ended: all module parameters, every tensor of the callback's
checkpoint state, and the exported integer levels and qp of every quantized tensor. The golden file was
written by ``tests/record_qat_golden.py`` with the per-tensor implementation (one ``TensorState`` and a Python
loop per tensor, commit before the grouped quantizer step); ``tests/test_qat_golden.py`` replays the scenarios
and demands bit-identical results.
"""

from __future__ import annotations

import torch
from callback_helpers import synthetic_loader, tiny_trainer
from torch.utils.data import DataLoader, TensorDataset

from ecqx.callbacks import EC2T, ECQ, ECQx
from ecqx.training.models import lenet5, mlp
from ecqx.training.module import ClassificationModule

SCENARIOS = {
    "ecq_clean_mlp": ("mlp", lambda: ECQ(bits=4, lam=0.1, start_epoch=1)),
    "ecq_faithful_mlp": ("mlp", lambda: ECQ(bits=4, lam=0.05, start_epoch=1, mode="faithful")),
    "ecq_7bit_mlp": ("mlp", lambda: ECQ(bits=7, lam=0.2, start_epoch=0)),
    "ecq_3bit_lenet": ("lenet", lambda: ECQ(bits=3, lam=0.1, start_epoch=0)),
    "ecqx_clean_mlp": ("mlp", lambda: ECQx(bits=4, lam=0.1, start_epoch=1, relevance_every_n_steps=2)),
    "ecqx_faithful_mlp": (
        "mlp",
        lambda: ECQx(bits=4, lam=0.2, start_epoch=0, mode="faithful", p=0.05, relevance_every_n_steps=1),
    ),
    "ecqx_clean_lenet": ("lenet", lambda: ECQx(bits=4, lam=0.1, start_epoch=0, relevance_every_n_steps=3)),
    "ec2t_clean_mlp": ("mlp", lambda: EC2T(lam=0.15, freeze_epoch=2, centroid_lr=1e-3, exclude_first=False)),
    "ec2t_faithful_mlp": ("mlp", lambda: EC2T(lam=0.1, mode="faithful", centroid_lr=1e-3)),
    "ec2t_clean_lenet": ("lenet", lambda: EC2T(lam=0.15, centroid_lr=1e-3)),
}
MAX_EPOCHS = 3
BATCHES = 4


def _mlp_run():
    torch.manual_seed(0)
    module = ClassificationModule(mlp(16, [32, 48, 24], 4), num_classes=4)
    return module, synthetic_loader(n=128, batch_size=32), synthetic_loader(n=64, seed=7)


def _image_loader(seed: int, n: int = 64) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=generator)
    y = (x.mean(dim=(1, 2, 3)) * 40).long().clamp(-2, 2) + 2
    return DataLoader(TensorDataset(x, y), batch_size=16)


def _lenet_run():
    torch.manual_seed(0)
    module = ClassificationModule(lenet5(1, 5, 28), num_classes=5)
    return module, _image_loader(0), _image_loader(7, n=32)


def _tensors(prefix: str, value, out: dict) -> None:
    if isinstance(value, torch.Tensor):
        out[prefix] = value.detach().cpu().clone()
    elif isinstance(value, dict):
        for key, item in value.items():
            _tensors(f"{prefix}/{key}", item, out)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _tensors(f"{prefix}/{index}", item, out)


def run_scenario(name: str) -> dict[str, torch.Tensor]:
    """Train scenario ``name``; every tensor that defines its end state, by a stable key."""
    model, factory = SCENARIOS[name]
    module, train, val = (_mlp_run if model == "mlp" else _lenet_run)()
    callback = factory()
    trainer = tiny_trainer([callback], max_epochs=MAX_EPOCHS, limit_train_batches=BATCHES)
    trainer.fit(module, train, val)
    out: dict[str, torch.Tensor] = {}
    for key, param in module.named_parameters():
        out[f"param/{key}"] = param.detach().clone()
    for key, q in callback.quantized_tensors().items():
        out[f"export/{key}/levels"] = q.levels.cpu().clone()
        out[f"export/{key}/qp"] = torch.tensor([q.qp, q.qp_density])
        if q.codebook is not None:
            out[f"export/{key}/codebook"] = q.codebook.cpu().clone()
    state = callback.state_dict()
    tensors = state.get("group", state).get("tensors", {})
    for key, entry in tensors.items():
        for field in ("shadow", "levels", "relevance", "w_n", "w_p"):
            if entry.get(field) is not None:
                out[f"state/{key}/{field}"] = entry[field].detach().cpu().clone().reshape(entry[field].shape)
    return out
