"""What torch-pruning's BasePruner must be told to prune a model of this zoo correctly.

`pruning_hints(model, num_classes)` returns keyword arguments for `tp.pruner.MetaPruner` (and the
other BasePruner subclasses). Every call builds NEW dicts/lists: BasePruner mutates some of its
dict arguments in place (e.g. `out_channel_groups.update(num_heads)` on its shared default), so
sharing them between pruners would leak state from one pruner into the next.

After pruning, call `sync_after_pruning(model)`: some torchvision models cache a width that the
forward pass reads (VisionTransformer.hidden_dim). The hints for timm models are in timm_hints.py.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch.nn as nn
from torchvision.models.convnext import CNBlock
from torchvision.models.vision_transformer import VisionTransformer

from . import timm_hints
from .library import tp


def _classifier_layers(model: nn.Module, num_classes: int) -> List[nn.Module]:
    """Output layers, whose out-dimension is the class count and must not be pruned."""
    heads: List[nn.Module] = [
        m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes
    ]
    if not heads:  # conv classifier (squeezenet): the last conv producing num_classes maps
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == num_classes]
        heads = convs[-1:]
    return heads


def _dedup(pairs: List[Tuple[nn.Parameter, int]]) -> List[Tuple[nn.Parameter, int]]:
    """The first (parameter, dim) of each parameter: one named twice would be pruned twice."""
    seen, out = set(), []
    for p, dim in pairs:
        if id(p) not in seen:
            seen.add(id(p))
            out.append((p, dim))
    return out


def _unwrapped_parameters(model: nn.Module) -> List[Tuple[nn.Parameter, int]]:
    """Parameters outside any prunable layer, with the dim that follows the pruned channels:
    torchvision ViT's class token (1, 1, D) and position embedding (1, L, D): dim 2, the hidden
    width; ConvNeXt's per-block layer scale (C, 1, 1): dim 0. Named here, the library need not
    guess (and warn about each)."""
    found: List[Tuple[nn.Parameter, int]] = []
    for m in model.modules():
        if isinstance(m, VisionTransformer):
            found += [(m.class_token, 2), (m.encoder.pos_embedding, 2)]
        elif isinstance(m, CNBlock):
            found.append((m.layer_scale, 0))
    return found


def _other_unwrapped_parameters(model: nn.Module, named: List[Tuple[nn.Parameter, int]]
                                ) -> List[Tuple[nn.Parameter, int]]:
    """Every parameter outside a layer torch-pruning prunes that `named` does not hold (a timm layer this file and
    timm_hints.py do not know: relative position bias tables, attention biases, ...), with the dim torch-pruning
    1.6.1 itself would take: the last one longer than 1. Named here, it does not print its three-line "Unwrapped
    parameters detected ... please provide an unwrapped_parameters argument" warning, which a prune-run user cannot
    act on. Such a parameter is pruned only where the dependency graph ties it to pruned channels; a wrong dim
    leaves a model that cannot run, which the pre-flight check's trial step refuses before training."""
    wrapped = set()
    for m in model.modules():
        kind = tp.ops.module2type(m)
        if kind in tp.pruner.function.PrunerBox and kind != tp.ops.OPTYPE.ELEMENTWISE:  # the library's own test
            wrapped.update(id(p) for p in m.parameters())
    seen = {id(p) for p, _ in named}
    found: List[Tuple[nn.Parameter, int]] = []
    for p in model.parameters():
        long_dims = [d for d, size in enumerate(p.shape) if size > 1]
        if id(p) not in wrapped and id(p) not in seen and long_dims:
            found.append((p, long_dims[-1]))
            seen.add(id(p))
    return found


def pruning_hints(model: nn.Module, num_classes: int) -> Dict[str, Any]:
    """Keyword arguments for a torch-pruning BasePruner: ignored_layers, num_heads (empty, see
    below), out_channel_groups (attention head counts), in_channel_groups (empty),
    unwrapped_parameters (None when there are none) and round_to (None)."""
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    unwrapped = _unwrapped_parameters(model)
    ignored = _classifier_layers(model, num_classes)
    if timm_hints.is_timm_model(model):
        unwrapped += timm_hints.unwrapped_parameters(model)
        ignored += [m for m in timm_hints.ignored_layers(model) if m not in ignored]
    unwrapped = _dedup(unwrapped)
    unwrapped += _other_unwrapped_parameters(model, unwrapped)
    return {
        "ignored_layers": ignored,
        # torch-pruning 1.6 skips the whole hidden-width group of a torchvision ViT when its
        # nn.MultiheadAttention layers are given as `num_heads` (it looks for the attention layer
        # as the SOURCE of a dependency and finds it only as a target), so only the MLPs shrink.
        # As `out_channel_groups` the same head count makes it remove the same offsets in every
        # head: embed_dim stays divisible by num_heads and the q/k/v rows stay aligned per head.
        # timm's attention computes q, k, v with one Linear: its head count as `num_heads` (timm_hints.py)
        "num_heads": timm_hints.num_heads(model) if timm_hints.is_timm_model(model) else {},
        "out_channel_groups": heads,
        # BasePruner records detected group convs here; a fresh dict replaces its shared default
        "in_channel_groups": {},
        "unwrapped_parameters": unwrapped or None,
        "round_to": None,
    }


def sync_after_pruning(model: nn.Module) -> None:
    """Update widths that a model caches and its forward reads."""
    for m in model.modules():
        if isinstance(m, VisionTransformer):
            m.hidden_dim = m.conv_proj.out_channels  # used to reshape patch embeddings
    if timm_hints.is_timm_model(model):
        timm_hints.sync_after_pruning(model)
