"""What torch-pruning's BasePruner must be told to prune a model of this zoo correctly.

`pruning_hints(model, num_classes)` returns keyword arguments for `tp.pruner.MetaPruner` (and the
other BasePruner subclasses). Every call builds NEW dicts/lists: BasePruner mutates some of its
dict arguments in place (e.g. `out_channel_groups.update(num_heads)` on its shared default), so
sharing them between pruners would leak state from one pruner into the next.

After pruning, call `sync_after_pruning(model)`: some torchvision models cache a width that the
forward pass reads (VisionTransformer.hidden_dim).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch.nn as nn
from torchvision.models.convnext import CNBlock
from torchvision.models.vision_transformer import VisionTransformer


def _classifier_layers(model: nn.Module, num_classes: int) -> List[nn.Module]:
    """Output layers, whose out-dimension is the class count and must not be pruned."""
    heads: List[nn.Module] = [
        m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes
    ]
    if not heads:  # conv classifier (squeezenet): the last conv producing num_classes maps
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == num_classes]
        heads = convs[-1:]
    return heads


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


def pruning_hints(model: nn.Module, num_classes: int) -> Dict[str, Any]:
    """Keyword arguments for a torch-pruning BasePruner: ignored_layers, num_heads (empty, see
    below), out_channel_groups (attention head counts), in_channel_groups (empty),
    unwrapped_parameters (None when there are none) and round_to (None)."""
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    unwrapped = _unwrapped_parameters(model)
    return {
        "ignored_layers": _classifier_layers(model, num_classes),
        # torch-pruning 1.6 skips the whole hidden-width group of a torchvision ViT when its
        # nn.MultiheadAttention layers are given as `num_heads` (it looks for the attention layer
        # as the SOURCE of a dependency and finds it only as a target), so only the MLPs shrink.
        # As `out_channel_groups` the same head count makes it remove the same offsets in every
        # head: embed_dim stays divisible by num_heads and the q/k/v rows stay aligned per head.
        "num_heads": {},
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
