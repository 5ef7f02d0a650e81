"""The one BatchNorm re-estimator (train/batchnorm.py): only the chosen layers' buffers change, as plain averages
over the batches of the eval-time forward (dropout off), deterministically; slow layers after each epoch, every
layer after pruning and in sparse training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from prune_runner.data import build_data
from prune_runner.models import build_model
from prune_runner.train.batchnorm import batchnorms, reestimate_batchnorms, slow_batchnorms, training_batches
from prune_runner.train.loop import Fast

CPU = torch.device("cpu")
FP32 = Fast(amp=False, channels_last=False)


def _digits():
    return build_data("digits", root="data", input_size=32, device=CPU, download=False, in_memory=None,
                      augment=True, workers=0, rank=0, world_size=1, train_limit=256)


def _stale_model() -> nn.Module:
    """resnet20 whose BN running stats are wrong for its weights (what pruning leaves behind)."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(0.01)
            m.momentum = 0.01  # slow, like torchvision's mobilenet_v3: plain training would take long to fix it
    return model


def _bn_buffers(model):
    return {n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def _slow_and_fast():
    """(slow, fast, model of the two, ten batches with mean 5): torchvision's momentum 0.01 beside 0.1."""
    slow, fast = nn.BatchNorm2d(3, momentum=0.01), nn.BatchNorm2d(3, momentum=0.1)
    return slow, fast, nn.Sequential(slow, fast).eval(), [(5 + torch.randn(8, 3, 4, 4), None) for _ in range(10)]


def test_reestimation_changes_only_bn_buffers_and_is_deterministic():
    data = _digits()
    model = _stale_model()
    model.train()  # the caller's mode must come back
    before = copy.deepcopy(model.state_dict())
    used = reestimate_batchnorms(model, training_batches(data, 32, 12, seed=3), CPU, FP32)
    assert used == 12  # 256 images / 32 = 8 batches an epoch: the stream continues into the next epoch
    assert model.training
    after = model.state_dict()
    bn_names = _bn_buffers(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    params = {n for n, _ in model.named_parameters()}
    assert not changed & params, "weights must not change"
    assert changed, "the BN statistics should have been re-estimated"
    assert all(k.rsplit(".", 1)[0] in bn_names for k in changed), changed
    assert all(m.momentum == 0.01 for m in model.modules() if isinstance(m, nn.BatchNorm2d))

    again = _stale_model()
    reestimate_batchnorms(again, training_batches(data, 32, 12, seed=3), CPU, FP32)
    for k, v in again.state_dict().items():
        assert torch.equal(v, after[k]), f"{k} differs between two re-estimations with the same seed"


@pytest.mark.parametrize("after", ["pruning", "an epoch"])
def test_reestimation_is_the_average_of_batch_statistics_with_dropout_off(after):
    """After pruning (every layer) and after an epoch (the slow layers): dropout stays off while it estimates."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.01))
    model[2].running_mean.fill_(3.0)
    batches = [(torch.randn(8, 3, 6, 6) * (i + 1), torch.zeros(8, dtype=torch.long)) for i in range(3)]
    model.eval()
    layers = None if after == "pruning" else slow_batchnorms(model)
    assert reestimate_batchnorms(model, iter(batches), CPU, FP32, layers=layers) == 3
    assert not model.training and model[2].momentum == 0.01
    with torch.no_grad():  # what the BN layer saw, without dropout: equal weights per batch
        feats = [model[1](x) for x, _ in batches]
    means = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    variances = torch.stack([f.transpose(0, 1).flatten(1).var(1, unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(model[2].running_mean, means)
    torch.testing.assert_close(model[2].running_var, variances)


def test_slow_layers_only_are_a_plain_average_and_the_fast_ones_kept():
    """After an epoch: the slow layer is re-estimated; the fast one keeps its statistics and, in eval mode,
    normalizes the slow one's output with them."""
    slow, fast, model, batches = _slow_and_fast()
    assert slow_batchnorms(model) == [slow]
    assert reestimate_batchnorms(model, batches, CPU, FP32, layers=slow_batchnorms(model)) == 10
    assert not model.training and not slow.training and not fast.training
    expected = torch.cat([x for x, _ in batches]).mean(dim=(0, 2, 3))
    assert torch.allclose(slow.running_mean, expected, atol=1e-4)  # a plain average, not 1% per batch
    assert torch.equal(fast.running_mean, torch.zeros(3)) and torch.equal(fast.running_var, torch.ones(3))
    assert fast.momentum == 0.1 and slow.momentum == 0.01


def test_every_layer_recomputes_the_fast_ones_too():
    slow, fast, model, batches = _slow_and_fast()
    assert batchnorms(model) == [slow, fast]
    assert reestimate_batchnorms(model, batches, CPU, FP32) == 10  # layers=None: every layer
    assert fast.momentum == 0.1 and slow.momentum == 0.01
    assert torch.allclose(fast.running_mean, torch.zeros(3), atol=1e-4)  # slow's output: normalized, mean 0
    assert torch.allclose(fast.running_var, torch.ones(3), atol=1e-2)


def test_which_models_have_slow_batchnorms():
    assert slow_batchnorms(build_model("mobilenet_v3_small", 10))  # torchvision: momentum 0.01
    assert not slow_batchnorms(build_model("resnet20", 10))  # CIFAR models: 0.1, untouched


def test_no_batchnorm_is_a_no_op():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    before = copy.deepcopy(model.state_dict())
    assert reestimate_batchnorms(model, iter([(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))]), CPU,
                                 FP32) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert reestimate_batchnorms(_stale_model(), iter([]), CPU, FP32, layers=[]) == 0  # no layer chosen


def test_sparse_training_reestimates_every_batchnorm_before_it_validates(tmp_path, monkeypatch):
    """A regularizer shrinks weights faster than the running averages follow: sparse_train re-estimates
    every layer each epoch; pretraining leaves resnet20's (momentum 0.1) alone; after pruning, every layer
    is re-estimated on prune.bn_stats_batches batches."""
    from inprocess import tiny_config

    from prune_runner.run import stages
    from prune_runner.run.pipeline import run_pipeline

    calls = []
    real = stages.reestimate_batchnorms

    def spy(model, batches, device, fast, layers=None):
        used = real(model, batches, device, fast, layers=layers)
        calls.append((layers is None or len(layers) == len(batchnorms(model)), used))
        return used

    monkeypatch.setattr(stages, "reestimate_batchnorms", spy)
    cfg = tiny_config(tmp_path, "resnet20", "group_norm")
    cfg.model.input_size = 8
    cfg.prune.bn_stats_batches = 3
    cfg.stages = ["pretrain", "sparse_train", "prune"]
    records = run_pipeline(cfg, tmp_path / "run")
    # one sparse epoch (256 images / 32: 8 batches, all of them); none in pretraining; 3 after pruning
    assert calls == [(True, 8), (True, 3)]
    assert records["prune"]["metrics"]["bn_recal_batches"] == 3
