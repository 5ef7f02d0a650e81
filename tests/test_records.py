"""Checkpoint files: atomic writes, checksums, fallback to the previous epoch, a full disk."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from prune_runner.errors import CheckpointError, UserError
from prune_runner.run.checkpoint import load_checkpoint, save_checkpoint
from prune_runner.run.files import atomic_write_bytes
from prune_runner.run.records import StageDir


def test_checksum_detects_a_truncated_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    sha = save_checkpoint(path, {"x": torch.arange(1000)})
    assert torch.equal(load_checkpoint(path, expected_sha=sha)["x"], torch.arange(1000))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path, expected_sha=sha)


def test_corrupt_epoch_checkpoint_falls_back_to_the_previous_one(tmp_path):
    stage = StageDir(tmp_path, "finetune")
    for epoch in range(3):
        stage.save_epoch(epoch, {"w": torch.full((4,), float(epoch))}, "h1")
    assert sorted(p.name for p in stage.path.glob("epoch_*.pt")) == ["epoch_0001.pt", "epoch_0002.pt"]
    newest = stage.path / "epoch_0002.pt"
    newest.write_bytes(newest.read_bytes()[:50])  # torn
    warnings = []
    ckpt = stage.latest_epoch("h1", warn=warnings.append)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["w"], torch.full((4,), 1.0))
    assert len(warnings) == 1 and "epoch_0002.pt" in warnings[0]
    assert stage.latest_epoch("another config", warn=warnings.append) is None


def test_disk_full_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "done.json"
    atomic_write_bytes(path, b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match="disk full while saving"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["done.json"]  # no temp file left behind
