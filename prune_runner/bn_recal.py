"""BatchNorm recalibration after pruning (adaptive BN, EagleEye, Li et al. 2020).

Pruning removes channels, so the layers after a pruned one see inputs whose statistics differ from
what their BatchNorm running mean and variance were estimated on. Those stale statistics, not lost
capacity, cause most of the accuracy collapse right after pruning. Re-estimating them on a few training
batches, with no weight update, costs a few forward passes and changes nothing but the BN buffers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn

from .train import Precision

_BN = nn.modules.batchnorm._BatchNorm


def batches_for(data, batch_size: int, n: int, seed: int) -> Iterator:
    """`n` training batches (augmented as in training), over as many epochs' streams as needed."""
    def stream():
        for epoch in itertools.count():
            yield from data.train_batches(batch_size, epoch, seed)

    return itertools.islice(stream(), n)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, device: torch.device, precision: Precision) -> int:
    """Reset every BatchNorm's running stats and re-estimate them as the plain average over `batches`.

    Only the BN layers switch to train mode (dropout and the rest stay in eval mode, so the statistics
    are those of the eval-time forward); momentum=None makes the running stats the cumulative average,
    so the result does not depend on the layer's momentum (torchvision's mobilenet_v3 uses 0.01, which
    would need hundreds of batches to forget the old stats). Returns the number of batches used.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not bns:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    used = 0
    try:
        for x, _ in batches:
            if precision.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with precision.autocast(device):
                model(x)
            used += 1
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
    return used
