"""BatchNorm recalibration after pruning: only BN buffers change, deterministically, and it repairs
statistics that no longer match the layers' inputs."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from prune_runner.data import build_data
from prune_runner.models import build_model
from prune_runner.train.bn_recal import batches_for, recalibrate_bn
from prune_runner.train.loop import Fast

CPU = torch.device("cpu")
FP32 = Fast(amp=False, channels_last=False)


def _digits():
    return build_data("digits", root="data", input_size=32, device=CPU, download=False, in_memory=None,
                      augment=True, workers=0, rank=0, world_size=1, train_limit=256)


def _stale_model() -> nn.Module:
    """resnet20 whose BN running stats are wrong for its weights (what pruning leaves behind)."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(0.01)
            m.momentum = 0.01  # slow, like torchvision's mobilenet_v3: plain training would take long to fix it
    return model


def _bn_buffers(model):
    return {n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def test_recalibration_changes_only_bn_buffers_and_is_deterministic():
    data = _digits()
    model = _stale_model()
    model.train()  # the caller's mode must come back
    before = copy.deepcopy(model.state_dict())
    used = recalibrate_bn(model, batches_for(data, 32, 12, seed=3), CPU, FP32)
    assert used == 12  # 256 images / 32 = 8 batches an epoch: the stream continues into the next epoch
    assert model.training
    after = model.state_dict()
    bn_names = _bn_buffers(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    params = {n for n, _ in model.named_parameters()}
    assert not changed & params, "weights must not change"
    assert changed, "the BN statistics should have been re-estimated"
    assert all(k.rsplit(".", 1)[0] in bn_names for k in changed), changed
    assert all(m.momentum == 0.01 for m in model.modules() if isinstance(m, nn.BatchNorm2d))

    again = _stale_model()
    recalibrate_bn(again, batches_for(data, 32, 12, seed=3), CPU, FP32)
    for k, v in again.state_dict().items():
        assert torch.equal(v, after[k]), f"{k} differs between two recalibrations with the same seed"


def test_recalibration_is_the_average_of_batch_statistics_with_dropout_off():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.01))
    model[2].running_mean.fill_(3.0)
    batches = [(torch.randn(8, 3, 6, 6) * (i + 1), torch.zeros(8, dtype=torch.long)) for i in range(3)]
    model.eval()
    recalibrate_bn(model, iter(batches), CPU, FP32)
    assert not model.training and model[2].momentum == 0.01
    with torch.no_grad():  # what the BN layer saw, without dropout: equal weights per batch
        feats = [model[1](x) for x, _ in batches]
    means = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    variances = torch.stack([f.transpose(0, 1).flatten(1).var(1, unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(model[2].running_mean, means)
    torch.testing.assert_close(model[2].running_var, variances)


def test_no_batchnorm_is_a_no_op():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    before = copy.deepcopy(model.state_dict())
    assert recalibrate_bn(model, iter([(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))]), CPU,
                          FP32) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
