"""DenseNet-BC for CIFAR (Huang et al. 2017): three dense blocks at 32x32/16x16/8x8 joined by
transitions (BN-ReLU-1x1 conv compressing channels by 0.5, then 2x2 average pool).

Each dense layer is BN-ReLU-1x1 conv (4k channels) -BN-ReLU-3x3 conv (k channels) and its
output is concatenated to its input; torch-pruning follows those torch.cat dependencies.
`densenet_cifar` is DenseNet-BC with depth 40 and growth rate k=12 (6 layers per block),
small enough that every method's smoke test stays fast; `CifarDenseNetBC(depth=100)` is the
0.77 M-parameter variant.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .cifar_resnet import reject_pretrained
from .registry import register_model


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int):
        super().__init__()
        bottleneck = 4 * growth  # width of the 1x1 bottleneck, as in DenseNet-BC
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, bottleneck, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(bottleneck)
        self.conv2 = nn.Conv2d(bottleneck, growth, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=False)  # the input is reused by the concat: no in-place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class CifarDenseNetBC(nn.Module):
    def __init__(self, depth: int = 100, growth: int = 12, compression: float = 0.5, num_classes: int = 10):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"DenseNet-BC depth must be 6n+4, got {depth}")
        layers_per_block = (depth - 4) // 6  # each dense layer holds two convs
        channels = 2 * growth
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        stages = []
        for block_index in range(3):
            block = []
            for _ in range(layers_per_block):
                block.append(DenseLayer(channels, growth))
                channels += growth
            stages.append(nn.Sequential(*block))
            if block_index < 2:
                out_channels = int(channels * compression)
                stages.append(Transition(channels, out_channels))
                channels = out_channels
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.features(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("densenet_cifar", input_size=32, family="cifar")
def densenet_cifar(num_classes: int, pretrained: bool = False) -> nn.Module:
    reject_pretrained("densenet_cifar", pretrained)
    return CifarDenseNetBC(depth=40, growth=12, num_classes=num_classes)
