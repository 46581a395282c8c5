"""ResNet-50 (He et al. 2016) with bottleneck blocks [3, 4, 6, 3], in two stems.

- ``resnet50_imagenet``: ResNet-50 v1.5 as in the RigL paper's ImageNet runs — 7×7 stride-2 stem
  conv, 3×3 stride-2 max-pool, the stride of a down-sampling bottleneck on its 3×3 conv (not on the
  first 1×1), 224×224 inputs, 1000 classes.
- ``resnet50_cifar``: the reproducibility report's CIFAR-100 model (SPEC §8) — 3×3 stride-1 stem,
  no max-pool, 32×32 inputs, 100 classes.

In both, the last BN of every block starts with γ = 0 (each residual branch starts as the identity),
and ``width`` scales every channel count (Small-Dense variants).
"""

from __future__ import annotations

import torch
from torch import nn

from .wrn import scaled_channels

__all__ = ["Bottleneck", "ResNet", "resnet50_cifar", "resnet50_imagenet"]

RESNET50_BLOCKS = (3, 4, 6, 3)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride) → 1×1 (×4 channels), each followed by BN; ReLU after the sum.

    The shortcut is a 1×1 conv with the block's stride plus BN where the shape changes.
    """

    expansion = 4

    def __init__(self, in_channels: int, mid_channels: int, stride: int) -> None:
        super().__init__()
        out_channels = mid_channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + residual)


class ResNet(nn.Module):
    """Bottleneck ResNet; ``stem="imagenet"``: 7×7/2 conv + 3×3/2 max-pool, ``"cifar"``: 3×3/1 conv."""

    def __init__(
        self,
        blocks: tuple[int, ...] = RESNET50_BLOCKS,
        num_classes: int = 1000,
        stem: str = "imagenet",
        width: float = 1.0,
        zero_init_residual: bool = True,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem={stem!r}: allowed values are 'imagenet', 'cifar'.")
        stem_channels = scaled_channels(64, width)
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, 2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, 1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem_channels)
        channels = stem_channels
        stages = []
        for index, count in enumerate(blocks):
            mid = scaled_channels(64 * 2**index, width)
            layers = []
            for b in range(count):
                stride = 2 if (b == 0 and index > 0) else 1
                layers.append(Bottleneck(channels, mid, stride))
                channels = mid * Bottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(channels, num_classes)
        if not self.fc.weight.is_meta:  # nothing to initialise on the meta device
            self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """He-normal convs (fan-out), BN γ=1 β=0, zero fc bias; the last BN of every block γ=0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.fc.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


def resnet50_imagenet(
    num_classes: int = 1000, width: float = 1.0, zero_init_residual: bool = True
) -> ResNet:
    """ResNet-50 v1.5 for 224×224 ImageNet inputs (the RigL paper's Table 2 model)."""
    return ResNet(RESNET50_BLOCKS, num_classes, "imagenet", width, zero_init_residual)


def resnet50_cifar(
    num_classes: int = 100, width: float = 1.0, zero_init_residual: bool = True
) -> ResNet:
    """ResNet-50 for 32×32 CIFAR inputs: 3×3 stride-1 stem, no max-pool (SPEC §8)."""
    return ResNet(RESNET50_BLOCKS, num_classes, "cifar", width, zero_init_residual)
