"""A run that cannot lose work: kill-and-resume equals an uninterrupted run; sweeps reuse stages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import FAST, results_of, run_cli

# deterministic CPU runs with two epochs per training stage, so a kill can land inside a stage
ARGS = ["model=resnet20", "method=group_norm", "prune.speed_up=1.3", "deterministic=true", "eval.latency=false",
        "schedule.pretrain.epochs=2", "schedule.sparse_train.epochs=2", "schedule.finetune.epochs=2",
        "dataset.train_limit=640", *FAST]
COMPARED = ("base", "pruned", "final", "acc_delta", "speed_up", "params_ratio", "prune_steps")


def _kill_when(args, cwd: Path, marker: Path, timeout: float = 300) -> None:
    """Start prune-run, SIGKILL it as soon as `marker` exists (a stage's first epoch checkpoint)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "prune_runner.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    proc = run_cli([*ARGS, f"run_dir={straight}", f"out_root={tmp_path / 'out_a'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]

    killed = tmp_path / "killed"
    args = [*ARGS, f"run_dir={killed}", f"out_root={tmp_path / 'out_b'}"]
    _kill_when(args, tmp_path, killed / "sparse_train" / "epoch_0000.json")
    assert not (killed / "sparse_train" / "done.json").exists()
    _kill_when(args, tmp_path, killed / "finetune" / "epoch_0000.json")
    assert not (killed / "finetune" / "done.json").exists()
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pretrain: finished earlier, skipped" in proc.stdout
    assert "finetune: resuming at epoch 2/2" in proc.stdout

    a, b = results_of(straight), results_of(killed)
    assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}


def test_sweep_reuses_upstream_stages(tmp_path):
    out = tmp_path / "outputs"
    proc = run_cli(["-m", "prune.speed_up=1.2,1.4,1.6", "model=resnet20", "method=group_norm",
                    "schedule.pretrain.epochs=1", "eval.latency=false", *FAST, f"out_root={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines.count("pretrain") == 1 and lines.count("sparse_train") == 1  # computed once
    assert lines.count("prune") == 3
    assert sum(line.startswith("pretrain: reused from") for line in lines) == 2
    assert sum(line.startswith("sparse_train: reused from") for line in lines) == 2
    runs = sorted(out.glob("digits/resnet20/group_norm/*/seed0/results.json"))
    assert len(runs) == 3
    speed_ups = sorted(results_of(r.parent)["target_speed_up"] for r in runs)
    assert speed_ups == [1.2, 1.4, 1.6]


def test_resume_from_another_runs_stage(tmp_path):
    first = tmp_path / "first"
    common = ["model=resnet20", "method=l1", "schedule.pretrain.epochs=1", "eval.latency=false", *FAST,
              f"out_root={tmp_path / 'outputs'}"]
    assert run_cli([*common, "prune.speed_up=1.2", f"run_dir={first}"], cwd=tmp_path).returncode == 0
    second = tmp_path / "second"
    proc = run_cli([*common, "prune.speed_up=1.5", f"run_dir={second}", f"resume_from={first / 'sparse_train'}"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"pretrain: from {first / 'pretrain'}" in proc.stdout
    r1, r2 = results_of(first), results_of(second)
    assert r2["base"] == r1["base"] and r2["speed_up"] >= 1.5 > r1["speed_up"]
