"""Knowledge distillation in fine-tuning: the loss, a frozen teacher, and the stage hash."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from prune_runner.config import RunConfig
from prune_runner.run.records import StageInputs, config_hash, own_config, teacher_key, teacher_record
from prune_runner.train.distill import Distiller, distill_loss
from prune_runner.train.loop import Fast, train_epoch

CPU = torch.device("cpu")


def test_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    alpha, t = 0.7, 3.0
    s, te = student(x).detach(), teacher(x).detach()
    expected = 0.0
    for i in range(5):
        s_row, t_row = s[i].tolist(), te[i].tolist()
        log_z = math.log(sum(math.exp(v) for v in s_row))
        hard = log_z - s_row[y[i]]
        zs = sum(math.exp(v / t) for v in s_row)
        zt = sum(math.exp(v / t) for v in t_row)
        kl = sum((math.exp(tv / t) / zt) * (math.log(math.exp(tv / t) / zt) - math.log(math.exp(sv / t) / zs))
                 for sv, tv in zip(s_row, t_row))
        expected += ((1 - alpha) * hard + alpha * t * t * kl) / 5
    got = distill_loss(s, te, y, alpha, t)
    assert abs(float(got) - expected) < 1e-5, (float(got), expected)
    assert float(distill_loss(s, s, y, 1.0, t)) == pytest.approx(0.0, abs=1e-6)  # a perfect student


def test_teacher_never_receives_gradients_and_stays_in_eval_mode():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    teacher.train()
    student = nn.Sequential(nn.Linear(4, 3))
    kd = Distiller(teacher, alpha=0.5, temperature=2.0)
    before_t = copy.deepcopy(teacher.state_dict())  # BN running stats included: eval mode never updates them
    before_s = copy.deepcopy(student.state_dict())
    batches = [(torch.randn(6, 4), torch.randint(0, 3, (6,))) for _ in range(3)]
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    train_epoch(student, batches, opt, sched, CPU, Fast(False, False), criterion=kd)
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_t.items())
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in before_s.items())


def _records(sparse_sha="aa", pretrain_sha="bb"):
    return {"pretrain": {"sha256": pretrain_sha, "checkpoint": "p.pt"},
            "sparse_train": {"sha256": sparse_sha, "checkpoint": "s.pt"}}


def test_teacher_is_sparse_train_output_else_pretrain():
    assert teacher_record(_records())["sha256"] == "aa"
    assert teacher_record({"pretrain": _records()["pretrain"]})["sha256"] == "bb"


INPUTS = StageInputs(dataset="d", base_checkpoint=None, world_size=1, amp=False)


def stage_config(cfg, stage, has_regularizer):
    return own_config(cfg, stage, has_regularizer, INPUTS)


def test_finetune_hash_covers_distillation_settings_and_teacher_checkpoint():
    cfg = RunConfig()
    flat = stage_config(cfg, "finetune", True)
    assert teacher_key(cfg, _records()) == {}  # off: no teacher entry, so old stage hashes stay valid
    cfg.schedule.finetune.distill.alpha = 0.5
    with_kd = {**stage_config(cfg, "finetune", True), **teacher_key(cfg, _records())}
    assert with_kd["schedule.finetune.distill.alpha"] == 0.5
    assert with_kd["finetune.distill.teacher_sha256"] == "aa"
    other_teacher = {**stage_config(cfg, "finetune", True), **teacher_key(cfg, _records(sparse_sha="cc"))}
    cfg.schedule.finetune.distill.temperature = 2.0
    other_t = {**stage_config(cfg, "finetune", True), **teacher_key(cfg, _records())}
    assert len({config_hash(f) for f in (flat, with_kd, other_teacher, other_t)}) == 4
