"""Sweeps in this process: a 2x2 sweep then prune-report; a failing sweep job is listed and does not stop the
sweep; a sweep over torchvision model names (which have no YAML of their own)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from conftest import FAST, results_of, run_cli

from prune_runner import report_cli

SWEEP = ["model=resnet20", "schedule.pretrain.epochs=1", "eval.latency_repeats=2", *FAST]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    proc = run_cli(["-m", "method=l1,group_norm", "prune.speed_up=1.3,1.6", *SWEEP, f"out_root={root / 'outputs'}"],
                   cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


def test_sweep_reuses_upstream_stages(sweep):
    root, proc = sweep
    lines = proc.stdout.splitlines()
    assert lines.count("pretrain") == 1  # one pretraining for the four jobs
    assert lines.count("sparse_train") == 1  # one sparse training for group_norm's two speed-ups (l1 has none)
    assert lines.count("prune") == 4
    assert sum(line.startswith("pretrain: reused from") for line in lines) == 3
    assert sum(line.startswith("sparse_train: reused from") for line in lines) == 1
    runs = [r for r in (root / "outputs").glob("digits/resnet20/*/*/seed0/results.json")
            if "prune.iterative_steps=25" in str(r)]  # this sweep's runs, not the failing sweep's below
    assert sorted(results_of(r.parent)["target_speed_up"] for r in runs) == [1.3, 1.3, 1.6, 1.6]


def test_sweep_then_report(sweep):
    root, proc = sweep
    assert "to prune this run's" not in proc.stdout  # the re-prune hint is for single runs
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert report_cli.main([str(root / "outputs" / "digits")]) == 0
    table = (root / "outputs" / "digits" / "report.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| digits")]
    assert len(rows) == 4, table
    assert sum("| l1 |" in r for r in rows) == 2 and sum("| group_norm |" in r for r in rows) == 2
    png = (root / "outputs" / "digits" / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert "group_norm" in out.getvalue() and "pruned acc %" in table and "target speed-up" in table


def test_failed_job_is_listed_and_the_sweep_goes_on(sweep):
    root, _ = sweep
    proc = run_cli(["-m", "method=l1", "prune.speed_up=60,1.3", *SWEEP, "prune.iterative_steps=5",
                    f"out_root={root / 'outputs'}"], cwd=root)
    assert proc.returncode == 1
    assert "1 sweep job(s) failed" in proc.stderr
    assert "model resnet20 with method l1 reached only" in proc.stderr and "60" in proc.stderr
    assert "prune.speed_up=1.3" in proc.stdout  # the job after the failed one ran


def test_sweep_over_torchvision_model_names(tmp_path):
    """Names with no YAML of their own, mixed with one that has: each job builds its model, and its run dir
    is named after it (no model.name=... part)."""
    out = tmp_path / "outputs"
    proc = run_cli(["-m", "model=efficientnet_b0,squeezenet1_1,resnet20", "method=l1", "stages=[pretrain]",
                    "schedule.pretrain.epochs=0", "model.input_size=32", "device=cpu", "progress=false",
                    f"out_root={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for model in ("efficientnet_b0", "squeezenet1_1", "resnet20"):
        (run_dir,) = (out / "digits" / model / "l1").glob("*/seed0")
        assert "model.name" not in str(run_dir)
        assert json.loads((run_dir / "config.json").read_text())["model"]["name"] == model
        assert (run_dir / "pretrain" / "done.json").exists()


@pytest.mark.slow  # ~45 s on 2 cores: four real runs
def test_seeds_of_one_setup_share_a_row_and_a_base_checkpoint_run_gets_its_own(tmp_path):
    out = tmp_path / "outputs"
    common = ["method=l1", "model=resnet20", "prune.speed_up=1.2", "schedule.pretrain.epochs=1",
              "schedule.finetune.epochs=0", "eval.latency=false", *FAST, f"out_root={out}"]
    assert run_cli(["-m", "seed=0,1", *common], cwd=tmp_path).returncode == 0
    (seed0,) = out.glob("digits/resnet20/l1/*/seed0")
    proc = run_cli([*common, f"base_checkpoint={seed0 / 'pretrain' / 'checkpoint.pt'}", f"run_dir={tmp_path / 'b'}"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from prune_runner.report import aggregate, scan_runs

    rows = aggregate(scan_runs(tmp_path)[0])
    assert sorted((r["n"], "base_checkpoint=" in r["overrides"]) for r in rows) == [(1, True), (2, False)]
