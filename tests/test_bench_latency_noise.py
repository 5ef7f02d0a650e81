"""scripts/bench_latency_noise.py runs end to end (tiny settings; no ratio is asserted here)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def test_bench_latency_noise_prints_both_methods():
    command = [sys.executable, str(REPO / "scripts" / "bench_latency_noise.py"), "--trials", "1", "--repeats", "3",
               "--workers", "1", "--period", "0.2", "--batch", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sequential (old):" in done.stdout and "interleaved (new):" in done.stdout, done.stdout
