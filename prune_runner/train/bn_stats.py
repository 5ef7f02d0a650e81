"""Re-estimating slow BatchNorm statistics after an epoch ("precise BN").

torchvision's MobileNetV3 and EfficientNets build their BatchNorm layers with momentum 0.01,
tuned for ImageNet's ~5,000 steps per epoch. In a short schedule (digits: 23 steps per epoch)
their running statistics stay near their initial values (after 138 steps, 25% of the start is
left), so a network that fits its training data evaluates at chance (BENCHMARKS.md). After
each training epoch, those layers' running statistics are recomputed as plain averages over
training batches. Layers with a faster momentum (>= 0.1, every CIFAR model here) are left alone,
except under a sparsity regularizer: it shrinks the weights faster than any running average follows
(resnet20 on digits, demo schedule: chance accuracy in eval mode for 3 of the 10 sparse epochs while
training accuracy stayed above 89%; 93-98% in every epoch once every layer was re-estimated), so
sparse training re-estimates every BatchNorm layer before it validates.
"""

from __future__ import annotations

from itertools import islice
from typing import Iterable, List

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

SLOW_MOMENTUM = 0.1  # BatchNorm layers with a smaller running-average momentum get recalibrated
CALIB_BATCHES = 50  # training batches averaged per recalibration, at most


def batchnorms(model: nn.Module) -> List[_BatchNorm]:
    """The BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def slow_batchnorms(model: nn.Module) -> List[_BatchNorm]:
    return [m for m in batchnorms(model) if m.momentum is not None and m.momentum < SLOW_MOMENTUM]


@torch.no_grad()
def recalibrate_batchnorms(model: nn.Module, layers: List[_BatchNorm], batches: Iterable, fast,
                           device: torch.device) -> int:
    """Recompute the running statistics of `layers` (BatchNorm layers of `model`) as plain averages over
    `batches`, leaving the others' unchanged; returns how many were."""
    if not layers:
        return 0
    all_bn = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = {m: m.momentum for m in all_bn}
    was_training = model.training
    for m in all_bn:
        if m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        else:
            m.momentum = 0.0  # train-mode forwards leave the other layers' statistics unchanged
    model.train()
    try:
        for x, _ in islice(batches, CALIB_BATCHES):
            if fast.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with fast.autocast(device):
                model(x)
    finally:
        for m, momentum in saved.items():
            m.momentum = momentum
        model.train(was_training)
    return len(layers)
