"""Model x method smoke tests: build, one regularized step, prune to 1.5x, forward, and a save/load round
trip through the checkpoint format (bit-exact outputs).

`make test` runs every method on one model per architecture family (ViT included); `make test-slow` runs
every registered CIFAR model and ViT-B/16 with every method.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prune_runner.models import MODELS, build_model, list_models
from prune_runner.models.support import method_unsupported_reason
from prune_runner.pruning import ObdcCalibration, build_pruner, grad_calibration, progressive_prune
from prune_runner.pruning.macs import MacCounter
from prune_runner.pruning.methods import get_method, list_methods
from prune_runner.pruning.regularizers import build_regularizer
from prune_runner.run.checkpoint import load_checkpoint, model_payload, rebuild_model, save_checkpoint

CIFAR_MODELS = list_models(family="cifar")
# the smallest registered model of each architecture family, keyed by the module that registers the family
ONE_PER_FAMILY = {"cifar_resnet": "resnet20", "cifar_vgg": "vgg11_bn", "cifar_densenet": "densenet_cifar",
                  "cifar_mobilenetv2": "mobilenetv2_cifar", "torchvision_models": "vit_b_16"}
# ViT's position embedding fixes its input side at build time. The default matrix builds ViT-B/16 for 32 px
# (a 2x2 patch grid: every width the same as at 224 px, a fiftieth of the tokens); the slow matrix at 224 px
SLOW_INPUT_SIDE = {"vit_b_16": 224}
# ViT-B/16 (86M parameters) still costs seconds per method to build and prune: one method by default
DEFAULT_VIT_METHODS = ("l1",)


def _cases(models, vit_methods=None):
    """Every supported pair; a pair the runner refuses (models/support.py) is tested for its refusal there."""
    return [(m, method) for m in models for method in list_methods()
            if method_unsupported_reason(m, method) is None
            and (m != "vit_b_16" or vit_methods is None or method in vit_methods)]


def test_the_default_matrix_covers_every_architecture_family():
    families = {MODELS.get(name).builder.__module__.rsplit(".", 1)[1] for name in CIFAR_MODELS}
    assert families | {"torchvision_models"} == set(ONE_PER_FAMILY)
    assert all(MODELS.get(m).builder.__module__.endswith(f) for f, m in ONE_PER_FAMILY.items())


@pytest.mark.parametrize(("model_name", "method"), _cases(ONE_PER_FAMILY.values(), DEFAULT_VIT_METHODS))
def test_model_method(model_name, method, tmp_path):
    smoke(model_name, method, tmp_path, side=32)


@pytest.mark.slow
@pytest.mark.parametrize(("model_name", "method"), _cases([*CIFAR_MODELS, "vit_b_16"]))
def test_every_model_method(model_name, method, tmp_path):
    smoke(model_name, method, tmp_path, side=SLOW_INPUT_SIDE.get(model_name, 32))


def smoke(model_name, method, tmp_path, side: int):
    torch.manual_seed(0)
    spec = get_method(method)
    model = build_model(model_name, 10, input_size=side)
    x = torch.randn(4, 3, side, side)
    y = torch.arange(4) % 10
    pruner = build_pruner(model, x[:1], spec, 10, steps=8)  # big steps: few group rebuilds
    assert model.training, "building a pruner must leave the model's mode alone"

    if spec.regularizer is not None:
        reg = build_regularizer(spec.regularizer, model, pruner)
        reg.refresh()
        F.cross_entropy(model(x), y).backward()
        before = [p.grad.clone() for p in model.parameters()]
        reg.apply(1e-2)
        changed = sum(not torch.equal(b, p.grad) for b, p in zip(before, model.parameters()))
        assert changed > 0, "the regularizer added no gradient"
        model.zero_grad(set_to_none=True)

    calibrate = None
    if spec.calibration == "grad":
        calibrate = lambda: grad_calibration(model, [(x, y)])
    elif spec.calibration == "obdc":
        obdc = ObdcCalibration(pruner, seed=0)
        calibrate = lambda: obdc(model, [(x, y)])
    model.eval()
    result = progressive_prune(model, pruner, MacCounter(model, x[:1]), 1.5, calibrate=calibrate)
    assert result["speed_up"] >= 1.5
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, 10)

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model_payload(model, model_name, 10, side, pruner.pruning_history()))
    rebuilt, history = rebuild_model(load_checkpoint(path), path)
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), out)
    assert len(history) == len(pruner.pruning_history())
