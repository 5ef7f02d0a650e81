"""Restoring the weight scale after pruning: function-preserving, unit-norm live filters, dead channels
set exactly to zero."""

from __future__ import annotations

import torch
import torch.nn as nn

from prune_runner.pruning.weight_scale import conv_bn_pairs, restore_weight_scale
from prune_runner.train.batchnorm import reestimate_batchnorms
from prune_runner.train.loop import Fast


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4),  # ReLU between: no pair
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5))
    with torch.no_grad():
        net[0].weight.mul_(0.03)  # what strong sparse training leaves: small surviving filters
        net[0].weight[5].mul_(1e-9)  # and a near-zero one
    batches = [(torch.randn(16, 3, 8, 8), None) for _ in range(8)]
    reestimate_batchnorms(net, batches, torch.device("cpu"), Fast(False, False))  # stats that match the weights
    return net.eval()


def test_pairs_are_layers_feeding_batchnorm_directly():
    net = _net()
    pairs = conv_bn_pairs(net, torch.randn(1, 3, 8, 8))
    assert [(a, b) for a, b in pairs] == [(net[0], net[1]), (net[8], net[9])]


def test_rescaling_keeps_outputs_and_gives_live_filters_unit_norm():
    net = _net()
    x = torch.randn(8, 3, 8, 8)
    before_eval = net(x)
    dead_before = net[0].weight[5].clone()
    counts = restore_weight_scale(net, x[:1])
    assert counts == {"rescaled": 5 + 5, "zeroed": 1}  # five live conv filters, five linear rows; one dead
    torch.testing.assert_close(net(x), before_eval, rtol=1e-4, atol=1e-4)  # the dead channel: < 1e-3 of its BN weight
    norms = net[0].weight.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms[:5], torch.ones(5))
    assert dead_before.abs().max() > 0 and not net[0].weight[5].any() and net[1].weight[5] == 0
    assert not net.training


def test_dead_channels_are_a_fixed_point_of_training():
    net = _net()
    restore_weight_scale(net, torch.randn(1, 3, 8, 8))
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(16, 3, 8, 8)).square().mean().backward()
        opt.step()
    assert not net[0].weight[5].any() and net[1].weight[5] == 0
    assert net[0].weight[:5].abs().sum() > 0
