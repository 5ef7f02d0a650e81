"""Slow BatchNorm layers (torchvision's momentum 0.01) get their statistics re-estimated; others are left alone."""

from __future__ import annotations

import torch
import torch.nn as nn

from prune_runner.models import build_model
from prune_runner.train.bn_stats import batchnorms, recalibrate_batchnorms, slow_batchnorms
from prune_runner.train.loop import Fast


def _slow_and_fast():
    """(slow, fast, model of the two, ten batches with mean 5): torchvision's momentum 0.01 beside 0.1."""
    slow, fast = nn.BatchNorm2d(3, momentum=0.01), nn.BatchNorm2d(3, momentum=0.1)
    return slow, fast, nn.Sequential(slow, fast).eval(), [(5 + torch.randn(8, 3, 4, 4), None) for _ in range(10)]


def _recalibrate(model, layers, batches) -> int:
    return recalibrate_batchnorms(model, layers, batches, Fast(amp=False, channels_last=False), torch.device("cpu"))


def test_slow_batchnorm_statistics_are_recomputed_and_fast_ones_kept():
    slow, fast, model, batches = _slow_and_fast()
    n = _recalibrate(model, slow_batchnorms(model), batches)
    assert n == 1 and not model.training
    expected = torch.cat([x for x, _ in batches]).mean(dim=(0, 2, 3))
    assert torch.allclose(slow.running_mean, expected, atol=1e-4)  # a plain average, not 1% per batch
    assert torch.equal(fast.running_mean, torch.zeros(3)) and fast.momentum == 0.1 and slow.momentum == 0.01


def test_which_models_have_slow_batchnorms():
    assert slow_batchnorms(build_model("mobilenet_v3_small", 10))  # torchvision: momentum 0.01
    assert not slow_batchnorms(build_model("resnet20", 10))  # CIFAR models: 0.1, untouched


def test_every_layer_recomputes_the_fast_ones_too():
    slow, fast, model, batches = _slow_and_fast()
    n = _recalibrate(model, batchnorms(model), batches)
    assert n == 2 and fast.momentum == 0.1
    assert torch.allclose(fast.running_mean, torch.zeros(3), atol=1e-4)  # slow's output: normalized, mean 0
    assert torch.allclose(fast.running_var, torch.ones(3), atol=1e-2)


def test_sparse_training_reestimates_every_batchnorm_before_it_validates(tmp_path, monkeypatch):
    """A regularizer shrinks weights faster than the running averages follow: sparse_train re-estimates
    every layer each epoch; pretraining leaves resnet20's (momentum 0.1) alone."""
    from inprocess import tiny_config

    from prune_runner.run import stages
    from prune_runner.run.pipeline import run_pipeline

    calls = []
    real = stages.recalibrate_batchnorms
    monkeypatch.setattr(stages, "recalibrate_batchnorms",
                        lambda model, layers, *a: calls.append(len(layers) == len(batchnorms(model)))
                        or real(model, layers, *a))
    cfg = tiny_config(tmp_path, "resnet20", "group_norm")
    cfg.model.input_size = 8
    cfg.stages = ["pretrain", "sparse_train"]
    run_pipeline(cfg, tmp_path / "run")
    assert calls == [True]  # one sparse epoch; no call in pretraining
