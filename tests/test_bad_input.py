"""Bad input: one line naming the value and what is allowed, a non-zero exit, and nothing
in an existing run directory changed. In this process; tests/test_cli_contract.py checks the
same contract on a subprocess's exit status and stderr."""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, error_lines, run_cli

from prune_runner.run.checkpoint import load_checkpoint


def _snapshot(folder: Path) -> dict:
    """Every file's digest; `.lock` only names the last process that held the run dir."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run (no fine-tuning epochs) whose folder must survive every bad command."""
    root = tmp_path_factory.mktemp("bad_input")
    run_dir = root / "run"
    proc = run_cli(["model=resnet20", "method=l1", "prune.speed_up=1.2", f"run_dir={run_dir}",
                    f"out_root={root / 'outputs'}", "schedule.finetune.epochs=0", "eval.latency=false", *FAST],
                   cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, run_dir


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"this is not a checkpoint")
    return path


def _evil(path: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (print, ("code ran while unpickling",))

    buf = io.BytesIO()
    torch.save({"format": "prune-runner/1", "payload": Evil()}, buf)
    path.write_bytes(buf.getvalue())
    return path


CASES = {
    "unknown model": (["model=resnet21"], ["resnet21", "resnet56", "torchvision"]),
    "unknown method": (["method=l3"], ["l3", "group_norm", "obdc"]),
    "unknown dataset": (["dataset=mnist"], ["mnist", "digits", "cifar10"]),
    "unknown group option": (["schedule=forever"], ["forever", "tiny", "default"]),
    "unknown key": (["prune.sped_up=2"], ["prune.sped_up", "speed_up"]),
    "wrong type": (["prune.speed_up=fast"], ["fast", "prune.speed_up"]),
    "negative reg": (["method.reg=-0.1"], ["method.reg=-0.1", ">= 0"]),
    "negative lr": (["schedule.finetune.lr=-1"], ["schedule.finetune.lr=-1", ">= 0"]),
    "negative epochs": (["schedule.pretrain.epochs=-3"], ["schedule.pretrain.epochs=-3", ">= 0"]),
    "speed-up below 1": (["prune.speed_up=0.8"], ["prune.speed_up=0.8", ">= 1"]),
    "iterative steps below 1": (["prune.iterative_steps=0"], ["prune.iterative_steps=0", ">= 1"]),
    "holdout out of range": (["dataset.holdout=1.5"], ["dataset.holdout=1.5", "(0, 1)"]),
    "missing data folder": (["dataset=imagefolder", "dataset.root=/no/such/folder"], ["/no/such/folder"]),
    "offline download": (["dataset=cifar10", "dataset.root={tmp}/cifar"], ["cifar10", "dataset=digits"]),
    "missing export package": (["export=[onnx]"], ["export=onnx", "pip install 'prune-runner[export]'"]),
    "missing logger package": (["logger=tensorboard"], ["logger=tensorboard", "prune-runner[tensorboard]"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line(case, finished_run, monkeypatch):
    root, run_dir = finished_run
    before = _snapshot(run_dir)
    args, expected = CASES[case]
    args = [a.replace("{tmp}", str(root)) for a in args]
    # an unreachable proxy makes any download attempt fail fast, as on an offline machine
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    for package in ("onnx", "tensorboard"):  # as where the optional extras are not installed
        monkeypatch.setitem(sys.modules, package, None)
    proc = run_cli(["model=resnet20", "method=l1", f"run_dir={run_dir}", f"out_root={root / 'outputs'}",
                    *FAST, *args], cwd=root)
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("prune-run: error: ")
    for word in expected:
        assert word in lines[0], lines[0]
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize("kind", ["corrupt", "evil", "other model"])
def test_bad_base_checkpoint(kind, finished_run, tmp_path):
    root, run_dir = finished_run
    before = _snapshot(run_dir)
    if kind == "corrupt":
        ckpt = _corrupt(tmp_path / "broken.pt")
    elif kind == "evil":
        ckpt = _evil(tmp_path / "evil.pt")
    else:
        ckpt = run_dir / "pretrain" / "checkpoint.pt"  # a resnet20 checkpoint, offered to resnet32
    proc = run_cli(["model=resnet32", "method=l1", f"base_checkpoint={ckpt}", f"run_dir={tmp_path / 'new'}",
                    f"out_root={tmp_path / 'outputs'}", *FAST], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and str(ckpt) in lines[0], proc.stderr
    assert "code ran while unpickling" not in proc.stdout + proc.stderr
    if kind == "evil":
        assert "weights_only" in lines[0]
    if kind == "other model":
        assert "resnet20" in lines[0] and "resnet32" in lines[0]
    assert _snapshot(run_dir) == before


def test_changed_config_is_refused_with_the_differing_keys(finished_run):
    root, run_dir = finished_run
    before = _snapshot(run_dir)
    proc = run_cli(["model=resnet20", "method=l1", "prune.speed_up=1.3", f"run_dir={run_dir}",
                    f"out_root={root / 'outputs'}", "schedule.finetune.epochs=0", "eval.latency=false", *FAST],
                   cwd=root)
    assert proc.returncode == 2
    assert "prune.speed_up" in proc.stderr and "resume=overwrite" in proc.stderr
    assert _snapshot(run_dir) == before


def test_nan_loss_stops_the_stage_and_keeps_the_last_good_checkpoint(finished_run, tmp_path):
    """Fine-tuning trains one good epoch, then its lr jumps 1e12-fold: the stage stops, and its epoch-0
    checkpoint (finite weights, its checksum on record) and the finished prune stage are what remain."""
    root, run_dir = finished_run
    new = tmp_path / "diverges"
    proc = run_cli(["model=resnet20", "method=l1", "prune.speed_up=1.2", f"run_dir={new}",
                    f"resume_from={run_dir / 'prune'}", "schedule.finetune.epochs=2",
                    "schedule.finetune.lr_schedule=step", "schedule.finetune.milestones=[0.5]",
                    "schedule.finetune.lr_gamma=1e12", f"out_root={tmp_path / 'outputs'}", *FAST], cwd=tmp_path)
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and re.search(r"loss became (nan|inf)", lines[0].lower()), proc.stderr
    finetune = new / "finetune"
    assert not (finetune / "done.json").exists()
    assert sorted(p.name for p in finetune.glob("epoch_*")) == ["epoch_0000.json", "epoch_0000.pt"]
    meta = json.loads((finetune / "epoch_0000.json").read_text())
    last_good = load_checkpoint(finetune / "epoch_0000.pt", expected_sha=meta["sha256"])
    assert last_good["epoch"] == 0 and last_good["stage_hash"] == meta["hash"]
    assert all(torch.isfinite(t).all() for t in last_good["state_dict"].values() if t.is_floating_point())
    # the prune stage it started from: this run's copy, intact, is the finished run's checkpoint
    prune = json.loads((new / "prune" / "done.json").read_text())
    source = json.loads((run_dir / "prune" / "done.json").read_text())
    kept = hashlib.sha256((new / "prune" / "checkpoint.pt").read_bytes()).hexdigest()
    assert prune["sha256"] == source["sha256"] == kept
