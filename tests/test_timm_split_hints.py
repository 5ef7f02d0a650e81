"""The timm hints that let torch-pruning 1.6.1 through more timm families (pruning/timm_hints.py, issue 26): layers
whose output a block splits, grouped convolutions it mis-indexes, GroupNorm without bias, attention whose head width
something else holds, and BlurPool2d's fixed filter. Which layers a hint keeps whole is checked on the model built
on the meta device (no memory, no weights: fast). That the family's walk model is then pruned to 1.5x MACs with
group_norm and with l1, runs, and is rebuilt from its pruning history with the same outputs is the timm walk's
check (`walk`: `make test-walk`)."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

timm = pytest.importorskip("timm")

from conftest import script_main  # noqa: E402

from prune_runner.pruning import timm_hints  # noqa: E402

script_main("timm_walk")
walk = sys.modules["script_timm_walk"]

# timm family -> (its walk model: the smallest it registers, layers the hints keep whole, a layer left to be pruned)
KEPT = {
    # metaformer.GroupNorm1NoBias: torch-pruning's GroupNorm pruner fails on its None bias
    "metaformer": ("poolformerv2_s12", ["stages.0.blocks.0.norm1", "stages.3.blocks.1.norm2"],
                   "stages.0.blocks.0.mlp.fc1"),
    # inception_next.InceptionDWConv2d: the stream split by split_indexes into an identity part and three convs
    "inception_next": ("inception_next_atto", ["stages.0.blocks.0.token_mixer.dwconv_hw",
                                               "stages.0.blocks.0.token_mixer.dwconv_w",
                                               "stages.0.blocks.0.token_mixer.dwconv_h"], "stages.0.blocks.0.mlp.fc1"),
    # mambaout.GatedConvBlock: fc1's output split by split_indices
    "mambaout": ("mambaout_femto", ["stages.0.blocks.0.fc1"], "stages.1.downsample.conv"),
    # fasternet.Partial_conv3: dim_conv3 of the stream through partial_conv3, the rest untouched
    "fasternet": ("fasternet_t0", ["stages.0.blocks.0.spatial_mixing.partial_conv3"], "stages.0.blocks.0.mlp.0"),
    # gMLP: GatedMlp's fc1 output halved by mlp_mixer.SpatialGatingUnit, whose proj mixes tokens
    "mlp_mixer": ("gmlp_ti16_224", ["blocks.0.mlp_channels.fc1", "blocks.0.mlp_channels.gate.proj"], "stem.proj"),
    # res2net.Bottle2neck: conv1's output split into `scale` parts
    "res2net": ("res2next50", ["layer1.0.conv1"], "layer1.0.conv3"),
    # resnest's SplitAttn: conv's output viewed as radix parts, fc2's softmaxed across them
    "resnest": ("resnest14d", ["layer1.0.conv2.conv", "layer1.0.conv2.fc2"], "layer1.0.conv3"),
    # dpn.DualPathBlock: outputs split into the residual and the dense part
    "dpn": ("dpn48b", ["features.conv2_1.c1x1_w_s1.conv", "features.conv2_1.c1x1_c1", "features.conv2_1.c1x1_c2"],
            "features.conv2_1.c1x1_a.conv"),
    # efficientvit_mit.LiteMLA: qkv viewed as heads, aggregated by grouped convs
    "efficientvit_mit": ("efficientvit_b0", ["stages.3.blocks.1.context_module.main.qkv.conv",
                                             "stages.3.blocks.1.context_module.main.aggreg.0.0"],
                         "stages.3.blocks.1.local_module.main.inverted_conv.conv"),
    # grouped convs of 2 channels a group, with the conv feeding them
    "dla": ("dla46x_c", ["level2.tree1.conv2", "level2.tree1.conv1"], "level2.tree1.conv3"),
    # channel-multiplier convs (out = 2 x in, a group per input channel)
    "pit": ("pit_ti_224", ["transformers.1.pool.conv", "transformers.2.pool.conv"], "transformers.0.blocks.0.mlp.fc1"),
    "fastvit": ("fastvit_t8", ["final_conv.conv_kxk.0.conv", "stages.1.downsample.proj.0.small_conv.conv"],
                "stages.0.blocks.0.mlp.fc1"),
    # attention with relative position tables of its head width: its qkv stays, the stream is pruned
    "vision_transformer_sam": ("samvit_base_patch16_224", ["blocks.0.attn.qkv"], "blocks.0.attn.proj"),
    # rotary embeddings of its head width (timm.layers.AttentionRope): its qkv stays
    "qwen3_vit": ("qwen3_vit_88m", ["encoder.blocks.0.attn.qkv"], "encoder.blocks.0.attn.proj"),
    # hiera.MaskUnitAttention counts `heads` and caches head_dim: its qkv stays
    "hiera": ("hiera_tiny_224", ["blocks.0.attn.qkv"], "blocks.0.attn.proj"),
    # hieradet_sam2.MultiScaleAttention splits its qkv rows by its own dim_out: its qkv stays
    "hieradet_sam2": ("sam2_hiera_tiny", ["blocks.0.attn.qkv"], "blocks.0.attn.proj"),
    # attention that reshapes its output by its input's width (OUTPUT_BY_INPUT_WIDTH): all of it stays
    "vision_transformer_relpos": ("vit_srelpos_small_patch16_224", ["blocks.0.attn.qkv", "blocks.0.attn.proj"],
                                  "blocks.0.mlp.fc1"),
    "gcvit": ("gcvit_xxtiny", ["stages.0.blocks.0.attn.qkv", "stages.0.blocks.0.attn.proj"],
              "stages.0.blocks.0.mlp.fc1"),
    # sequencer's RNN2d: bidirectional LSTMs whose outputs are concatenated
    "sequencer": ("sequencer2d_s", ["stages.0.blocks.0.rnn_tokens.rnn_v", "stages.0.blocks.0.rnn_tokens.rnn_h"],
                  "stages.0.blocks.0.mlp_channels.fc1"),
}


def _meta_model(name: str):
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model(name, num_classes=10)


@pytest.mark.parametrize("family", sorted(KEPT))
def test_the_hints_keep_these_layers_whole_and_leave_others_to_prune(family):
    arch, kept, pruned = KEPT[family]
    model = _meta_model(arch)
    ignored = {id(m) for m in timm_hints.ignored_layers(model)}
    names = {name for name, m in model.named_modules() if id(m) in ignored}
    assert set(kept) <= names, sorted(set(kept) - names)
    assert pruned not in names and pruned in dict(model.named_modules())


def test_blur_pool_keeps_one_filter_row_with_the_same_outputs():
    # tresnet's anti-aliasing (timm.layers.BlurPool2d): a filter repeated per channel for a grouped convolution;
    # after pruning it expands one row to the input's width, which gives the same outputs at any width
    from timm.layers import BlurPool2d

    pool = BlurPool2d(channels=8)
    x = torch.randn(2, 8, 10, 10)
    before = pool(x)
    timm_hints.sync_after_pruning(pool)
    assert pool.filt.shape == (1, 1, 3, 3) and pool.channels is None
    assert torch.equal(pool(x), before) and pool(x[:, :5]).shape == (2, 5, 5, 5)
    assert "filt" not in pool.state_dict()  # a buffer that is not saved: checkpoints do not change


@pytest.mark.walk
@pytest.mark.parametrize("family", sorted(KEPT) + ["tresnet"])
def test_the_family_is_pruned_end_to_end_with_both_methods(family):
    row = walk.walk_family(family)
    if family in KEPT:
        assert row.model == f"timm/{KEPT[family][0]}"  # the model the hints were checked on
    assert {m: o.status for m, o in row.outcomes.items()} == {"group_norm": "pruned", "l1": "pruned"}, row.outcomes
