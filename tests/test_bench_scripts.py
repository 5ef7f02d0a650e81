"""The benchmark scripts run end to end (tiny settings; no timing is asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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
