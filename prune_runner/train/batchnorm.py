"""BatchNorm statistics re-estimated from training batches: the one re-estimator, used at two moments.

After a training epoch (fit): torchvision's MobileNetV3 and EfficientNets build their BatchNorm layers with
momentum 0.01, tuned for ImageNet's ~5,000 steps per epoch. In a short schedule (digits: 23 steps per epoch)
their running statistics stay near their initial values (after 138 steps, 25% of the start is left), so a
network that fits its training data evaluates at chance (BENCHMARKS.md). So those slow layers are re-estimated
after each epoch. Layers with a faster momentum (>= 0.1, every CIFAR model here) are left alone, except under a
sparsity regularizer: it shrinks the weights faster than any running average follows (resnet20 on digits, demo
schedule: chance accuracy in eval mode for 3 of the 10 sparse epochs while training accuracy stayed above 89%;
93-98% in every epoch once every layer was re-estimated), so sparse training re-estimates every layer.

After pruning (adaptive BN, EagleEye, Li et al. 2020): removing channels changes the inputs of the layers after
a pruned one, and their stale statistics, not lost capacity, cause most of the accuracy drop right after
pruning. Every layer is re-estimated on `prune.bn_stats_batches` training batches, with no weight update.

Either way only the re-estimated BatchNorm layers run in train mode: dropout, stochastic depth and the other
BatchNorm layers stay in eval mode, so the statistics are those of the eval-time forward.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import List, Optional

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .loop import Fast

SLOW_MOMENTUM = 0.1  # BatchNorm layers with a smaller running-average momentum are re-estimated after each epoch
EPOCH_BN_STATS_BATCHES = 50  # training batches (of the stage's batch size) that re-estimate them, at most


def batchnorms(model: nn.Module) -> List[_BatchNorm]:
    """The BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def slow_batchnorms(model: nn.Module) -> List[_BatchNorm]:
    return [m for m in batchnorms(model) if m.momentum is not None and m.momentum < SLOW_MOMENTUM]


def training_batches(data, batch_size: int, n: int, seed: int) -> Iterator:
    """`n` training batches (augmented as in training), over as many epochs' streams as needed."""
    def stream():
        for epoch in itertools.count():
            yield from data.train_batches(batch_size, epoch, seed)

    return itertools.islice(stream(), n)


@torch.no_grad()
def reestimate_batchnorms(model: nn.Module, batches: Iterable, device: torch.device, fast: Fast,
                          layers: Optional[List[_BatchNorm]] = None) -> int:
    """Reset the running statistics of `layers` (default: every BatchNorm layer of `model`) and re-estimate
    them as the plain average over `batches`; returns the number of batches used.

    Only those layers switch to train mode; the rest of the model (dropout, stochastic depth, the other
    BatchNorm layers) stays in eval mode. momentum=None makes each running statistic the cumulative average,
    so the result does not depend on the layer's momentum. Weights, the other layers' statistics, each layer's
    momentum and the model's train/eval mode are as they were.
    """
    layers = batchnorms(model) if layers is None else layers
    if not layers:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    used = 0
    try:
        for x, _ in batches:
            if fast.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with fast.autocast(device):
                model(x)
            used += 1
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return used
