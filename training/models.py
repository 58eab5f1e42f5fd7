"""Model zoo: MLP, LeNet-5 and the CIFAR ResNet-20/32/44/56 family, plus pretrained-weight loading.

The CIFAR ResNets follow He et al. (2016), CIFAR variant with parameter-free "option A" shortcuts, and use
the parameter names of the widely distributed pretrained CIFAR-10 checkpoints (``conv1``, ``bn1``,
``layer{1,2,3}.{i}.conv1/bn1/conv2/bn2``, ``linear``), so those files load with ``strict=True``.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MLP",
    "LeNet5",
    "CifarResNet",
    "mlp",
    "lenet5",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "extract_state_dict",
    "load_pretrained",
]

log = logging.getLogger(__name__)

CIFAR_RESNET_DEPTHS = (20, 32, 44, 56, 110)
# Prefixes that wrappers add in front of parameter names: DataParallel/DDP ("module."),
# our ClassificationModule and most LightningModules ("model."), torch.compile ("_orig_mod.").
_KNOWN_PREFIXES = ("module.", "model.", "_orig_mod.")
# Keys under which training scripts commonly nest the state_dict inside a checkpoint dict.
_NESTING_KEYS = ("state_dict", "model_state_dict", "model", "net")


class MLP(nn.Sequential):
    """Fully connected classifier: flatten, then ``Linear → ReLU`` per hidden layer, then a linear head.

    The linear layers are named ``fc1``, ``fc2``, ... (the last one is the head).

    Args:
        in_features: number of input values per sample after flattening (64 for 8×8 digits, 784 for MNIST).
        hidden: widths of the hidden layers, in order; empty for a linear classifier.
        num_classes: number of output logits.
    """

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (64, 32), num_classes: int = 10):
        _check_positive("in_features", in_features)
        _check_positive("num_classes", num_classes)
        for width in hidden:
            _check_positive("hidden (each width)", width)
        layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
        widths = [in_features, *hidden]
        for index, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True), start=1):
            layers[f"fc{index}"] = nn.Linear(n_in, n_out)
            layers[f"relu{index}"] = nn.ReLU()
        layers[f"fc{len(widths)}"] = nn.Linear(widths[-1], num_classes)
        super().__init__(OrderedDict(layers))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling.

    ``conv1`` (5×5, padding 2, 6 maps) → pool → ``conv2`` (5×5, 16 maps) → pool → ``fc1`` (120) → ``fc2`` (84)
    → ``fc3`` (``num_classes``). The padding keeps the classic 5×5×16 feature map for 28×28 inputs (MNIST,
    Fashion-MNIST); 32×32 inputs give 6×6×16.

    Args:
        in_channels: image channels (1 for MNIST, 3 for CIFAR).
        num_classes: number of output logits.
        input_size: height = width of the input images; at least 12.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28):
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("num_classes", num_classes)
        feature_size = (input_size // 2 - 4) // 2
        if feature_size < 1:
            raise ValueError(
                f"LeNet5: `input_size`={input_size} is too small; the two 5x5 convolutions and 2x2 poolings "
                "need input_size >= 12 (28 for MNIST/Fashion-MNIST, 32 for CIFAR)."
            )
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.fc1 = nn.Linear(16 * feature_size * feature_size, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride``, zero-pad channels equally on both sides (no parameters)."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride = stride
        self.pad_each_side = extra_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_each_side, self.pad_each_side))


class BasicBlock(nn.Module):
    """Two 3×3 conv/BN layers with a residual connection (identity or option-A shortcut)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = PadShortcut(stride, planes - in_planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6n + 2`` (20, 32, 44, 56, 110) with option-A shortcuts.

    Args:
        depth: total number of weighted layers; one of 20, 32, 44, 56, 110.
        num_classes: number of output logits.
        in_channels: image channels.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if depth not in CIFAR_RESNET_DEPTHS:
            raise ValueError(
                f"CifarResNet: `depth`={depth!r} is not supported; allowed: {CIFAR_RESNET_DEPTHS}."
            )
        _check_positive("num_classes", num_classes)
        _check_positive("in_channels", in_channels)
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _make_stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = _make_stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = _make_stage(32, 64, blocks_per_stage, stride=2)
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.shape[-1]).flatten(1)
        return self.linear(out)


