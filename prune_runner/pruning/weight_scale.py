"""The weight scale of a sparse-trained, pruned model, restored before fine-tuning (prune.restore_weight_scale).

Sparse training shrinks the filters that survive pruning, and leaves channels that the MACs target kept at
near-zero weights; both wreck the first fine-tuning steps (restore_weight_scale says why). Rescaling the
filters that feed a BatchNorm changes no eval output.
"""

from __future__ import annotations

import torch
import torch.nn as nn

_BN = nn.modules.batchnorm._BatchNorm

DEAD_VAR = 1e-6  # dead channel: variance below this many eps; its normalized output is under sqrt(1e-6) = 1e-3
# a dead channel's scale is 0: dividing by at least this keeps its (unused, masked) BN weight factor finite
SCALE_FLOOR = 1e-30


@torch.no_grad()
def conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list:
    """(conv or linear, BatchNorm) pairs where the BN's input is exactly the layer's output, from one
    recorded forward pass (no tracing: any model that runs works)."""
    produced: dict = {}
    pairs = []

    def remember(module, _inputs, output):
        produced[id(output)] = (module, output)  # holding the tensor keeps its id from being reused

    def match(module, inputs):
        layer, output = produced.get(id(inputs[0]), (None, None))
        if layer is not None and output is inputs[0]:
            pairs.append((layer, module))

    hooks = [m.register_forward_hook(remember) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks += [m.register_forward_pre_hook(match) for m in model.modules() if isinstance(m, _BN)]
    was_training = model.training
    try:
        model.eval()
        model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return pairs


@torch.no_grad()
def restore_weight_scale(model: nn.Module, example: torch.Tensor) -> dict:
    """Prepare a sparse-trained, pruned model for fine-tuning; every layer that feeds a BatchNorm:
    live filters get unit L2 norm, dead ones are set exactly to zero. Returns {"rescaled": n, "zeroed": n}.

    Why: a conv followed by BN computes the same function for any positive scale of each filter, but SGD's
    effective step on such a filter is lr / |w|^2. Strong sparse training shrinks the surviving filters too
    (by an order of magnitude on resnet20/digits at group_norm reg 2e-2), so a fine-tuning lr tuned for
    normal weights acts hundreds of times larger. And the channels sparse training drove to zero but the
    MACs target kept (most of the kept ones at 3x there) get normal-sized gradients on their tiny weights
    (BN divides by sqrt(eps)) and come back as noise. Both wrecked the pruned model in its first fine-tuning
    steps. Rescaling live filters changes no eval output: the BN running stats scale with the filter, and
    the BN weight takes the factor that BN's (unscaled) eps would otherwise change; train-mode outputs match
    as far as the batch statistics match the running ones. A dead channel's output is its BN bias to within
    1e-3 of its BN weight, and with the filter and BN weight at zero it is exactly that, a fixed point of
    SGD (both get zero gradient).
    """
    rescaled = zeroed = 0
    for layer, bn in conv_bn_pairs(model, example):
        w = layer.weight
        if w.shape[0] != bn.num_features or bn.running_var is None:
            continue
        norms = w.detach().flatten(1).norm(dim=1)
        var = bn.running_var
        dead = var < DEAD_VAR * bn.eps
        live = ~dead & (norms > 0)
        scale = torch.where(live, 1.0 / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.ones_like(norms))
        scale = torch.where(dead, torch.zeros_like(scale), scale)
        # BN's eps does not scale with the filter: this factor on the BN weight keeps eval outputs exact
        keep = torch.sqrt(scale * scale * var + bn.eps) / (scale.clamp_min(SCALE_FLOOR) * torch.sqrt(var + bn.eps))
        w.mul_(scale.view(-1, *([1] * (w.dim() - 1))))
        if layer.bias is not None:
            layer.bias.mul_(scale)
        bn.running_mean.mul_(scale)
        var.mul_(scale * scale).add_(dead.to(var.dtype))  # a dead channel: mean 0, variance 1
        if bn.weight is not None:
            bn.weight.mul_(torch.where(live, keep, torch.ones_like(keep))).masked_fill_(dead, 0.0)
        rescaled += int(live.sum())
        zeroed += int(dead.sum())
    return {"rescaled": rescaled, "zeroed": zeroed}
