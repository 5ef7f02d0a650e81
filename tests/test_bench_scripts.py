"""The benchmark scripts run end to end, in this process (tiny settings; no timing is asserted)."""

from __future__ import annotations

import re

from conftest import run_main, script_main


def test_bench_epoch_runs_both_paths_and_prints_a_ratio():
    done = run_main(script_main("bench_epoch"),
                    ["--images", "128", "--batch", "16", "--limit-steps", "2", "--workers", "0"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^ratio reference/fast: \d+\.\d+x", done.stdout, re.MULTILINE), done.stdout
    assert "extrapolated from the first 2 steps" in done.stdout  # 8 steps/epoch, only 2 timed
    for path in ("reference", "fast"):
        assert re.search(rf"^{path}\s*: +\d+\.\d+ s/epoch", done.stdout, re.MULTILINE), done.stdout
