"""Shared helpers: run the CLI as a subprocess with small, fast settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# a short digits schedule: seconds per stage on a CPU, accuracy well above chance
FAST = ["schedule=tiny", "device=cpu", "progress=false", "eval.latency_repeats=3", "eval.latency_batch=8",
        "prune.iterative_steps=25"]  # 4% of each layer per step: few steps to a small target

torch.set_num_threads(1)  # small test tensors: threads only add contention on a 2-core machine


def run_cli(args, cwd: Path, timeout: float = 600, env: dict | None = None,
            module: str = "prune_runner.cli") -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def results_of(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())
