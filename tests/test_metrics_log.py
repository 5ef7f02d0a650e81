"""Per-epoch metrics: JSONL always, TensorBoard when asked (an optional dependency)."""

from __future__ import annotations

import json
import sys

import pytest

from prune_runner.config import RunConfig
from prune_runner.errors import UserError
from prune_runner.tracking.metrics_log import MetricsLog
from prune_runner.validate import validate


def test_jsonl_rows(tmp_path):
    log = MetricsLog(tmp_path)
    log.log("pretrain", 0, loss=1.5, val_acc=0.5)
    log.log("pretrain", 1, loss=0.5, val_acc=0.9)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"], r["loss"]) for r in rows] == [("pretrain", 0, 1.5), ("pretrain", 1, 0.5)]


def test_disabled_on_other_ranks(tmp_path):
    MetricsLog(tmp_path, enabled=False).log("pretrain", 0, loss=1.0)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_tensorboard_scalars(tmp_path):  # the tensorboard extra: installed by `make install`, so always run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path, logger="tensorboard")
    log.log("finetune", 0, loss=1.0, val_acc=0.5)
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"finetune/loss", "finetune/val_acc"}


def test_tensorboard_missing_is_one_line_before_the_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` raise ImportError
    with pytest.raises(UserError, match=r"pip install 'prune-runner\[tensorboard\]'"):
        validate(RunConfig(logger="tensorboard"))


def test_missing_export_package_is_one_line_before_the_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UserError, match=r"export=onnx needs the optional dependency"):
        validate(RunConfig(export=["onnx"]))
