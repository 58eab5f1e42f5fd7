"""Kill a run, resume with ``ckpt_path=``: same quantized weights, shadow state and ``.nnc`` bytes.

Two cases: an epoch-end checkpoint (plain, unshuffled ``DataLoader``) and mid-epoch checkpoints
(``ModelCheckpoint(every_n_train_steps=...)``) with a shuffled
:class:`~ecqx.training.data.ResumableDataLoader` over inputs with random noise (a stand-in for augmentation).
Lightning 2.6 stores the loader's state (epoch, position, CPU random state) in the checkpoint, does not call
``on_train_epoch_start`` when it resumes mid-epoch and restores no random state itself; the callbacks hold no
random state, so with the loader's order depending on ``(seed, epoch)`` only and its noise on the restored CPU
random state, every step after the resume repeats the uninterrupted run's step exactly.
"""

from __future__ import annotations

import pytest
import torch
from callback_helpers import params, resumable_loader, synthetic_loader, tiny_module, tiny_trainer
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

from ecqx.callbacks import EC2T, ECQ, ECQx, NNCExport

FACTORIES = {
    "ecq": lambda: ECQ(bits=4, lam=0.1, start_epoch=1),
    "ecqx": lambda: ECQx(bits=4, lam=0.1, start_epoch=1, relevance_every_n_steps=3),
    "ec2t": lambda: EC2T(lam=0.15, freeze_epoch=2, centroid_lr=1e-3),
}
MAX_EPOCHS = 4


class Crash(Exception):
    pass


class KillAt(Callback):
    def __init__(self, epoch: int, batch_idx: int):
        self.epoch, self.batch_idx = epoch, batch_idx

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch_idx:
            raise Crash("simulated kill")


def _fit(tmp_path, tag, method, loaders, callbacks=(), ckpt_path=None, seed=0, **trainer_args):
    quantizer = FACTORIES[method]()
    module = tiny_module(seed=seed)
    trainer = tiny_trainer(
        [quantizer, NNCExport(tmp_path / f"{tag}.nnc"), *callbacks],
        enable_checkpointing=True,
        default_root_dir=tmp_path,  # Lightning's default ModelCheckpoint of the resumed runs writes here
        **{"max_epochs": MAX_EPOCHS, **trainer_args},
    )
    trainer.fit(module, *loaders(), ckpt_path=ckpt_path)
    return module, quantizer


def _method_state(quantizer) -> dict[str, torch.Tensor]:
    """Every tensor of the callback's checkpoint state (shadows, levels, relevances, EC2T magnitudes...)."""
    found = {}

    def walk(prefix, value):
        if isinstance(value, torch.Tensor):
            found[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)

    walk("", quantizer.state_dict())
    return found


def _assert_same_run(tmp_path, full, resumed, full_tag, resumed_tag):
    (full_module, full_quantizer), (resumed_module, resumed_quantizer) = full, resumed
    for name, value in params(full_module).items():
        assert torch.equal(value, params(resumed_module)[name]), name
    expected, got = _method_state(full_quantizer), _method_state(resumed_quantizer)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key
    assert full_quantizer.optimizer_steps == resumed_quantizer.optimizer_steps
    assert (tmp_path / f"{full_tag}.nnc").read_bytes() == (tmp_path / f"{resumed_tag}.nnc").read_bytes()


def _plain_loaders():
    return synthetic_loader(), synthetic_loader(n=64, seed=7)


def _resumable_loaders():
    return resumable_loader(seed=3), synthetic_loader(n=64, seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(FACTORIES))
