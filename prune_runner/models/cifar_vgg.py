"""VGG-11/13/16/19 with BatchNorm for 32x32 inputs (CIFAR), as in the DepGraph CIFAR benchmarks.

Five 2x2 max pools take 32x32 down to 1x1, so the conv stack ends in a 512-vector; the
classifier is Linear(512, 512) -> ReLU -> Linear(512, num_classes).

Names: `vgg11_bn`, `vgg13_bn`, `vgg16_bn`, `vgg19_bn` are these CIFAR models. torchvision has
ImageNet models of the same names; the registry wins, and the torchvision fallback in
`models.get_model_spec` only covers names that are not registered, so the ImageNet
VGGs are not reachable by those names (use another torchvision model or register a new name).
"""

from __future__ import annotations

from typing import List, Union

import torch
import torch.nn as nn

from .cifar_resnet import reject_pretrained
from .registry import register_model

# Output channels of each 3x3 conv; "M" is a 2x2 max pool.
VGG_LAYOUTS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    def __init__(self, layout: List[Union[int, str]], num_classes: int = 10):
        super().__init__()
        layers: List[nn.Module] = []
        in_channels = 3
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_channels, item, 3, padding=1, bias=False),
                           nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                in_channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels, 512), nn.ReLU(inplace=True), nn.Linear(512, num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _builder(depth: int):
    def build(num_classes: int, pretrained: bool = False) -> nn.Module:
        reject_pretrained(f"vgg{depth}_bn", pretrained)
        return CifarVGG(VGG_LAYOUTS[depth], num_classes)

    build.__name__ = f"vgg{depth}_bn"
    return build


for _depth in VGG_LAYOUTS:
    register_model(f"vgg{_depth}_bn", input_size=32, family="cifar")(_builder(_depth))
