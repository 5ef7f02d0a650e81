"""Model registry: name -> ModelSpec. `build_model` is the one way to build a model.

CIFAR models are registered by their modules (imported below); any torchvision
classification model is also accepted by name (e.g. resnet50, mobilenet_v2, vit_b_16),
and any timm model as `timm/<name>` (timm_models.py; timm is an optional dependency).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List

import torch.nn as nn

from ..registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]  # builder(num_classes, pretrained=False) -> model
    input_size: int  # default square input side, pixels (32 for CIFAR nets, 224 for ImageNet nets)
    family: str  # "cifar", "torchvision" or "timm"


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, input_size: int = 32, family: str = "cifar"):
    """Decorator for a builder `fn(num_classes, pretrained=False) -> nn.Module`."""

    def add(fn):
        MODELS.add(name, ModelSpec(name, fn, input_size, family))
        return fn

    return add


# Filled in by the model modules; imported for their registrations (timm_models: the timm/ family, which
# imports timm only when such a name is used).
from . import cifar_densenet, cifar_mobilenetv2, cifar_resnet, cifar_vgg, timm_models, torchvision_models  # noqa: E402,F401
from .torchvision_models import get_model_spec  # noqa: E402


def list_models(family: str | None = None) -> List[str]:
    return [n for n in MODELS.names() if family is None or MODELS.get(n).family == family]


def build_model(name: str, num_classes: int, pretrained: bool = False, input_size: int | None = None) -> nn.Module:
    """`input_size` (pixels) reaches torchvision and timm builders: a ViT fixes its patch grid at build time."""
    spec = get_model_spec(name)
    if spec.family in ("torchvision", "timm"):
        return spec.builder(num_classes, pretrained=pretrained, input_size=input_size)
    return spec.builder(num_classes, pretrained=pretrained)
