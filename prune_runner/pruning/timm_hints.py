"""What torch-pruning 1.6.1 must be told to prune timm models; `hints.py` adds these to its own.

Found by what the layers hold, not by class name, so every timm family built the same way is covered:
- attention: a module with a `qkv` Linear (rows ordered [q|k|v][head][head_dim]) and a `num_heads` count
  (timm's Attention in ViT, DeiT, BEiT, EVA, ...). Given as `num_heads`, torch-pruning removes the same
  offsets in every head of q, k and v: head_dim shrinks, the head count stays. The module caches its widths
  (head_dim, attn_dim, scale), so `sync` sets them from the pruned Linear.
- other attention: where torch-pruning cannot split an attention's q/k/v rows per head, they stay (LeViT's
  [head][q|k|v] rows, MobileViT-v2's 1-channel query); where the attention computes its head width from its
  input's (`C // num_heads`: CaiT, CrossViT, ConViT, CoaT, ...), the whole attention stays, and with it the
  width around it. See _other_attention_layers.
- token downsampling by a reshape (LeViT's AttentionDownsample): the width entering it stays.
- layer scale: a vector (C,) outside a prunable layer, pruned along dim 0: `gamma` of LayerScale / LayerScale2d
  / ConvNeXt and `scale` of MetaFormer's `Scale` (poolformer) are named here; under other names (`gamma_1` of
  BEiT, ...) hints.py's rule for every other such parameter gives it the same dim. `Scale` caches the shape it
  views its vector to, which `sync` sets from the pruned vector.
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


# a layer whose out-channels are an attention's q, k and v (LeViT's Attention / AttentionDownsample: `qkv`, `q`, `kv`;
# MobileViT-v2's LinearSelfAttention: `qkv_proj`)
QKV_LAYERS = ("qkv", "q", "kv", "qkv_proj")


def _layers_in(module: nn.Module) -> List[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _has_heads(m: nn.Module) -> bool:
    return isinstance(getattr(m, "num_heads", None), int)


def _other_attention_layers(model: nn.Module) -> List[nn.Module]:
    """Layers of attention other than timm's plain Attention whose out-channels must stay.
    - Attention that keeps its head widths as attributes (`key_dim`: levit.Attention and AttentionDownsample, whose
      qkv rows are [head][q|k|v] with v wider than q and k) or its width (`embed_dim` and a `qkv_proj`:
      mobilevit.LinearSelfAttention, whose rows are a 1-channel query, keys and values): torch-pruning cannot
      split those rows per head, so the q/k/v layers stay; the width around the attention is pruned.
    - Any other module with a head count (`num_heads`) computes its head width from its input's (`C // num_heads`:
      cait.TalkingHeadAttn and ClassAttn, crossvit.CrossAttention, convit.GPSA, coat's factorized attention, ...):
      all its layers stay, which keeps the width around it too; the MLPs (and convolutions) are pruned."""
    standard = set(_attention_layers(model))
    found: List[nn.Module] = []
    for m in model.modules():
        if m in standard:
            continue
        if isinstance(getattr(m, "key_dim", None), int) or (
                isinstance(getattr(m, "embed_dim", None), int) and isinstance(getattr(m, "qkv_proj", None), nn.Module)):
            for name in QKV_LAYERS:
                sub = getattr(m, name, None)
                if isinstance(sub, nn.Module):
                    found += _layers_in(sub)
        elif _has_heads(m) and not any(_has_heads(sub) for sub in list(m.modules())[1:]):
            found += _layers_in(m)  # the innermost module with a head count: a block holding one has its MLP too
    return list(dict.fromkeys(found))  # nested attention modules name a layer twice


def _widths_into_token_subsampling(model: nn.Module) -> List[nn.Module]:
    """timm's levit.AttentionDownsample computes its queries as Sequential(Downsample, LinearNorm), where Downsample
    views the tokens as their grid, strides it and reshapes back: torch-pruning loses the channels through that
    reshape and would narrow the tokens but not the query layer. So the width entering such a downsampling stays:
    the out-channels of the last Linear / Conv before it with that width are kept, which keeps the group of every
    layer of that width whole."""
    found: List[nn.Module] = []
    last = {}  # out-channels -> the last Linear / Conv registered so far with that many
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last[m.out_features] = m
        elif isinstance(m, nn.Conv2d):
            last[m.out_channels] = m
        q = getattr(m, "q", None)
        if not (isinstance(q, nn.Sequential) and len(q) > 1 and not isinstance(q[0], nn.Identity)
                and next(q[0].parameters(), None) is None):  # a layer without weights that comes first: resampling
            continue
        first = next((layer for layer in q.modules() if isinstance(layer, (nn.Linear, nn.Conv2d))), None)
        width = getattr(first, "in_features", getattr(first, "in_channels", None))
        if width in last and last[width] not in found:
            found.append(last[width])
    return found


def ignored_layers(model: nn.Module) -> List[nn.Module]:
    """Layers whose out-channels stay: the classifier, the q/k/v layers of attention torch-pruning cannot split
    (_other_attention_layers) and the width entering a token downsampling (_widths_into_token_subsampling)."""
    return classifier_layers(model) + _other_attention_layers(model) + _widths_into_token_subsampling(model)


def unwrapped_parameters(model: nn.Module) -> List[Tuple[nn.Parameter, int]]:
    found: List[Tuple[nn.Parameter, int]] = []
    for m in model.modules():
        for gamma in (getattr(m, "gamma", None), getattr(m, "scale", None)):  # LayerScale*, metaformer.Scale
            # a vector (C,); hgnet's LearnableAffineBlock holds a scalar `scale` of shape (1,), which stays whole
            if isinstance(gamma, nn.Parameter) and gamma.dim() == 1 and gamma.numel() > 1:
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
    """Widths a layer caches: an attention's, from its pruned qkv Linear (3 * heads * head_dim rows); a scale's."""
    for m in _attention_layers(model):
        m.head_dim = m.qkv.out_features // (3 * m.num_heads)
        if hasattr(m, "attn_dim"):
            m.attn_dim = m.num_heads * m.head_dim
        if hasattr(m, "scale"):
            m.scale = m.head_dim ** -0.5  # what the fused attention uses for the new width
    for m in model.modules():  # metaformer.Scale views its (C,) vector as `shape`, (C, 1, 1) or (C,)
        scale, shape = getattr(m, "scale", None), getattr(m, "shape", None)
        if isinstance(scale, nn.Parameter) and scale.dim() == 1 and isinstance(shape, tuple) and shape:
            m.shape = (scale.numel(), *shape[1:])


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
