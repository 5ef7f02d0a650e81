"""The group-norm regularizer's per-group scaling ignores method.normalizer, by design.

gamma = 2^(alpha * (max - n) / (max - min)) places each channel's group L2 norm n between its group's
extremes. Scaling the scores by a positive constant (normalizer mean, max, sum) cancels out, so there we
equal the library. The library applies its square root after normalizing: with 'standarization' the
scores are first shifted to a minimum of 0, which bends the ramp; with 'gaussian' they turn negative, the
square root gives NaN, and the library skips every group. The normalizer is a ranking choice for pruning;
the regularizer always scales by the raw norms (what the library does with no normalizer).
"""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from test_regularizers import grads_of, library_pruner, pair, randomized, set_grads

from prune_runner.pruning.regularizers import build_regularizer


def _ours_with(normalizer):
    model = randomized("resnet")
    pruner = library_pruner(tp.pruner.GroupNormPruner, model, normalizer=normalizer, reg=0.1)
    original = set_grads(model)
    build_regularizer("group_norm", model, pruner).apply(0.1)
    return grads_of(model), original


@pytest.mark.parametrize("normalizer", ["mean", "standarization", "gaussian"])
def test_our_scaling_does_not_depend_on_the_normalizer(normalizer):
    plain, original = _ours_with(None)
    other, _ = _ours_with(normalizer)
    assert any(not torch.equal(plain[k], original[k]) for k in plain)
    for k in plain:
        torch.testing.assert_close(other[k], plain[k], rtol=0, atol=0)


def test_library_regularizes_nothing_with_gaussian():
    theirs, lib, _, _ = pair("resnet", tp.pruner.GroupNormPruner, reg=0.1, normalizer="gaussian")
    original = set_grads(theirs)
    lib.regularize(theirs)
    assert all(torch.equal(grads_of(theirs)[k], original[k]) for k in original)


def test_library_bends_the_ramp_with_standarization():
    theirs, lib, _, _ = pair("resnet", tp.pruner.GroupNormPruner, reg=0.1, normalizer="standarization")
    original = set_grads(theirs)
    lib.regularize(theirs)
    ours, _ = _ours_with(None)
    added = {k: grads_of(theirs)[k] - original[k] for k in original}
    ref = {k: ours[k] - original[k] for k in original}
    worst = max(float(((added[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-12))) for k in ref
                if ref[k].abs().max() > 0)
    assert worst > 0.05  # not rounding: a different scaling
