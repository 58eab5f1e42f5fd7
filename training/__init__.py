"""Training stack: the classification LightningModule, model zoo, data modules and the ``ecqx`` command."""

from ecqx.training.data import (
    CIFAR10JPEGDataModule,
    ClassificationDataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
)
from ecqx.training.models import (
    MLP,
    CifarResNet,
    LeNet5,
    lenet5,
    load_pretrained,
    mlp,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
)
from ecqx.training.module import ClassificationModule

__all__ = [
    "ClassificationModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "MNISTDataModule",
    "FashionMNISTDataModule",
    "CIFAR10JPEGDataModule",
    "MLP",
    "LeNet5",
    "CifarResNet",
    "mlp",
    "lenet5",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "load_pretrained",
]
