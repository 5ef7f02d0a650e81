"""Distillation inside the pipeline: the teacher is the unpruned model, its checkpoint hash keys the
finetune stage, and a rerun finds the stage finished."""

from __future__ import annotations

import pytest
from inprocess import run_inprocess

from prune_runner.errors import UserError

KD = {"model": "resnet20", "method": "l1", "dataset.train_limit": 512, "prune.speed_up": 1.5,
      "stages": "[pretrain,sparse_train,prune,finetune]", "schedule.finetune.distill.alpha": 0.5}


@pytest.mark.slow  # a whole short pipeline run, then a rerun
def test_teacher_is_pretrain_for_a_method_without_regularizer_and_rerun_skips(tmp_path):
    records, text = run_inprocess(tmp_path / "kd", **KD)
    assert "finetune: distilling from" in text and records["pretrain"]["checkpoint"] in text
    ft = records["finetune"]["config"]
    assert ft["finetune.distill.teacher_sha256"] == records["pretrain"]["sha256"]
    assert ft["schedule.finetune.distill.alpha"] == 0.5
    assert "acc_before_bn_recal" in records["prune"]["metrics"]  # recalibration is on by default
    _, again = run_inprocess(tmp_path / "kd", **KD)
    assert again.count("finished earlier, skipped") == 4 and "distilling" not in again
    with pytest.raises(UserError, match="schedule.finetune.distill.temperature"):
        run_inprocess(tmp_path / "kd", **KD, **{"schedule.finetune.distill.temperature": 2.0})
