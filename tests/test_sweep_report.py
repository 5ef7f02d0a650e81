"""A 2x2 sweep on digits, then prune-report; a failing sweep job is listed and does not stop the sweep."""

from __future__ import annotations

import pytest
from conftest import FAST, run_cli

SWEEP = ["model=resnet20", "schedule.pretrain.epochs=1", "eval.latency_repeats=2", *FAST]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    proc = run_cli(["-m", "method=l1,group_norm", "prune.speed_up=1.3,1.6", *SWEEP, f"out_root={root / 'outputs'}"],
                   cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


def test_sweep_then_report(sweep):
    root, proc = sweep
    assert proc.stdout.splitlines().count("pretrain") == 1  # one pretraining for the four jobs
    report = run_cli([str(root / "outputs" / "digits")], cwd=root, module="prune_runner.report_cli")
    assert report.returncode == 0, report.stderr
    table = (root / "outputs" / "digits" / "report.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| digits")]
    assert len(rows) == 4, table
    assert sum("| l1 |" in r for r in rows) == 2 and sum("| group_norm |" in r for r in rows) == 2
    png = (root / "outputs" / "digits" / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert "group_norm" in report.stdout


def test_failed_job_is_listed_and_the_sweep_goes_on(sweep):
    root, _ = sweep
    proc = run_cli(["-m", "method=l1", "prune.speed_up=60,1.3", *SWEEP, "prune.iterative_steps=5",
                    f"out_root={root / 'outputs'}"], cwd=root)
    assert proc.returncode == 1
    assert "1 sweep job(s) failed" in proc.stderr
    assert "model resnet20 with method l1 reached only" in proc.stderr and "60" in proc.stderr
    assert "prune.speed_up=1.3" in proc.stdout  # the job after the failed one ran
