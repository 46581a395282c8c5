"""LeNet-300-100 (LeCun et al. 1998): the 784-300-100-10 MLP of the sparse-training literature."""

from __future__ import annotations

import torch
from torch import nn

from .wrn import scaled_channels

__all__ = ["LeNet300100", "digits_mlp", "lenet300_100"]


class LeNet300100(nn.Module):
    """Flatten → Linear(784, 300) → ReLU → Linear(300, 100) → ReLU → Linear(100, classes).

    ``width`` scales the two hidden layers (Small-Dense variants).
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_features: int = 784) -> None:
        super().__init__()
        hidden1, hidden2 = scaled_channels(300, width), scaled_channels(100, width)
        self.fc1 = nn.Linear(in_features, hidden1)
        self.fc2 = nn.Linear(hidden1, hidden2)
        self.fc3 = nn.Linear(hidden2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.fc1(torch.flatten(x, 1)))
        out = torch.relu(self.fc2(out))
        return self.fc3(out)


def lenet300_100(num_classes: int = 10, width: float = 1.0) -> LeNet300100:
    """LeNet-300-100 for 28×28 single-channel inputs (MNIST-sized)."""
    return LeNet300100(num_classes=num_classes, width=width)


def digits_mlp(num_classes: int = 10, width: float = 1.0) -> LeNet300100:
    """LeNet-300-100 on scikit-learn's 8×8 digits, flattened to 64 inputs (the quickstart model)."""
    return LeNet300100(num_classes=num_classes, width=width, in_features=64)
