"""Target selection: the one place that decides which tensors are quantized (spec §2.1, §4.2)."""

import pytest
import torch
from torch import nn

from ecqx.targets import DEFAULT_MODULE_TYPES, parameter_aliases, select_targets


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.downsample = nn.Conv2d(4, 4, 1)


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), Block(), nn.Flatten(), nn.Linear(16, 10), nn.Embedding(5, 3))


def test_from_model_default_rules():
    assert DEFAULT_MODULE_TYPES == (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding, nn.EmbeddingBag)
    assert select_targets(_model()) == ["0.weight", "1.conv.weight", "3.weight", "4.weight"]
    bag = nn.Sequential(nn.EmbeddingBag(7, 3), nn.Conv1d(1, 2, 3), nn.Conv3d(1, 2, 1), nn.LayerNorm(3))
    assert select_targets(bag) == ["0.weight", "1.weight", "2.weight"]


def test_from_model_options():
    model = _model()
    everything = ["0.weight", "1.conv.weight", "1.downsample.weight", "3.weight", "4.weight"]
    assert select_targets(model, exclude=None) == everything
    assert select_targets(model, exclude_first=True, exclude_last=True) == ["1.conv.weight", "3.weight"]
    assert select_targets(model, include=r"conv") == ["1.conv.weight"]
    assert select_targets(model, types=(nn.Linear,)) == ["3.weight"]
    assert select_targets(model, types=nn.Embedding) == ["4.weight"]
    assert select_targets(model, types=(nn.Conv2d, nn.Linear)) == ["0.weight", "1.conv.weight", "3.weight"]


def test_default_module_types_select_what_the_state_dict_rule_selects():
    # from a state_dict (no modules) every >= 2-D float tensor is a candidate: for a model of the default
    # module types plus 1-D tensors (norms, biases) that is the same list as from the model
    model = nn.Sequential(nn.Embedding(9, 4), nn.LayerNorm(4), nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6),
                          nn.Flatten(), nn.Linear(6, 3), nn.EmbeddingBag(5, 2))
    assert select_targets(model) == select_targets(model.state_dict()) == [
        "0.weight", "2.weight", "5.weight", "6.weight"
    ]


class _Tied(nn.Module):
    """A language-model shape: embedding, hidden linear, decoder tied to the embedding, one block twice."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.block = nn.Linear(4, 4)
        self.stack = nn.Sequential(self.block, nn.ReLU(), self.block)
        self.decoder = nn.Linear(4, 10, bias=False)
        self.decoder.weight = self.embed.weight


def test_tied_weights_are_selected_once_under_their_first_name():
    model = _Tied()
    assert select_targets(model) == ["embed.weight", "block.weight"]
    assert parameter_aliases(model, ["embed.weight", "block.weight"]) == {
        "embed.weight": ["decoder.weight"], "block.weight": ["stack.0.weight", "stack.2.weight"],
    }
    assert set(parameter_aliases(model, ["embed.weight"])["embed.weight"]) < set(model.state_dict())
    # a shared tensor is quantized only if each of its names is selected
    assert select_targets(model, exclude="decoder") == ["block.weight"]
    assert select_targets(model, include="embed|block") == []  # decoder / stack names do not match
    assert select_targets(model, include="embed|block|decoder|stack") == ["embed.weight", "block.weight"]
    # the embedding is the first layer and its tied decoder the last: both positions drop it
    assert select_targets(model, exclude_last=True) == ["block.weight"]
    assert select_targets(model, exclude_first=True) == ["block.weight"]
    with pytest.raises(ValueError, match="'nope.weight' is not a parameter"):
        parameter_aliases(model, ["nope.weight"])


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
    with pytest.raises(TypeError, match="nn.Module subclasses"):
        select_targets(_model(), types=())
