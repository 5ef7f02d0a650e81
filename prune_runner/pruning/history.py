"""Rebuilding a pruned model: its pruning history replayed on a freshly built model of the same name."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch_pruning as tp

from .hints import pruning_hints, sync_after_pruning


def replay_pruning_history(model: nn.Module, history: list, num_classes: int, input_size: int) -> None:
    """Prune `model` (unpruned, in place) as `history` (the pruner's pruning_history()) records."""
    # the same unwrapped parameters as at pruning time (ViT's class token and position embedding)
    unwrapped = pruning_hints(model, num_classes)["unwrapped_parameters"]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 3, input_size, input_size),
                                                  unwrapped_parameters=unwrapped)
    graph.load_pruning_history(history)
    sync_after_pruning(model)


def pruned_copy(model: nn.Module, history: list, num_classes: int, input_size: int) -> nn.Module:
    """A copy of `model` (unpruned) pruned as `history` records; `model` itself is left as it is."""
    twin = copy.deepcopy(model)
    replay_pruning_history(twin, history, num_classes, input_size)
    return twin
