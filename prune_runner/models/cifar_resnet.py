"""CIFAR ResNets (He et al. 2016, section 4.2): depth 6n+2, three stages of n BasicBlocks with
16/32/64 channels at 32x32/16x16/8x8, a 3x3 conv stem, global average pooling and one Linear.

Shortcuts: identity where the shape is kept; a strided 1x1 conv + BN ("option B") where the
stage changes channels and resolution, as in the DepGraph / Torch-Pruning CIFAR benchmarks.
ResNet-56 with 10 classes has 855,770 parameters; its conv+linear MACs at 32x32 are
125.49 M counting the 3x3 convs and the classifier, 125.75 M with the two 1x1 shortcut convs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError
from .registry import register_model


def reject_pretrained(name: str, pretrained: bool) -> None:
    """CIFAR models ship without weights: start from scratch or from a base_checkpoint."""
    if pretrained:
        raise UserError(
            f"no pretrained weights for CIFAR model '{name}'; set model.pretrained=false "
            "or give a base_checkpoint"
        )


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, widths=(16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_channels = [], widths[0]
        for stage_index, width in enumerate(widths):
            first_stride = 1 if stage_index == 0 else 2  # halve the resolution at stages 2 and 3
            blocks = []
            for block_index in range(blocks_per_stage):
                blocks.append(BasicBlock(in_channels, width, first_stride if block_index == 0 else 1))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _builder(depth: int):
    def build(num_classes: int, pretrained: bool = False) -> nn.Module:
        reject_pretrained(f"resnet{depth}", pretrained)
        return CifarResNet(depth, num_classes)

    build.__name__ = f"resnet{depth}"
    return build


for _depth in (20, 32, 56, 110):
    register_model(f"resnet{_depth}", input_size=32, family="cifar")(_builder(_depth))