def test_resume_from_epoch_end_is_bit_identical(method, tmp_path):
    three_batches = dict(limit_train_batches=3)
    full = _fit(tmp_path, "full", method, _plain_loaders, **three_batches)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    with pytest.raises(Crash):
        _fit(tmp_path, "killed", method, _plain_loaders, [checkpoint, KillAt(2, 1)], **three_batches)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 1  # written at the end of epoch 1
    resumed = _fit(tmp_path, "resumed", method, _plain_loaders, ckpt_path=last, seed=123, **three_batches)
    _assert_same_run(tmp_path, full, resumed, "full", "resumed")


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(FACTORIES))
def test_resume_mid_epoch_is_bit_identical(method, tmp_path):
    # 4 batches per epoch; checkpoints after optimizer steps 5 (epoch 1, batch 0: first quantized epoch of
    # ECQ/ECQx, EC2T's assignment phase), 10 (epoch 2, batch 1: EC2T's frozen phase, ECQx between two
    # relevance refreshes with a running relevance accumulated in this epoch) and 8 (the last batch of epoch
    # 1: Lightning then resumes into epoch 2 without calling `on_train_epoch_start`, yet ECQx must reset its
    # running relevance there and EC2T must freeze); killed after step 12.
    full = _fit(tmp_path, "full", method, _resumable_loaders)
    checkpoints = [
        ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=n, save_top_k=-1, filename="{step}")
        for n in (5, 8)
    ]
    with pytest.raises(Crash):
        _fit(tmp_path, "killed", method, _resumable_loaders, [*checkpoints, KillAt(2, 3)])
    for step, epoch, done in ((5, 1, 1), (10, 2, 2), (8, 1, 4)):
        path = tmp_path / "ckpt" / f"step={step}.ckpt"
        saved = torch.load(path, weights_only=False)
        assert (saved["global_step"], saved["epoch"]) == (step, epoch)
        (position,) = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
        assert (position["epoch"], position["batches"]) == (epoch, done)
        tag = f"resumed{step}"
        resumed = _fit(tmp_path, tag, method, _resumable_loaders, ckpt_path=path, seed=123)
        _assert_same_run(tmp_path, full, resumed, "full", tag)


def test_a_plain_dataloader_restarts_the_epoch_so_mid_epoch_resume_needs_a_resumable_one(tmp_path):
    # Why the data pipeline matters: Lightning keeps a plain DataLoader's position nowhere, so after a
    # mid-epoch resume the epoch starts again from its first batch.
    seen = []

    class Record(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch[1].tolist())

    def loaders_of(kind):
        return lambda: (kind(), synthetic_loader(n=64, seed=7))

    plain = lambda: DataLoader(resumable_loader(seed=3).dataset, batch_size=32)  # noqa: E731
    for kind in (plain, lambda: resumable_loader(seed=3)):
        folder = tmp_path / ("plain" if kind is plain else "resumable")
        checkpoint = ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_top_k=-1, filename="{step}")
        seen.clear()
        _fit(tmp_path, "a", "ecq", loaders_of(kind), [checkpoint, Record()], max_epochs=1)
        uninterrupted = list(seen)
        assert len(uninterrupted) == 4
        seen.clear()
        resume_from = folder / "step=2.ckpt"
        _fit(tmp_path, "b", "ecq", loaders_of(kind), [Record()], max_epochs=1, ckpt_path=resume_from)
        if kind is plain:
            assert seen == uninterrupted[:2]  # batches 0 and 1 again instead of 2 and 3
        else:
            assert seen == uninterrupted[2:]


def test_checkpoint_of_another_method_is_rejected(tmp_path):
    state = ECQ(bits=4).state_dict()
    with pytest.raises(
        ValueError, match=r"checkpoint holds 'ecq' quantization state, but this callback is EC2T"
    ):
        EC2T().load_state_dict(state)


