"""Model zoo: every CIFAR model builds and runs; registry and torchvision fallback behave."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from prune_runner.errors import UnknownChoiceError, UserError
from prune_runner.models import MODELS, build_model, get_model_spec, list_models, register_model
from prune_runner.pruning.hints import pruning_hints

CIFAR_MODELS = list_models(family="cifar")


def test_zoo_has_the_expected_cifar_models():
    expected = {"resnet20", "resnet32", "resnet56", "resnet110", "vgg11_bn", "vgg13_bn", "vgg16_bn",
                "vgg19_bn", "densenet_cifar", "mobilenetv2_cifar"}
    assert expected <= set(CIFAR_MODELS)
    assert {"resnet18", "resnet50", "mobilenet_v2", "vit_b_16"} <= set(list_models(family="torchvision"))


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_model_forward_shapes(name):
    assert MODELS.get(name).input_size == 32
    for num_classes in (10, 100):
        model = build_model(name, num_classes).eval()
        with torch.no_grad():
            out = model(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, num_classes)
        assert torch.isfinite(out).all()
        heads = pruning_hints(model, num_classes)["ignored_layers"]
        assert len(heads) == 1 and heads[0].out_features == num_classes


def test_cifar_models_have_no_pretrained_weights():
    with pytest.raises(UserError, match="resnet20"):
        build_model("resnet20", 10, pretrained=True)


def test_registry_rejects_duplicate_names():
    with pytest.raises(ValueError, match="resnet56"):
        register_model("resnet56")(lambda num_classes, pretrained=False: nn.Identity())


def test_unknown_model_lists_the_choices():
    with pytest.raises(UnknownChoiceError) as info:
        build_model("resnet57", 10)
    message = str(info.value)
    assert "resnet57" in message
    for choice in ("resnet56", "mobilenetv2_cifar", "vit_b_16", "convnext_tiny"):
        assert choice in message


def test_torchvision_fallback_and_cifar_precedence():
    spec = get_model_spec("resnet34")  # not registered: built on the fly
    assert (spec.family, spec.input_size) == ("torchvision", 224)
    assert get_model_spec("inception_v3").input_size == 299
    assert get_model_spec("vgg16_bn").family == "cifar"  # the CIFAR VGG shadows torchvision's


def test_pretrained_download_failure_is_a_user_error(monkeypatch):
    def offline(name, **config):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(UserError, match="model.pretrained=false"):
        build_model("resnet18", 10, pretrained=True)


def test_pretrained_head_is_replaced_for_other_class_counts(monkeypatch):
    real_get_model = torchvision.models.get_model

    def without_download(name, weights=None, **config):  # stand-in for loaded ImageNet weights
        return real_get_model(name, weights=None, **config)

    monkeypatch.setattr(torchvision.models, "get_model", without_download)
    model = build_model("mobilenet_v2", 7, pretrained=True)
    assert model.classifier[-1].out_features == 7
    assert model.classifier[-1].in_features == 1280


def test_pruning_hints_are_fresh_per_call():
    model = build_model("resnet20", 10)
    first, second = pruning_hints(model, 10), pruning_hints(model, 10)
    for key in ("ignored_layers", "num_heads", "in_channel_groups", "out_channel_groups"):
        assert first[key] is not second[key]
    assert first["ignored_layers"] == [model.fc]
