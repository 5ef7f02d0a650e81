"""Every torchvision classification model by name (`make test-walk`, about an hour on 2 CPU cores): it is
pruned, or refused with one line.

For each name in torchvision.models.list_models(module=torchvision.models):
  - a name in the "not supported" table raises that one-line error, and nothing is built;
  - otherwise the model is built as the pipeline builds it, pruned to 1.5x MACs with group_norm
    and with l1 (10-step schedule, pruner built in training mode as the pipeline does), and runs a
    forward pass in eval and in training mode (scripts/timm_walk.py's `prune_to_target`, which the timm walk,
    tests/test_timm_walk.py, takes too); the model x method table is checked against the model's layers.
Inputs are 64 px, except Inception-v3 (96 px: it needs 75 or more) and ViT-H/14 (56 px: 14-pixel patches).
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn
from conftest import script_main

from prune_runner.models import MODELS, build_model, get_model_spec
from prune_runner.models.support import (
    LINEAR_ON_TOKENS,
    NO_BATCHNORM,
    ModelNotSupportedError,
    model_unsupported_reason,
    name_matches,
)
from prune_runner.models.torchvision_models import torchvision_model_names

script_main("timm_walk")  # the walks share its pruning step (scripts/timm_walk.py)
timm_walk = sys.modules["script_timm_walk"]

INPUT_SIZE = {"inception_v3": 96, "vit_h_14": 56}  # pixels; 64 for the others
NAMES = [n for n in torchvision_model_names() if n not in MODELS or n in MODELS and
         get_model_spec(n).family == "torchvision"]  # the CIFAR vgg*_bn shadow torchvision's


def _linear_sees_tokens(model: nn.Module, x: torch.Tensor) -> bool:
    """Does any Linear layer get an input of more than 2 dimensions?"""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].dim()))
             for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return any(d > 2 for d in seen)


@pytest.mark.walk
@pytest.mark.parametrize("name", NAMES)
def test_torchvision_model_prunes_or_is_refused(name):
    if model_unsupported_reason(name) is not None:
        with pytest.raises(ModelNotSupportedError, match=f"model '{name}' is not supported: "):
            get_model_spec(name)
        return
    size = INPUT_SIZE.get(name, 64)
    x = torch.randn(2, 3, size, size)
    for method in ("group_norm", "l1"):
        torch.manual_seed(0)
        model = build_model(name, 10, input_size=size).train()
        if method == "group_norm":  # the support tables hold for the model itself
            assert name_matches(name, NO_BATCHNORM) == (not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                          for m in model.modules())), name
            assert name_matches(name, LINEAR_ON_TOKENS) == _linear_sees_tokens(model, x[:1]), name
        # to 1.5x MACs, then a forward in eval and in training mode (the timm walk's own step)
        twin = build_model(name, 10, input_size=size)  # unpruned, to look the listed parameters up
        _, _, notes = timm_walk.prune_to_target(model, x, method)
        assert timm_walk.unnamed_parameters(twin, notes) == [], (name, method)  # the hints name each one
        del model
