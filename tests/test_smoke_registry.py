"""Every registered CIFAR model x every method: build, one regularized step, prune to 1.5x,
forward, and a save/load round trip through the checkpoint format (bit-exact outputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prune_runner.checkpoint import load_checkpoint, model_payload, rebuild_model, save_checkpoint
from prune_runner.flops import MacCounter
from prune_runner.methods import get_method, list_methods
from prune_runner.models import build_model, list_models
from prune_runner.pruning import ObdcCalibration, build_pruner, grad_calibration, progressive_prune
from prune_runner.regularizers import build_regularizer

CIFAR_MODELS = list_models(family="cifar")


@pytest.mark.parametrize("method", list_methods())
@pytest.mark.parametrize("model_name", CIFAR_MODELS)
def test_model_method(model_name, method, tmp_path):
    torch.manual_seed(0)
    spec = get_method(method)
    model = build_model(model_name, 10)
    x = torch.randn(4, 3, 32, 32)
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
    save_checkpoint(path, model_payload(model, model_name, 10, 32, pruner.pruning_history()))
    rebuilt, history = rebuild_model(load_checkpoint(path), path)
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), out)
    assert len(history) == len(pruner.pruning_history())
