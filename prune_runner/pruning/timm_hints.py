"""What torch-pruning 1.6.1 must be told to prune timm models; `hints.py` adds these to its own.

Found by what the layers hold, not by class name, so every timm family built the same way is covered:
- attention: a module with a `qkv` Linear (rows ordered [q|k|v][head][head_dim]) and a `num_heads` count
  (timm's Attention in ViT, DeiT, BEiT, EVA, ...). Given as `num_heads`, torch-pruning removes the same
  offsets in every head of q, k and v: head_dim shrinks, the head count stays. The module caches its widths
  (head_dim, attn_dim, scale), so `sync` sets them from the pruned Linear.
- layer scale: `gamma` vectors (C,) of LayerScale / LayerScale2d and of ConvNeXt blocks, pruned along dim 0.
- tokens: a ViT's class / register tokens (1, n, D) and position embedding (1, L, D), pruned along dim 2.
- head: `model.get_classifier()`, whose out-dimension is the class count and must not be pruned.

Nothing here imports timm: a model only holds timm layers if timm built it.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Tuple

import torch.nn as nn

from ..errors import UserError
from ..models.support import ModelNotSupportedError

TOKEN_PARAMETERS = ("cls_token", "reg_token", "dist_token", "pos_embed")  # (1, n, D): the width is dim 2


def is_timm_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


def _attention_layers(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules()
            if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int)
            and hasattr(m, "head_dim")]


def num_heads(model: nn.Module) -> Dict[nn.Module, int]:
    """qkv Linear -> head count, for BasePruner's `num_heads`."""
    return {m.qkv: m.num_heads for m in _attention_layers(model)}


def unwrapped_parameters(model: nn.Module) -> List[Tuple[nn.Parameter, int]]:
    found: List[Tuple[nn.Parameter, int]] = []
    for m in model.modules():
        gamma = getattr(m, "gamma", None)
        if isinstance(gamma, nn.Parameter) and gamma.dim() == 1:
            found.append((gamma, 0))
        for name in TOKEN_PARAMETERS:
            p = getattr(m, name, None)
            if isinstance(p, nn.Parameter) and p.dim() == 3:
                found.append((p, 2))
    return found


def classifier_layers(model: nn.Module) -> List[nn.Module]:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    return [head] if isinstance(head, (nn.Linear, nn.Conv2d)) else []


def sync_after_pruning(model: nn.Module) -> None:
    """Widths an attention layer caches, from its pruned qkv Linear (3 * heads * head_dim rows)."""
    for m in _attention_layers(model):
        m.head_dim = m.qkv.out_features // (3 * m.num_heads)
        if hasattr(m, "attn_dim"):
            m.attn_dim = m.num_heads * m.head_dim
        if hasattr(m, "scale"):
            m.scale = m.head_dim ** -0.5  # what the fused attention uses for the new width


def model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return f"timm/{cfg.get('architecture', type(model).__name__)}"


def failed_layer(model: nn.Module, err: BaseException) -> str:
    """`path (Type)` of the innermost layer of `model` in the traceback: the module whose forward raised, or the
    layer torch-pruning was handling (its `layer` / `module` variable)."""
    names = {id(m): name for name, m in model.named_modules()}
    found = None
    tb = err.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        for key in ("layer", "module", "self"):
            m = local.get(key)
            if isinstance(m, nn.Module) and id(m) in names and m is not model:
                found = m
                break
        tb = tb.tb_next
    if found is None:
        return f"{type(model).__name__}"
    return f"{names[id(found)]} ({type(found).__name__})"


def explain_failures(fn):
    """Decorator for a function whose first argument is the model being pruned (building the pruner, pruning):
    on a timm model, an exception becomes one line naming the model and the layer type that failed. timm's
    families are open-ended, so what torch-pruning cannot take apart is found when it tries; the other families
    are checked before a run (support.py)."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        if not is_timm_model(model):
            return fn(model, *args, **kwargs)
        try:
            return fn(model, *args, **kwargs)
        except UserError:
            raise
        except Exception as err:
            spec = next((a for a in (*args, *kwargs.values()) if hasattr(a, "importance") and hasattr(a, "name")),
                        None)
            what = kwargs.get("describe") or (f"model {model_name(model)}" +
                                              (f" with method {spec.name}" if spec is not None else ""))
            text = " ".join(str(err).split())[:200]
            raise ModelNotSupportedError(
                f"{what} cannot be pruned: torch-pruning 1.6.1 fails at layer {failed_layer(model, err)} "
                f"({type(err).__name__}: {text}); try another method, or another timm model") from err

    return wrapper
