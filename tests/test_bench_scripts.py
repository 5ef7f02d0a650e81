"""The benchmark scripts run end to end, in this process (tiny settings; no timing is asserted)."""

from __future__ import annotations

import re

import pytest
from conftest import run_main, script_main


def test_bench_epoch_runs_both_paths_and_prints_a_ratio():
    done = run_main(script_main("bench_epoch"),
                    ["--images", "128", "--batch", "16", "--limit-steps", "2", "--workers", "0"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^ratio reference/fast: \d+\.\d+x", done.stdout, re.MULTILINE), done.stdout
    assert "extrapolated from the first 2 steps" in done.stdout  # 8 steps/epoch, only 2 timed
    for path in ("reference", "fast"):
        assert re.search(rf"^{path}\s*: +\d+\.\d+ s/epoch", done.stdout, re.MULTILINE), done.stdout


@pytest.mark.slow
def test_bench_latency_target_prints_both_targets_and_the_goals():
    done = run_main(script_main("bench_latency_target"), ["--models", "resnet20", "--batches", "1", "--targets", "1.2"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^resnet20\s+1\s+latency 1.2x\s+\d+\.\d+\s+\d+\.\d+ \[", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^resnet20\s+1\s+macs 1.2x\s+1\.2\d", done.stdout, re.MULTILINE), done.stdout
    assert "goal, latency runs >= 0.95x target" in done.stdout and "goal, latency run time <= 3x" in done.stdout


@pytest.mark.slow
def test_bench_round_to_chooses_a_multiple():
    done = run_main(script_main("bench_round_to"),
                    ["--widths", "14", "18", "--repeats", "2", "--batch", "1", "--size", "4"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^round_to for \(cpu, fp32\): \d+", done.stdout, re.MULTILINE), done.stdout


def test_probe_latency_meter_reads_the_live_and_the_rebuilt_model_both_ways(monkeypatch):
    from conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "scripts"))  # it imports bench_latency_target, as `python scripts/...` does
    done = run_main(script_main("probe_latency_meter"), ["--model", "resnet20", "--steps", "5", "--rounds", "1"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"step 5: \d+\.\d+x fewer MACs", done.stdout), done.stdout
    for label in ("live", "rebuilt"):
        assert re.search(rf"^round 0 {label} +meter( \d+\.\d+){{3}} \| check \d+\.\d+ \[", done.stdout, re.MULTILINE), \
            done.stdout