def _make_stage(in_planes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
    blocks = [BasicBlock(in_planes, planes, stride)]
    blocks += [BasicBlock(planes, planes, 1) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def mlp(in_features: int = 64, hidden: Sequence[int] = (64, 32), num_classes: int = 10) -> MLP:
    """Build an :class:`MLP` (see there for the arguments)."""
    return MLP(in_features, hidden, num_classes)


def lenet5(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> LeNet5:
    """Build a :class:`LeNet5` (see there for the arguments)."""
    return LeNet5(in_channels, num_classes, input_size)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-20 (3 blocks per stage, 0.27 M parameters)."""
    return CifarResNet(20, num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-32 (5 blocks per stage, 0.46 M parameters)."""
    return CifarResNet(32, num_classes)


def resnet44(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-44 (7 blocks per stage, 0.66 M parameters)."""
    return CifarResNet(44, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-56 (9 blocks per stage, 0.85 M parameters)."""
    return CifarResNet(56, num_classes)


def extract_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the tensor state_dict inside a loaded checkpoint object.

    Accepts a plain state_dict, or a dict that nests it under one of ``state_dict``, ``model_state_dict``,
    ``model``, ``net`` (the usual training-script and Lightning checkpoint layouts). Non-tensor entries of
    the state_dict itself are rejected.

    Args:
        obj: what ``torch.load`` returned.
        source: how to name the object in error messages (usually the file path).

    Raises:
        TypeError: ``obj`` is neither a state_dict nor a dict holding one.
    """
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise TypeError(f"{source}: expected a state_dict (a dict of tensors), got {type(obj).__name__}.")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    for key in _NESTING_KEYS:
        nested = obj.get(key)
        if isinstance(nested, Mapping | nn.Module):
            return extract_state_dict(nested, f"{source}[{key!r}]")
    keys = ", ".join(repr(k) for k in list(obj)[:8])
    raise TypeError(
        f"{source}: no state_dict found. Expected a dict of tensors or a dict with one of the keys "
        f"{list(_NESTING_KEYS)}; got keys {keys or '(none)'}."
    )


def load_pretrained(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load weights from a checkpoint file into ``model`` and return it.

    Handles checkpoints that nest the state_dict (see :func:`extract_state_dict`) and wrapper prefixes
    (``module.``, ``model.``, ``_orig_mod.``) in front of the parameter names: a prefix is stripped only
    when every key carries it and the model's own names do not.

    Args:
        model: the model to fill in place.
        path: a file written with ``torch.save`` (loaded with ``weights_only=True`` on the CPU).
        strict: require the names to match exactly, as in :meth:`torch.nn.Module.load_state_dict`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        TypeError: the file holds no state_dict.
        RuntimeError: names or shapes do not match the model (the message lists the differences).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_pretrained: no checkpoint file at {path!r}.")
    state_dict = extract_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    state_dict = _strip_wrapper_prefixes(state_dict, set(model.state_dict()))
    _check_shapes(model, state_dict, path)
    result = model.load_state_dict(state_dict, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise RuntimeError(
            f"load_pretrained: {path!r} does not match {type(model).__name__}: "
            f"missing {_preview(result.missing_keys)}, unexpected {_preview(result.unexpected_keys)}. "
            "HINT: check the architecture (e.g. ResNet depth, num_classes) or pass strict=False."
        )
    log.info("loaded %d tensors from %s into %s", len(state_dict), path, type(model).__name__)
    return model


def _strip_wrapper_prefixes(
    state_dict: dict[str, torch.Tensor], model_keys: set[str]
) -> dict[str, torch.Tensor]:
    while not set(state_dict) & model_keys:
        prefix = next((p for p in _KNOWN_PREFIXES if all(k.startswith(p) for k in state_dict)), None)
        if prefix is None:
            break
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _check_shapes(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str) -> None:
    own = model.state_dict()
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and own[k].shape != v.shape
    ]
    if wrong:
        raise RuntimeError(
            f"load_pretrained: shape mismatch between {path!r} and {type(model).__name__}: {_preview(wrong)}."
        )


def _preview(items: Sequence[str], limit: int = 5) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)} in all)"


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
