"""The benchmark scripts run end to end (tiny settings; no timing is asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_bench_epoch_runs_both_paths_and_prints_a_ratio():
    command = [sys.executable, str(REPO / "scripts" / "bench_epoch.py"), "--images", "512", "--batch", "64",
               "--limit-steps", "2", "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # 1 thread: shared 2-core machine
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^ratio reference/fast: \d+\.\d+x", done.stdout, re.MULTILINE), done.stdout
    assert "extrapolated from the first 2 steps" in done.stdout  # 8 steps/epoch, only 2 timed
    for path in ("reference", "fast"):
        assert re.search(rf"^{path}\s*: +\d+\.\d+ s/epoch", done.stdout, re.MULTILINE), done.stdout


def _script(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_bench_latency_target_prints_both_targets_and_the_goals():
    done = _script("bench_latency_target.py", "--models", "resnet20", "--batches", "1", "--targets", "1.2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^resnet20\s+1\s+latency 1.2x\s+\d+\.\d+\s+\d+\.\d+ \[", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^resnet20\s+1\s+macs 1.2x\s+1\.2\d", done.stdout, re.MULTILINE), done.stdout
    assert "goal, latency runs >= 0.95x target" in done.stdout and "goal, latency run time <= 3x" in done.stdout


@pytest.mark.slow
def test_bench_round_to_chooses_a_multiple():
    done = _script("bench_round_to.py", "--widths", "14", "18", "--repeats", "2", "--batch", "1", "--size", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^round_to for \(cpu, fp32\): \d+", done.stdout, re.MULTILINE), done.stdout
