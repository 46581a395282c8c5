"""Pre-activation Wide ResNet for CIFAR (Zagoruyko & Komodakis 2016), as in RigL (SPEC §8).

WRN-22-2: a 3×3 stem conv with 16 filters, three groups of 3 pre-activation blocks with 32, 64 and
128 channels (strides 1, 2, 2), a 1×1 projection shortcut where the channel count changes, dropout
0.3 between the two 3×3 convs of a block, then BN → ReLU → global average pool → linear.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PreActBlock", "WideResNet", "scaled_channels", "wrn22_2"]


def scaled_channels(channels: int, width: float) -> int:
    """``channels · width`` rounded to the nearest integer, at least 1 (Small-Dense variants)."""
    if not width > 0:
        raise ValueError(f"width={width!r}: allowed values are > 0 (1.0 is the paper's model).")
    return max(1, round(channels * width))


class PreActBlock(nn.Module):
    """BN → ReLU → conv3×3(stride) → BN → ReLU → dropout → conv3×3, plus the shortcut.

    Where the channel count or the resolution changes, the shortcut is a 1×1 conv (with the same
    stride) applied to the pre-activated input; otherwise it is the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + residual


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32×32 inputs; ``width`` scales every channel count."""

    def __init__(
        self,
        depth: int = 22,
        widen_factor: int = 2,
        num_classes: int = 10,
        dropout: float = 0.3,
        width: float = 1.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"depth={depth!r}: allowed values are 6n + 4 (10, 16, 22, 28, ...).")
        blocks = (depth - 4) // 6
        stem = scaled_channels(16, width)
        widths = [scaled_channels(16 * k * widen_factor, width) for k in (1, 2, 4)]
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, padding=1, bias=False)
        self.group1 = _group(stem, widths[0], blocks, 1, dropout)
        self.group2 = _group(widths[0], widths[1], blocks, 2, dropout)
        self.group3 = _group(widths[1], widths[2], blocks, 2, dropout)
        channels = widths[2]
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.group3(self.group2(self.group1(out)))
        out = torch.relu(self.bn(out))
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


def _group(
    in_channels: int, out_channels: int, blocks: int, stride: int, dropout: float
) -> nn.Sequential:
    """``blocks`` pre-activation blocks; the first one changes channels and resolution."""
    layers = [PreActBlock(in_channels, out_channels, stride, dropout)]
    layers += [PreActBlock(out_channels, out_channels, 1, dropout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _init_weights(model: nn.Module) -> None:
    """He-normal convs (fan-out), BN γ=1 β=0, zero linear biases (skipped on the meta device,
    where there are no values to set and random init would only cost time)."""
    if any(p.is_meta for p in model.parameters()):
        return
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


def wrn22_2(num_classes: int = 10, width: float = 1.0, dropout: float = 0.3) -> WideResNet:
    """WideResNet-22-2 of the RigL paper's CIFAR-10 experiments (SPEC §8)."""
    return WideResNet(
        depth=22, widen_factor=2, num_classes=num_classes, dropout=dropout, width=width
    )