def test_resumable_loader_survives_lightnings_ddp_sampler_injection():
    # Under DDP Lightning re-instantiates the training loader with a DistributedSamplerWrapper around its
    # sampler (private helpers, but the very calls Lightning 2.6 makes); the copy must keep resuming.
    from lightning_fabric.utilities.data import _update_dataloader
    from lightning_fabric.utilities.distributed import DistributedSamplerWrapper

    def rank_loader(rank):
        loader = resumable_loader(n=96, batch_size=8, seed=3)
        sampler = DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=rank, shuffle=True, seed=0)
        return _update_dataloader(loader, sampler)

    for rank in (0, 1):
        first, second = rank_loader(rank), rank_loader(rank)
        assert type(first).__name__ == "ResumableDataLoader"
        first.sampler.set_epoch(2)
        iterator = iter(first)
        labels = [next(iterator)[1].tolist() for _ in range(2)]
        state = first.state_dict()
        labels += [batch[1].tolist() for batch in iterator]
        assert len(labels) == 6  # 96 samples / 2 ranks / batch 8
        second.load_state_dict(state)
        second.sampler.set_epoch(2)  # Lightning sets the epoch after loading the state
        assert [batch[1].tolist() for batch in second] == labels[2:]


def test_resumable_loader_replays_global_rng_augmentation_within_an_epoch():
    # A pipeline drawing its augmentation from the global CPU generator (num_workers=0): the loader's state
    # carries that generator's state, restored when the resumed iteration starts.
    loader = resumable_loader(seed=3, seed_samples=False)
    loader.sampler.set_epoch(1)
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    rest = [batch[0] for batch in iterator]
    torch.manual_seed(999)  # a resumed process starts from another random state
    again = resumable_loader(seed=3, seed_samples=False)
    again.load_state_dict(state)
    again.sampler.set_epoch(1)
    resumed = [batch[0] for batch in again]
    assert len(resumed) == len(rest) == 3
    assert all(torch.equal(a, b) for a, b in zip(resumed, rest, strict=True))


def test_resumable_loader_rejects_a_malformed_state():
    with pytest.raises(ValueError, match=r"'batches' \(int >= 0\)"):
        resumable_loader().load_state_dict({"epoch": 1, "batches": -2})


def test_data_modules_train_on_a_resumable_per_epoch_shuffle():
    from ecqx.training.data import DigitsDataModule, ResumableDataLoader, SeededEpochSampler

    module = DigitsDataModule(batch_size=64, seed=4)
    train, val = module.train_dataloader(), module.val_dataloader()
    assert isinstance(train, ResumableDataLoader) and isinstance(train.sampler, SeededEpochSampler)
    assert train.sampler.shuffle and not val.sampler.shuffle
    orders = {}
    for epoch in (0, 1, 0):
        train.sampler.set_epoch(epoch)
        orders.setdefault(epoch, []).append(list(train.sampler))
    assert orders[0][0] == orders[0][1] != orders[1][0]  # a function of (seed, epoch) only
    assert sorted(orders[1][0]) == list(range(len(module.datasets["train"])))
    train.sampler.set_epoch(5)
    iterator = iter(train)
    next(iterator)
    state = train.state_dict()
    rest = [batch[1] for batch in iterator]
    again = module.train_dataloader()
    again.load_state_dict(state)
    again.sampler.set_epoch(5)
    assert [batch[1].tolist() for batch in again] == [labels.tolist() for labels in rest]


def test_cifar_augmentation_is_seeded_per_sample_and_epoch(shared_dir):
    # the random crop/flip of a training sample is a function of (data seed, epoch, index): the same after a
    # resume whatever the global random state (and in worker processes), yet random across seeds
    from ecqx.training.data import CIFAR10JPEGDataModule, SeededIndex

    module = CIFAR10JPEGDataModule(str(shared_dir / "data" / "cifar10-jpeg"), limit=64, batch_size=16)
    loader, train = module.train_dataloader(), module.datasets["train"]

    def epoch_batches(epoch, global_seed):
        torch.manual_seed(global_seed)
        loader.sampler.set_epoch(epoch)
        return [x for x, _ in loader]

    first, again = epoch_batches(3, global_seed=1), epoch_batches(3, global_seed=2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    index = next(iter(loader.sampler))
    assert isinstance(index, SeededIndex) and torch.equal(train[index][0], first[0][0])
    draws = [train[SeededIndex(int(index), seed)][0] for seed in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # still random augmentation
