"""The model registry: name -> ModelSpec, filled by `register_model` (the CIFAR modules) and by
torchvision_models (its explicitly named models)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]  # builder(num_classes, pretrained=False) -> model
    input_size: int  # default square input side, pixels (32 for CIFAR nets, 224 for ImageNet nets)
    family: str  # "cifar" or "torchvision"


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, input_size: int = 32, family: str = "cifar"):
    """Decorator for a builder `fn(num_classes, pretrained=False) -> nn.Module`."""

    def add(fn):
        MODELS.add(name, ModelSpec(name, fn, input_size, family))
        return fn

    return add
