"""A 3-target speed-up sweep with the stage cache vs three independent runs.

Both sides run the same three digits jobs (prune.speed_up = 1.5, 2, 2.5; group_norm on resnet20) through
the real `prune-run` command, one after another, each side in a fresh output folder:
  independent: three separate `prune-run` commands with cache=false (each pretrains and sparse-trains);
  sweep:       one `prune-run -m prune.speed_up=1.5,2,2.5` (pretrain and sparse_train run once, then reused).
Prints the wall time of each side and the ratio sweep / independent (the target is below 0.60).

Run: .venv/bin/python scripts/bench_sweep.py [--schedule demo] [--model resnet20]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = ["1.5", "2", "2.5"]


def prune_run(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "prune_runner.cli", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"prune-run failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", default="demo", help="schedule group option (default: demo)")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--method", default="group_norm")
    args = parser.parse_args()
    common = [f"model={args.model}", f"method={args.method}", "dataset=digits", f"schedule={args.schedule}",
              "device=cpu", "progress=false", "eval.latency=false"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; jobs: {args.model} / {args.method} / digits / schedule={args.schedule}, "
          f"speed-ups {', '.join(TARGETS)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        independent = 0.0
        for target in TARGETS:
            out = root / f"independent_{target}"
            independent += prune_run([*common, f"prune.speed_up={target}", "cache=false", f"out_root={out}"], root)
        sweep = prune_run(["-m", f"prune.speed_up={','.join(TARGETS)}", *common, f"out_root={root / 'sweep'}"], root)
    print(f"three independent runs: {independent:.1f} s")
    print(f"one sweep (stage cache): {sweep:.1f} s")
    print(f"ratio sweep / independent: {sweep / independent:.2f} (target < 0.60)")


if __name__ == "__main__":
    main()
