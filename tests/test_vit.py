"""torchvision ViTs through the pipeline: head-aligned pruning, cached widths, rebuilt checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from inprocess import tiny_config
from torchvision.models.vision_transformer import VisionTransformer

from prune_runner.models import MODELS, build_model, register_model
from prune_runner.pruning import build_pruner, progressive_prune
from prune_runner.pruning.macs import MacCounter
from prune_runner.pruning.methods import get_method
from prune_runner.run import stages
from prune_runner.run.checkpoint import load_checkpoint, model_payload, rebuild_model, save_checkpoint
from prune_runner.run.pipeline import run_pipeline

TINY_VIT = "vit_tiny_test"  # registered here only: a 2-layer ViT that trains in seconds on a CPU

if TINY_VIT not in MODELS:
    @register_model(TINY_VIT, input_size=32, family="cifar")
    def _tiny_vit(num_classes: int, pretrained: bool = False) -> VisionTransformer:
        return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32,
                                 mlp_dim=64, num_classes=num_classes)


def test_one_step_keeps_heads_aligned_on_vit_b_16():
    """10 steps to the end: one step removes 10% of each head (64 -> 57), not 10% of the width (768 -> 691)."""
    torch.manual_seed(0)
    model = build_model("vit_b_16", 10, input_size=32)  # 4 patches: the same widths as 224 px, far faster
    x = torch.randn(1, 3, 32, 32)
    pruner = build_pruner(model, x, get_method("l1"), 10, steps=10)
    progressive_prune(model, pruner, MacCounter(model, x), 1.0 + 1e-9)  # exactly one step
    assert model.conv_proj.out_channels == model.hidden_dim == 684
    assert model(x).shape == (1, 10)


@pytest.mark.parametrize("method", ["group_norm", "l1"])
def test_vit_runs_the_whole_pipeline_and_rebuilds(tmp_path, monkeypatch, method):
    """The fine-tuned model, as it was before it was saved, and the one rebuilt from its checkpoint compute the
    same outputs."""
    saved = {}
    real_finetune = stages.STAGE_FNS["finetune"]

    def finetune(state, run):
        out = real_finetune(state, run)
        saved["model"] = copy.deepcopy(state.model)  # the model whose state_dict the checkpoint holds
        return out

    monkeypatch.setitem(stages.STAGE_FNS, "finetune", finetune)
    cfg = tiny_config(tmp_path, TINY_VIT, method)
    records = run_pipeline(cfg, tmp_path / "run")
    assert records["prune"]["metrics"]["speed_up"] >= 1.5
    model, history = rebuild_model(load_checkpoint(records["finetune"]["checkpoint"]))
    assert history and model.hidden_dim == model.conv_proj.out_channels < 32
    assert model.hidden_dim == saved["model"].hidden_dim and model.hidden_dim % model.encoder.layers[0].num_heads == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), saved["model"].eval()(x))


def test_pruned_vit_checkpoint_rebuilds_to_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY_VIT, 10)
    x = torch.randn(2, 3, 32, 32)
    pruner = build_pruner(model, x[:1], get_method("l2"), 10, steps=10)
    progressive_prune(model, pruner, MacCounter(model, x[:1]), 1.5)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model_payload(model, TINY_VIT, 10, 32, pruner.pruning_history()))
    rebuilt, _ = rebuild_model(load_checkpoint(path), path)  # from the file, against the model before it was saved
    assert rebuilt.hidden_dim == model.hidden_dim < 32
    with torch.no_grad():
        assert torch.equal(model.eval()(x), rebuilt.eval()(x))
