"""MacCounter against torch's own FlopCounterMode (1 MAC = 2 FLOPs)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.vision_transformer import VisionTransformer

from prune_runner.models import build_model
from prune_runner.pruning.hints import pruning_hints, sync_after_pruning
from prune_runner.pruning.macs import MacCounter, count_params

CIFAR_INPUT = (1, 3, 32, 32)


def torch_flop_counts(model: nn.Module, x: torch.Tensor) -> dict:
    """FLOPs per module name (and 'Global') from torch.utils.flop_counter, for one eval-mode forward (the
    model's training flags are restored)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}


def prune_one_step(model: nn.Module, x: torch.Tensor, num_classes: int = 10, ratio: float = 0.3) -> None:
    pruner = tp.pruner.MetaPruner(
        model, x, tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
        **pruning_hints(model, num_classes),
    )
    pruner.step()
    sync_after_pruning(model)


def test_resnet56_params_and_macs_match_torch_flop_counter():
    torch.manual_seed(0)
    model = build_model("resnet56", 10)
    x = torch.randn(CIFAR_INPUT)
    macs, params = MacCounter(model, x).count(model)
    assert params == 855_770
    flops = torch_flop_counts(model, x)
    assert macs == flops["Global"] // 2 == 125_747_840
    # 125.49 M is the 3x3-conv + classifier part; the two strided 1x1 shortcut convs add 0.26 M
    shortcut_macs = sum(v for k, v in flops.items() if k.endswith(".shortcut.0")) // 2
    assert shortcut_macs == 262_144
    assert round((macs - shortcut_macs) / 1e6, 2) == 125.49


def test_counter_follows_pruning_on_resnet20_and_mobilenetv2():
    torch.manual_seed(0)
    x = torch.randn(CIFAR_INPUT)
    for name in ("resnet20", "mobilenetv2_cifar"):
        model = build_model(name, 10)
        counter = MacCounter(model, x)
        base_macs, base_params = counter.count(model)
        prune_one_step(model, x)
        macs, params = counter.count(model)
        assert macs < 0.7 * base_macs and params < base_params, name
        assert macs == torch_flop_counts(model, x)["Global"] // 2, name
        assert params == count_params(model)


def test_counts_are_per_sample_and_leave_the_model_untouched():
    model = build_model("resnet20", 10).train()
    running_mean = model.bn1.running_mean.clone()
    one = MacCounter(model, torch.randn(1, 3, 32, 32)).count(model)
    three = MacCounter(model, torch.randn(3, 3, 32, 32)).count(model)
    assert one == three
    assert torch_flop_counts(model, torch.randn(3, 3, 32, 32))["Global"] // 2 // 3 == one[0]
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model.bn1.running_mean, running_mean)  # eval-mode forward: no stat updates


def test_counter_rejects_a_model_of_another_architecture():
    counter = MacCounter(build_model("resnet20", 10), torch.randn(CIFAR_INPUT))
    try:
        counter.count(nn.Sequential(nn.Linear(2, 2)))
    except ValueError as err:
        assert "conv1" in str(err) or "layer" in str(err)
    else:
        raise AssertionError("expected ValueError")


def tiny_vit() -> VisionTransformer:
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32,
                             mlp_dim=64, num_classes=10)


def attention_matmul_macs(model: VisionTransformer) -> int:
    """QK^T and AV per layer: 2 * L * L * E. FlopCounterMode does not count CPU attention kernels."""
    tokens = (model.image_size // model.patch_size) ** 2 + 1
    return len(model.encoder.layers) * 2 * tokens * tokens * model.hidden_dim


def test_attention_macs_on_tiny_vit_before_and_after_pruning():
    torch.manual_seed(0)
    model = tiny_vit()
    x = torch.randn(1, 3, 32, 32)
    counter = MacCounter(model, x)

    def check():
        model.train()  # no fused MHA fast path: projections appear as addmm to FlopCounterMode
        with torch.no_grad(), FlopCounterMode(display=False) as flops:
            model(x)
        model.eval()
        macs = counter.count(model)[0]
        assert macs == flops.get_total_flops() // 2 + attention_matmul_macs(model)

    check()
    prune_one_step(model, x, ratio=0.5)
    assert model.hidden_dim < 32 and model.hidden_dim % 4 == 0  # hidden width pruned per head group
    assert model(x).shape == (1, 10)
    check()
