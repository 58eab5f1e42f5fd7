"""Model zoo: shapes, parameter counts, option-A shortcut, pretrained loading (prefixes, wrapping, errors)."""

from __future__ import annotations

import pytest
import torch

from ecqx.training.models import (
    MLP,
    CifarResNet,
    LeNet5,
    PadShortcut,
    extract_state_dict,
    lenet5,
    load_pretrained,
    mlp,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
)

# Parameter counts and file names from the README of the pretrained CIFAR-10 ResNets (shared data folder).
PRETRAINED = {
    20: ("resnet20-12fca82f.th", 269_722, resnet20),
    32: ("resnet32-d509ac18.th", 464_154, resnet32),
    44: ("resnet44-014dd654.th", 658_586, resnet44),
    56: ("resnet56-4bfd9763.th", 853_018, resnet56),
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mlp_shapes_and_layer_names():
    model = mlp(64, [20, 10], 7)
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 7)
    assert [n for n, _ in model.named_parameters()] == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "fc3.weight",
        "fc3.bias",
    ]
    # 64*20+20 + 20*10+10 + 10*7+7, counted by hand
    assert n_params(model) == 1300 + 210 + 77
    assert n_params(MLP(hidden=())) == 64 * 10 + 10


def test_lenet5_shapes_for_mnist_and_cifar_sizes():
    model = lenet5()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    # classic LeNet-5 on 28x28 with padding 2: 156 + 2416 + 48120 + 10164 + 850 parameters
    assert n_params(model) == 61_706
    assert LeNet5(3, 10, 32)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("depth", sorted(PRETRAINED))
def test_cifar_resnet_parameter_counts_match_the_published_models(depth):
    _, count, factory = PRETRAINED[depth]
    model = factory()
    assert n_params(model) == count
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_shortcut_subsamples_and_pads_channels_on_both_sides():
    x = torch.arange(16 * 4 * 4, dtype=torch.float32).reshape(1, 16, 4, 4)
    out = PadShortcut(stride=2, extra_channels=16)(x)
    assert out.shape == (1, 32, 2, 2)
    assert torch.equal(out[:, :8], torch.zeros(1, 8, 2, 2))
    assert torch.equal(out[:, 24:], torch.zeros(1, 8, 2, 2))
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert list(PadShortcut(2, 16).parameters()) == []


@pytest.mark.parametrize("depth", sorted(PRETRAINED))
def test_pretrained_cifar_resnets_load_strictly(shared_dir, depth):
    file_name, _, factory = PRETRAINED[depth]
    path = shared_dir / "data" / "resnet-cifar10-pretrained" / file_name
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]  # "module."-prefixed
    model = load_pretrained(factory(), path, strict=True)
    assert torch.equal(model.linear.weight, raw["module.linear.weight"])
    assert torch.equal(
        model.layer3[-1].bn2.running_var, raw[f"module.layer3.{depth // 6 - 1}.bn2.running_var"]
    )


def test_ecqx_reference_resnet20_loads_strictly_and_equals_the_akamaster_weights(shared_dir):
    path = shared_dir / "models" / "resnet20.pt"
    model = load_pretrained(resnet20(), path)
    assert torch.equal(model.conv1.weight, torch.load(path, map_location="cpu")["conv1.weight"])
    # the recipes rely on this: both pretrained ResNet-20 files hold the same parameters and statistics
    other = load_pretrained(resnet20(), shared_dir / "data" / "resnet-cifar10-pretrained" / PRETRAINED[20][0])
    for name, tensor in other.state_dict().items():
        if not name.endswith("num_batches_tracked"):  # absent from the older akamaster file
            assert torch.equal(model.state_dict()[name], tensor), name


def test_load_pretrained_strips_lightning_prefix_and_nesting(tmp_path):
    source = lenet5()
    checkpoint = {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}
    torch.save(checkpoint, tmp_path / "lightning.ckpt")
    target = load_pretrained(lenet5(), tmp_path / "lightning.ckpt")
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor)


def test_load_pretrained_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_pretrained(lenet5(), tmp_path / "missing.pt")
    torch.save(resnet20().state_dict(), tmp_path / "r20.pt")
    with pytest.raises(RuntimeError, match=r"missing .*layer1\.3\.conv1\.weight.*HINT"):
        load_pretrained(resnet32(), tmp_path / "r20.pt")
    torch.save(CifarResNet(20, num_classes=100).state_dict(), tmp_path / "r20_100.pt")
    with pytest.raises(
        RuntimeError, match=r"shape mismatch.*linear\.weight: file \(100, 64\) vs model \(10, 64\)"
    ):
        load_pretrained(resnet20(), tmp_path / "r20_100.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(TypeError, match="expected a state_dict"):
        load_pretrained(lenet5(), tmp_path / "list.pt")


def test_load_pretrained_non_strict_ignores_missing(tmp_path):
    partial = {k: v for k, v in resnet20().state_dict().items() if not k.startswith("linear")}
    torch.save(partial, tmp_path / "partial.pt")
    model = resnet20()
    load_pretrained(model, tmp_path / "partial.pt", strict=False)
    assert torch.equal(model.conv1.weight, partial["conv1.weight"])


def test_extract_state_dict_rejects_dicts_without_tensors():
    with pytest.raises(TypeError, match=r"no state_dict found.*'epoch'"):
        extract_state_dict({"epoch": 1, "lr": 0.1}, "ckpt.pt")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: CifarResNet(depth=18), r"`depth`=18 is not supported; allowed: \(20, 32, 44, 56, 110\)"),
        (lambda: LeNet5(input_size=8), r"`input_size`=8 is too small"),
        (lambda: MLP(hidden=(0,)), r"`hidden \(each width\)` must be a positive integer, got 0"),
        (lambda: MLP(num_classes=-1), r"`num_classes` must be a positive integer, got -1"),
    ],
)
def test_bad_model_arguments_are_rejected(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.slow
def test_pretrained_resnet20_accuracy_on_cifar10_jpeg_test_images(shared_dir):
    """The README of the JPEG copy measured 81.0 % for this model on the full 10k test split."""
    from ecqx.training.data import CIFAR10JPEGDataModule
    from ecqx.training.module import ClassificationModule

    torch.set_num_threads(1)
    data = CIFAR10JPEGDataModule(str(shared_dir / "data" / "cifar10-jpeg"), limit=400, batch_size=200)
    data.setup("test")
    module = ClassificationModule(resnet20(), pretrained=str(shared_dir / "models" / "resnet20.pt"))
    scores = module.evaluate(data.test_dataloader())
    # 400 images: standard error about 2 points around 81 %
    assert 0.74 <= scores["acc"] <= 0.88, scores
    assert scores["acc_top5"] >= 0.95
