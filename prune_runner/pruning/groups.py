"""The dependency groups of a built pruner, and their per-channel norms.

A group is what pruning removes together: one channel of a root layer and every slice of every layer
that depends on it. The pruner's own settings (ignored layers, root module types) decide which groups
exist, so every reader of groups asks here.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch_pruning as tp


def dependency_groups(pruner: tp.pruner.BasePruner) -> Iterator:
    """The pruner's dependency groups, as its own pruning step sees them."""
    return pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types)


def channel_group_norms(pruner: tp.pruner.BasePruner) -> torch.Tensor:
    """Per-channel group L2 norms of the pruner's model, every group's channels one after another (CPU, fp32):
    the square root of GroupMagnitudeImportance(p=2) without a normalizer."""
    scorer = tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)
    values = []
    for group in dependency_groups(pruner):
        imp = scorer(group)
        if imp is not None:
            values.append(imp.sqrt().detach().float().cpu())
    return torch.cat(values) if values else torch.zeros(0)
