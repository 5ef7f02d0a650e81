"""Model registry: name -> ModelSpec. `get_model_spec` is the one lookup and `build_model` the one way to
build a model.

CIFAR models are registered by their modules (imported below for that); any torchvision
classification model is also accepted by name (e.g. resnet50, mobilenet_v2, vit_b_16).
"""

from __future__ import annotations

from typing import List

import torch.nn as nn

from ..errors import UnknownChoiceError
from . import cifar_densenet, cifar_mobilenetv2, cifar_resnet, cifar_vgg  # noqa: F401  (their registrations)
from .registry import MODELS, ModelSpec, register_model
from .support import ModelNotSupportedError, model_unsupported_reason
from .torchvision_models import torchvision_model_names, torchvision_spec

__all__ = ["MODELS", "ModelSpec", "build_model", "get_model_spec", "list_models", "register_model"]


def get_model_spec(name: str) -> ModelSpec:
    """The registered model `name`, else the torchvision classification model of that name (the registry
    wins: the CIFAR VGGs `vgg*_bn` shadow torchvision's). A model this project cannot prune is refused
    with its reason; an unknown name lists the choices."""
    if name in MODELS:
        return MODELS.get(name)
    available = torchvision_model_names()
    if name in available:
        reason = model_unsupported_reason(name)
        if reason is not None:
            raise ModelNotSupportedError(f"model '{name}' is not supported: {reason}")
        return torchvision_spec(name)
    raise UnknownChoiceError("model", name, set(MODELS.names()) | set(available))


def list_models(family: str | None = None) -> List[str]:
    return [n for n in MODELS.names() if family is None or MODELS.get(n).family == family]


def build_model(name: str, num_classes: int, pretrained: bool = False, input_size: int | None = None) -> nn.Module:
    """`input_size` (pixels) reaches only torchvision builders: a ViT fixes its patch grid at build time."""
    spec = get_model_spec(name)
    if spec.family == "torchvision":
        return spec.builder(num_classes, pretrained=pretrained, input_size=input_size)
    return spec.builder(num_classes, pretrained=pretrained)
