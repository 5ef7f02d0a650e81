"""Slow BatchNorm layers (torchvision's momentum 0.01) get their statistics re-estimated; others are left alone."""

from __future__ import annotations

import torch
import torch.nn as nn

from prune_runner.bn_stats import recalibrate_slow_batchnorms, slow_batchnorms
from prune_runner.models import build_model
from prune_runner.train import Fast


def test_slow_batchnorm_statistics_are_recomputed_and_fast_ones_kept():
    slow, fast = nn.BatchNorm2d(3, momentum=0.01), nn.BatchNorm2d(3, momentum=0.1)
    model = nn.Sequential(slow, fast).eval()
    batches = [(5 + torch.randn(8, 3, 4, 4), None) for _ in range(10)]
    n = recalibrate_slow_batchnorms(model, batches, Fast(amp=False, channels_last=False), torch.device("cpu"))
    assert n == 1 and not model.training
    expected = torch.cat([x for x, _ in batches]).mean(dim=(0, 2, 3))
    assert torch.allclose(slow.running_mean, expected, atol=1e-4)  # a plain average, not 1% per batch
    assert torch.equal(fast.running_mean, torch.zeros(3)) and fast.momentum == 0.1 and slow.momentum == 0.01


def test_which_models_have_slow_batchnorms():
    assert slow_batchnorms(build_model("mobilenet_v3_small", 10))  # torchvision: momentum 0.01
    assert not slow_batchnorms(build_model("resnet20", 10))  # CIFAR models: 0.1, untouched
