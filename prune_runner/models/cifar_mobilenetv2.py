"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs: the stem and the second stage use
stride 1 instead of 2, so the feature maps are 32 -> 16 -> 8 -> 4 (ImageNet: 224 -> 7).

Inverted residual: 1x1 expand (x t) -> 3x3 depthwise -> 1x1 linear projection; identity
shortcut only where stride is 1 and channels are kept, as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .cifar_resnet import reject_pretrained
from .registry import register_model

# (expansion t, output channels c, repeats n, stride of the first repeat s); ImageNet strides
# are 1,2,2,2,1,2,1 - the second stage keeps stride 1 here for 32x32 inputs.
CIFAR_STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]


def conv_bn_relu6(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        layers = [] if expansion == 1 else [conv_bn_relu6(in_channels, hidden, 1)]
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, stem_channels: int = 32, last_channels: int = 1280):
        super().__init__()
        layers = [conv_bn_relu6(3, stem_channels, 3, stride=1)]
        in_channels = stem_channels
        for expansion, out_channels, repeats, first_stride in CIFAR_STAGES:
            for i in range(repeats):
                stride = first_stride if i == 0 else 1
                layers.append(InvertedResidual(in_channels, out_channels, stride, expansion))
                in_channels = out_channels
        layers.append(conv_bn_relu6(in_channels, last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model("mobilenetv2_cifar", input_size=32, family="cifar")
def mobilenetv2_cifar(num_classes: int, pretrained: bool = False) -> nn.Module:
    reject_pretrained("mobilenetv2_cifar", pretrained)
    return CifarMobileNetV2(num_classes)
