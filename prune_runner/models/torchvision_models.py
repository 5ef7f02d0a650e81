"""torchvision ImageNet classifiers, by name.

resnet18, resnet50, mobilenet_v2 and vit_b_16 are registered explicitly; any other name from
`torchvision.models.list_models(module=torchvision.models)` gets a ModelSpec built on the fly
(`torchvision_spec`, called by `models.get_model_spec`), unless the registry already holds that name
(the CIFAR VGGs `vgg*_bn` shadow torchvision's).

`pretrained=True` loads torchvision's DEFAULT weights (a download on first use, cached by torch
hub). With `num_classes != 1000` the 1000-class head is replaced after loading by a freshly
initialised one of the same input width.
"""

from __future__ import annotations

from typing import List

import torch.nn as nn
import torchvision

from ..errors import UserError
from .registry import MODELS, ModelSpec

IMAGENET_CLASSES = 1000
EXPLICIT_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "vit_b_16")

# constructor options per model: GoogLeNet and Inception-v3 return (logits, aux logits) in training
# mode; the runner trains and prunes the main classifier only, so their auxiliary heads are left out
BUILD_OPTIONS = {"googlenet": {"aux_logits": False}, "inception_v3": {"aux_logits": False}}
# without weights, the same two warn that their default init will change: today's default, given explicitly
SCRATCH_OPTIONS = {"googlenet": {"init_weights": True}, "inception_v3": {"init_weights": True}}


def torchvision_model_names() -> List[str]:
    return list(torchvision.models.list_models(module=torchvision.models))


def _replace_class_heads(model: nn.Module, num_classes: int) -> None:
    """Swap every 1000-way output layer (main and auxiliary heads) for a new num_classes one."""
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear) and child.out_features == IMAGENET_CLASSES:
                new = nn.Linear(child.in_features, num_classes, bias=child.bias is not None)
            elif isinstance(child, nn.Conv2d) and child.out_channels == IMAGENET_CLASSES:
                # squeezenet classifies with a 1x1 conv
                new = nn.Conv2d(child.in_channels, num_classes, child.kernel_size, child.stride)
            else:
                continue
            setattr(parent, child_name, new.to(child.weight.device, child.weight.dtype))


def _size_options(name: str, input_size: int | None, pretrained: bool) -> dict:
    """Constructor options for a non-default input side: a ViT fixes its patch grid (and position
    embedding length) when built, so model.input_size must reach its constructor."""
    if input_size is None or not name.startswith("vit_"):
        return {}
    native = _default_input_size(name)  # 224, or 518 for vit_h_14's weights
    if pretrained:
        if input_size != native:
            raise UserError(f"model.input_size={input_size} does not fit the pretrained weights of '{name}' "
                            f"({native} px); set model.input_size={native} or model.pretrained=false")
        return {}
    patch = int(name.rsplit("_", 1)[1])  # vit_b_16: 16-pixel patches
    if input_size % patch:
        raise UserError(f"model.input_size={input_size} is not a multiple of {name}'s {patch}-pixel patches; "
                        f"use e.g. {patch * max(1, round(input_size / patch))}")
    return {"image_size": input_size}


def build_torchvision_model(name: str, num_classes: int, pretrained: bool = False,
                            input_size: int | None = None) -> nn.Module:
    options = {**BUILD_OPTIONS.get(name, {}), **_size_options(name, input_size, pretrained)}
    if not pretrained:
        options.update(SCRATCH_OPTIONS.get(name, {}))
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        model = torchvision.models.get_model(name, weights=weights, **options)
    except Exception as err:  # network, cache or checksum failure: the user can avoid the download
        raise UserError(
            f"could not load pretrained weights {weights} for model '{name}' ({type(err).__name__}: {err}); "
            "set model.pretrained=false or give a base_checkpoint"
        ) from err
    if num_classes != IMAGENET_CLASSES:
        _replace_class_heads(model, num_classes)
    return model


def _default_input_size(name: str) -> int:
    """Crop side of the DEFAULT weights' eval transform (299 for inception_v3), else 224."""
    try:
        return int(torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size[0])
    except Exception:  # a model without published weights
        return 224


def torchvision_spec(name: str, input_size: int | None = None) -> ModelSpec:
    def build(num_classes: int, pretrained: bool = False, input_size: int | None = None) -> nn.Module:
        return build_torchvision_model(name, num_classes, pretrained, input_size)

    build.__name__ = name
    size = input_size if input_size is not None else _default_input_size(name)
    return ModelSpec(name, build, size, "torchvision")


for _name in EXPLICIT_MODELS:
    MODELS.add(_name, torchvision_spec(_name, input_size=224))
