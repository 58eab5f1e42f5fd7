"""ClassificationModule: learns digits, evaluate() equals Lightning validation, optimizers, checkpoints."""

from __future__ import annotations

import functools

import pytest
import pytorch_lightning as pl
import torch

from ecqx.training.data import DigitsDataModule
from ecqx.training.models import MLP, lenet5
from ecqx.training.module import ClassificationModule


def quiet_trainer(tmp_path, **kwargs) -> pl.Trainer:
    options = dict(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        default_root_dir=str(tmp_path),
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def digits_module(seed: int = 0, **kwargs) -> ClassificationModule:
    torch.manual_seed(seed)
    optimizer = functools.partial(torch.optim.Adam, lr=5e-3)
    return ClassificationModule(MLP(64, (32,), 10), optimizer=kwargs.pop("optimizer", optimizer), **kwargs)


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    module = DigitsDataModule(batch_size=64, seed=0)
    module.setup()
    return module


def test_training_a_few_steps_raises_accuracy(tmp_path, digits):
    module = digits_module()
    before = module.evaluate(digits.val_dataloader())
    quiet_trainer(tmp_path, max_epochs=5).fit(module, digits)
    after = module.evaluate(digits.val_dataloader())
    assert before["acc"] < 0.3, before  # 10 classes, untrained
    assert after["acc"] > 0.85, after
    assert after["loss"] < before["loss"] / 3


def test_evaluate_equals_lightning_validation_and_logs_the_metric_names(tmp_path, digits):
    module = digits_module()
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(module, digits)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "val_acc_top5"} <= set(logged)
    ours = module.evaluate(digits.val_dataloader())
    assert ours["acc"] == pytest.approx(logged["val_acc"], abs=1e-6)
    assert ours["acc_top5"] == pytest.approx(logged["val_acc_top5"], abs=1e-6)
    assert ours["loss"] == pytest.approx(logged["val_loss"], rel=1e-5)
    tested = trainer.test(module, digits, verbose=False)[0]
    assert set(tested) == {"test_loss", "test_acc", "test_acc_top5"}
    assert tested["test_acc"] == pytest.approx(module.evaluate(digits.test_dataloader())["acc"], abs=1e-6)


def test_evaluate_counts_top1_and_top5_by_hand():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x  # the inputs are the logits

    module = ClassificationModule(Fixed(), num_classes=6)
    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6], [1, 6, 5, 4, 3, 2]])
    targets = torch.tensor([0, 0, 2])  # right; last of six (outside top 5); second (inside top 5)
    scores = module.evaluate([(logits, targets)])
    assert scores["acc"] == pytest.approx(1 / 3)
    assert scores["acc_top5"] == pytest.approx(2 / 3)
    expected_loss = torch.nn.functional.cross_entropy(logits, targets).item()
    assert scores["loss"] == pytest.approx(expected_loss)
    assert module.training, "evaluate() must restore training mode"


def test_same_seed_same_weights(tmp_path, digits):
    results = []
    for _ in range(2):
        pl.seed_everything(7, verbose=False)
        module = digits_module(seed=7)
        quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=5, limit_val_batches=1).fit(module, digits)
        results.append(module.model.fc1.weight.detach().clone())
    assert torch.equal(results[0], results[1])


def test_optimizer_and_scheduler_factories():
    module = digits_module(
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2),
    )
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD)
    assert config["optimizer"].param_groups[0]["lr"] == 0.1
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert config["lr_scheduler"]["interval"] == "epoch"
    plateau = digits_module(lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau).configure_optimizers()
    assert plateau["lr_scheduler"]["monitor"] == "val_loss"
    assert isinstance(digits_module().configure_optimizers(), torch.optim.Adam)


def test_scheduler_steps_per_epoch(tmp_path, digits):
    module = digits_module(
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    )
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, digits)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(5e-3 / 4)


def test_pretrained_argument_and_checkpoint_round_trip(tmp_path, digits):
    source = lenet5()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "lenet.pt")
    module = ClassificationModule(lenet5(), pretrained=str(tmp_path / "lenet.pt"))
    assert torch.equal(module.model.fc3.weight, source.fc3.weight)

    trained = digits_module()
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(trained, digits)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    restored = ClassificationModule.load_from_checkpoint(tmp_path / "run.ckpt", model=MLP(64, (32,), 10))
    for name, tensor in trained.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name
    assert set(trained.state_dict()) == {f"model.{n}" for n in trained.model.state_dict()}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"model": "resnet20"}, TypeError, r"`model` must be a torch.nn.Module, got str"),
        ({"num_classes": 1}, ValueError, r"`num_classes` must be an integer >= 2, got 1"),
        ({"label_smoothing": 1.0}, ValueError, r"`label_smoothing` must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_module_arguments_are_rejected(kwargs, error, message):
    arguments = {"model": MLP(), **kwargs}
    with pytest.raises(error, match=message):
        ClassificationModule(**arguments)


def test_evaluate_rejects_an_empty_loader():
    with pytest.raises(ValueError, match="yielded no samples"):
        digits_module().evaluate([])
