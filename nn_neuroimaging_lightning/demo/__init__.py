"""The demo job's data and models: synthetic images, the CIFAR-10 binary reader, the reference CNN."""

from nn_neuroimaging_lightning.demo.cifar import CIFAR10Binary, read_cifar10_binary
from nn_neuroimaging_lightning.demo.data import DemoDataModule, SyntheticImages
from nn_neuroimaging_lightning.demo.model import (
    DemoClassifier,
    DropoutMLP,
    ReferenceCNN,
    SyntheticTokens,
    TinyTransformer,
)

__all__ = [
    "CIFAR10Binary",
    "DemoClassifier",
    "DemoDataModule",
    "DropoutMLP",
    "ReferenceCNN",
    "SyntheticImages",
    "SyntheticTokens",
    "TinyTransformer",
    "read_cifar10_binary",
]
