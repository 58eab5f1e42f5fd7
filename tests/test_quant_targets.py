"""Target selection: the one place that decides which tensors are quantized (spec §2.1, §4.2)."""

import pytest
import torch
from torch import nn

from ecqx.targets import select_targets


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.downsample = nn.Conv2d(4, 4, 1)


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), Block(), nn.Flatten(), nn.Linear(16, 10), nn.Embedding(5, 3))


def test_from_model_default_rules():
    assert select_targets(_model()) == ["0.weight", "1.conv.weight", "3.weight"]


def test_from_model_options():
    model = _model()
    everything = ["0.weight", "1.conv.weight", "1.downsample.weight", "3.weight"]
    assert select_targets(model, exclude=None) == everything
    assert select_targets(model, exclude_first=True, exclude_last=True) == ["1.conv.weight"]
    assert select_targets(model, include=r"conv") == ["1.conv.weight"]
    assert select_targets(model, types=(nn.Linear,)) == ["3.weight"]
    assert select_targets(model, types=nn.Embedding) == ["4.weight"]


def test_resnet20_state_dict(shared_dir):
    sd = torch.load(shared_dir / "models" / "resnet20.pt", map_location="cpu")
    names = select_targets(sd)
    assert len(names) == 20 and names[0] == "conv1.weight" and names[-1] == "linear.weight"
    ternary = select_targets(sd, exclude_first=True, exclude_last=True)
    assert len(ternary) == 18 and all(".conv" in n for n in ternary)  # spec §4.2: the 18 block convs


def test_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module or a state_dict"):
        select_targets([1, 2])
    with pytest.raises(TypeError, match="only strings"):
        select_targets(_model(), include=[3])
    with pytest.raises(ValueError, match="invalid regular expression"):
        select_targets(_model(), exclude="(")
    with pytest.raises(TypeError, match="nn.Module subclasses"):
        select_targets(_model(), types=(int,))
