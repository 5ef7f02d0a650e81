"""What torch-pruning 1.6.1 must be told to prune timm models; `hints.py` adds these to its own.

Found by what the layers hold, not by class name, so every timm family built the same way is covered:
- attention: a module with a `qkv` Linear (rows ordered [q|k|v][head][head_dim]) and a `num_heads` count
  (timm's Attention in ViT, DeiT, BEiT, EVA, ...). Given as `num_heads`, torch-pruning removes the same
  offsets in every head of q, k and v: head_dim shrinks, the head count stays. The module caches its widths
  (head_dim, attn_dim, scale), so `sync` sets them from the pruned Linear.
- other attention: where torch-pruning cannot split an attention's q/k/v rows per head, they stay (LeViT's
  [head][q|k|v] rows, MobileViT-v2's 1-channel query), as they do where something else holds the head width
  (SAM's relative position tables, rotary embeddings) or the attention splits its rows by a width of its own
  (hiera, SAM2's hiera); where the attention computes its head width from its input's (`C // num_heads`: CaiT,
  CrossViT, ConViT, CoaT, ...), the whole attention stays, and with it the width around it. See
  _other_attention_layers.
- token downsampling by a reshape (LeViT's AttentionDownsample): the width entering it stays.
- outputs a block splits into parts of fixed sizes (InceptionNeXt, MambaOut, FasterNet, gMLP, Res2Net, ResNeSt,
  DPN, EfficientViT's LiteMLA), grouped convolutions torch-pruning mis-indexes (channel multipliers, 2 channels
  a group: PiT, FastViT, DLA), GroupNorm without bias (PoolFormer v2) and recurrent layers (Sequencer): they
  stay. See ignored_layers.
- BlurPool2d's filter (TResNet), repeated per channel: `sync` keeps one row, expanded to any width.
- layer scale: a vector (C,) outside a prunable layer, pruned along dim 0: `gamma` of LayerScale / LayerScale2d
  / ConvNeXt and `scale` of MetaFormer's `Scale` (poolformer) are named here; under other names (`gamma_1` of
  BEiT, ...) hints.py's rule for every other such parameter gives it the same dim. `Scale` caches the shape it
  views its vector to, which `sync` sets from the pruned vector.
- RMS norms (timm.layers.RmsNorm and its variants) are not nn.LayerNorm: torch-pruning prunes their weight as a
  vector, and `sync` sets the `normalized_shape` they cache from it.
- tokens: a ViT's class / register tokens (1, n, D) and position embedding (1, L, D), pruned along dim 2.
- head: `model.get_classifier()`, whose out-dimension is the class count and must not be pruned.

Nothing here imports timm: a model only holds timm layers if timm built it.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn as nn

TOKEN_PARAMETERS = ("cls_token", "reg_token", "dist_token", "pos_embed")  # (1, n, D): the width is dim 2


def is_timm_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


def _qkv_attention(m: nn.Module) -> bool:
    return isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int) \
        and hasattr(m, "head_dim")


def _head_width_held_elsewhere(m: nn.Module) -> bool:
    """A qkv attention whose head width (or q/k/v width) something besides its qkv Linear holds, which torch-pruning
    would not narrow with it: parameters of its own (vision_transformer_sam.Attention's relative position tables
    rel_pos_h / rel_pos_w, (positions, head_dim); eva.EvaAttention's separate q_bias / v_bias), a relative position
    module (gcvit's `rel_pos`) or rotary embeddings (`rotate_half`: eva.EvaAttention, timm.layers.AttentionRope of
    qwen3_vit)."""
    return next(m.parameters(recurse=False), None) is not None or hasattr(m, "rel_pos") or hasattr(m, "rotate_half")


def _attention_layers(model: nn.Module) -> List[nn.Module]:
    """timm attention whose head width torch-pruning narrows (given as num_heads)."""
    return [m for m in model.modules() if _qkv_attention(m) and not _head_width_held_elsewhere(m)
            and type(m).__name__ not in OUTPUT_BY_INPUT_WIDTH]


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


# attention classes that look like timm's plain Attention (qkv, num_heads, head_dim) but reshape their output by
# their input's width (`reshape(B, N, C)`), which nothing they hold shows: the whole attention stays
OUTPUT_BY_INPUT_WIDTH = ("RelPosAttention", "WindowAttentionGlobal")  # vision_transformer_relpos, gcvit


def _other_attention_layers(model: nn.Module) -> List[nn.Module]:
    """Layers of attention other than timm's plain Attention whose out-channels must stay.
    - Attention that keeps its head widths as attributes (`key_dim`: levit.Attention and AttentionDownsample, whose
      qkv rows are [head][q|k|v] with v wider than q and k) or its width (`embed_dim` and a `qkv_proj`:
      mobilevit.LinearSelfAttention, whose rows are a 1-channel query, keys and values): torch-pruning cannot
      split those rows per head, so the q/k/v layers stay; the width around the attention is pruned.
    - qkv attention whose head width something else holds too (_head_width_held_elsewhere), that counts its heads
      as `heads` and caches `head_dim` (hiera.MaskUnitAttention), or that keeps its own q/k/v width as `dim_out`
      and splits its qkv rows by it, not by its input's width (hieradet_sam2.MultiScaleAttention): its qkv Linear
      stays, and so does its head width; the width around the attention is pruned.
    - Any other module with a head count (`num_heads`) computes its head width from its input's (`C // num_heads`:
      cait.TalkingHeadAttn and ClassAttn, crossvit.CrossAttention, convit.GPSA, coat's factorized attention, ...):
      all its layers stay, which keeps the width around it too; the MLPs (and convolutions) are pruned."""
    standard = set(_attention_layers(model))
    found: List[nn.Module] = []
    for m in model.modules():
        if m in standard:
            continue
        if type(m).__name__ in OUTPUT_BY_INPUT_WIDTH:
            found += _layers_in(m)
        elif _qkv_attention(m) or (isinstance(getattr(m, "qkv", None), nn.Linear) and (
                isinstance(getattr(m, "heads", None), int)  # hiera.MaskUnitAttention
                or _has_heads(m) and isinstance(getattr(m, "dim_out", None), int))):  # hieradet_sam2's attention
            found.append(m.qkv)
        elif isinstance(getattr(m, "key_dim", None), int) or (
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


def _split_channel_layers(model: nn.Module) -> List[nn.Module]:
    """Layers whose output a timm block splits into parts of sizes it keeps as attributes (or halves): torch-pruning
    1.6.1 maps pruned channels through such a split wrongly (IndexError, or a part that no longer matches its size),
    so those layers' out-channels stay, and with them the width that runs through the split; the layers around
    it (the MLP's hidden width, or the stream outside the split) are pruned.
    - inception_next.InceptionDWConv2d: the block's input split by `split_indexes` into an identity part and three
      depthwise convs (dwconv_hw, dwconv_w, dwconv_h), concatenated again: the three convs stay.
    - mambaout.GatedConvBlock: fc1's output split by `split_indices` into gate, identity and conv parts: fc1 stays.
    - fasternet.Partial_conv3: the block's input split into `dim_conv3` channels for partial_conv3 and the rest:
      partial_conv3 stays.
    - timm.layers.GatedMlp whose `gate` is mlp_mixer.SpatialGatingUnit (gMLP): fc1's output halved (chunk), one half
      normed and mixed across tokens by the unit's `proj` (a Linear over tokens, whose out-features are the token
      count): fc1 and proj stay.
    - res2net.Bottle2neck: conv1's output split into `scale` parts of `width` channels: conv1 stays.
    - timm.layers.SplitAttn (resnest): its conv's output viewed as `radix` parts, and fc2's output softmaxed across
      them (rSoftMax's reshape): conv and fc2 stay.
    - dpn.DualPathBlock: the outputs of c1x1_c (c1x1_c1, c1x1_c2 in the `b` variants) and of the projections c1x1_w_s1
      / c1x1_w_s2 split into the residual part (`num_1x1_c`) and the dense part (`inc`): they stay.
    - efficientvit_mit.LiteMLA: the qkv conv's output viewed as heads of q, k and v and aggregated by grouped convs
      (`aggreg`): qkv and aggreg stay."""
    found: List[nn.Module] = []
    for m in model.modules():
        if isinstance(getattr(m, "split_indexes", None), tuple):  # InceptionDWConv2d
            found += [getattr(m, n) for n in ("dwconv_hw", "dwconv_w", "dwconv_h") if hasattr(m, n)]
        elif isinstance(getattr(m, "split_indices", None), tuple) and isinstance(getattr(m, "fc1", None), nn.Module):
            found.append(m.fc1)  # GatedConvBlock
        elif isinstance(getattr(m, "dim_conv3", None), int) and isinstance(getattr(m, "partial_conv3", None),
                                                                           nn.Module):
            found.append(m.partial_conv3)  # Partial_conv3
        elif isinstance(getattr(m, "fc1", None), nn.Linear) and isinstance(getattr(getattr(m, "gate", None), "proj",
                                                                                    None), nn.Linear):
            found += [m.fc1, m.gate.proj]  # GatedMlp with a SpatialGatingUnit
        elif isinstance(getattr(m, "scale", None), int) and isinstance(getattr(m, "width", None), int) and isinstance(
                getattr(m, "convs", None), nn.ModuleList) and isinstance(getattr(m, "conv1", None), nn.Conv2d):
            found.append(m.conv1)  # Bottle2neck
        elif isinstance(getattr(m, "radix", None), int) and isinstance(getattr(m, "conv", None), nn.Module) and \
                isinstance(getattr(m, "fc2", None), nn.Module):
            found += _layers_in(m.conv) + _layers_in(m.fc2)  # SplitAttn
        elif isinstance(getattr(m, "num_1x1_c", None), int) and isinstance(getattr(m, "inc", None), int):
            for name in ("c1x1_c", "c1x1_c1", "c1x1_c2", "c1x1_w_s1", "c1x1_w_s2"):  # DualPathBlock
                sub = getattr(m, name, None)
                found += _layers_in(sub) if isinstance(sub, nn.Module) else []
        elif isinstance(getattr(m, "aggreg", None), nn.ModuleList) and isinstance(getattr(m, "qkv", None), nn.Module):
            found += _layers_in(m.qkv) + _layers_in(m.aggreg)  # LiteMLA
    return found


def _recurrent_layers(model: nn.Module) -> List[nn.Module]:
    """LSTM / GRU layers (sequencer's RNN2d: a bidirectional LSTM along each axis, their outputs concatenated into
    `fc`): torch-pruning 1.6.1 maps the concatenated bidirectional outputs wrongly (IndexError at fc), so their
    hidden width stays; the width entering them and the MLPs are pruned."""
    return [m for m in model.modules() if isinstance(m, nn.RNNBase)]


# channels a group of a grouped convolution must keep for torch-pruning 1.6.1: it removes the same offsets in every
# group, and with fewer (dla46x_c: 64 channels in 32 groups) its importance indexing breaks (IndexError)
MIN_GROUP_WIDTH = 3


def _grouped_convs_torch_pruning_breaks(model: nn.Module) -> List[nn.Module]:
    """Grouped convolutions (not depthwise) that stay whole, with the layer that feeds them (the last Linear / Conv
    before it whose width is its in-channels), so that the width entering them stays too (torch-pruning prunes a
    grouped conv's in-channels through the group of the layer feeding it, and fails there as well):
    - a channel multiplier, out-channels k x in-channels with one group per input channel (pit's pooling conv
      (ConvHeadPooling), fastvit's final MobileOneBlock and its downsampling convs): torch-pruning 1.6.1 indexes
      the k outputs of an input channel as if there were one (IndexError in its importance);
    - fewer than MIN_GROUP_WIDTH channels a group (dla's `x` variants: 2)."""
    found: List[nn.Module] = []
    last = {}  # width -> the last Linear / Conv registered so far with that many out-channels
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels) and (
                m.out_channels != m.in_channels or m.in_channels // m.groups < MIN_GROUP_WIDTH):
            found += [m] + ([last[m.in_channels]] if m.in_channels in last else [])
        if isinstance(m, nn.Linear):
            last[m.out_features] = m
        elif isinstance(m, nn.Conv2d):
            last[m.out_channels] = m
    return found


def _norms_without_bias(model: nn.Module) -> List[nn.Module]:
    """GroupNorm layers with a weight but no bias (metaformer.GroupNorm1NoBias, poolformer v2): torch-pruning
    1.6.1's GroupNorm pruner prunes the bias too and fails on None, so they stay, and with them the stream they norm;
    the MLPs, which hold most of those models' MACs (their token mixer is pooling), are pruned."""
    return [m for m in model.modules() if isinstance(m, nn.GroupNorm) and m.affine and m.bias is None]


def ignored_layers(model: nn.Module) -> List[nn.Module]:
    """Layers whose out-channels stay: the classifier, the q/k/v layers of attention torch-pruning cannot split
    (_other_attention_layers), the width entering a token downsampling (_widths_into_token_subsampling), layers
    whose output is split (_split_channel_layers), grouped convolutions it mis-indexes, norms without bias and
    recurrent layers."""
    found = (classifier_layers(model) + _other_attention_layers(model) + _widths_into_token_subsampling(model)
             + _split_channel_layers(model) + _grouped_convs_torch_pruning_breaks(model) + _norms_without_bias(model)
             + _recurrent_layers(model))
    return list(dict.fromkeys(found))


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
    """Widths a layer caches: an attention's, from its pruned qkv Linear (3 * heads * head_dim rows); a scale's;
    an RMS norm's."""
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
        _sync_blur_pool(m)
        _sync_norm_width(m)


def _sync_norm_width(m: nn.Module) -> None:
    """timm.layers' RmsNorm, RmsNorm2d and their Fp32 variants (deepseek_vit, ...) are not nn.LayerNorm, so
    torch-pruning prunes their weight as an unwrapped vector (C,) but leaves the width they cache, the
    `normalized_shape` their forward passes to F.rms_norm: it is set from the pruned weight."""
    weight, shape = getattr(m, "weight", None), getattr(m, "normalized_shape", None)
    if isinstance(weight, nn.Parameter) and weight.dim() == 1 and isinstance(shape, tuple) and len(shape) == 1:
        m.normalized_shape = (weight.numel(),)  # nn.LayerNorm's is set by torch-pruning already: the same value


def _sync_blur_pool(m: nn.Module) -> None:
    """timm.layers.BlurPool2d (tresnet's anti-aliasing) blurs each channel with the same fixed filter, held as a
    buffer repeated per channel (`filt`, (channels, 1, k, k)) for a convolution with `channels` groups, which the
    traced graph passes channels through unpruned. With `channels` None it expands one row of the filter to the
    input's channel count: the same outputs at any width, so a pruned copy keeps one row (a buffer that is not
    saved: the state dict does not change)."""
    filt = getattr(m, "filt", None)
    if isinstance(getattr(m, "channels", None), int) and isinstance(filt, torch.Tensor) and filt.dim() == 4 and \
            hasattr(m, "filt_size") and filt.shape[0] == m.channels:
        m.filt, m.channels = filt[:1].clone(), None
