"""prune-report over a mixed folder: the console table at 120 columns (one line per row, whole headers, the
overrides that differ, a legend), the same run count on the console and in report.md, the allocation column,
and tradeoff.png's lines and axes."""

from __future__ import annotations

import json
import re
from io import StringIO
from pathlib import Path

import pytest
from conftest import run_main
from rich.console import Console
from test_report import write_run

from prune_runner import report_cli
from prune_runner.report import aggregate, scan_runs, write_report
from prune_runner.report.plots import tradeoff_figure
from prune_runner.report.summary import allocation_of
from prune_runner.report.table import differing_overrides, print_table

SHARED = "eval.latency_repeats=3,model.input_size=8,prune.bn_stats_batches=8,schedule=tiny"  # 60-odd characters


def _run(root: Path, rel: str, *, model="resnet20", method="group_norm", speed_up=2.0, seed=0, acc=0.9,
         extra="", latency=None, config=None) -> Path:
    run_dir = write_run(root, rel, method, speed_up, seed, acc)
    results = json.loads((run_dir / "results.json").read_text())
    results["choices"]["model"] = model
    results["overrides"] = ",".join(sorted(x for x in (f"prune.speed_up={speed_up:g}", SHARED, extra) if x))
    if latency:
        results["latency"] = {"device": "cpu", "dtype": "fp32", "batch_sizes": sorted(latency),
                              "speed_up": {str(bs): v for bs, v in latency.items()}, "noisy": {"64": True}}
    (run_dir / "results.json").write_text(json.dumps(results))
    if config is not None:
        (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    root = tmp_path / "mixed"
    _run(root, "a/s0", speed_up=1.5, latency={1: 1.3, 64: 1.4})
    _run(root, "a/s0_again", speed_up=1.5, latency={1: 1.3, 64: 1.4})  # a rerun of seed 0: not another seed
    _run(root, "a/s1", speed_up=1.5, seed=1, acc=0.92, latency={1: 1.35, 64: 1.5})
    _run(root, "b", speed_up=2.0, latency={1: 1.6})
    _run(root, "c", method="l1", speed_up=2.0, config={"prune": {"allocation": "global"}})
    _run(root, "d", method="l1", speed_up=3.0, config={"method": {"global_pruning": True}})  # before the option
    _run(root, "e", model="timm/resnet10t", method="l1", extra="method.reg=0.00443")
    _run(root, "f", model="timm/resnet10t", method="l1", extra="method.reg=0.000178")
    return root


def test_allocation_is_read_from_the_runs_config(tmp_path: Path):
    assert allocation_of(tmp_path / "missing.json") == "uniform"
    path = tmp_path / "config.json"
    for config, expected in (({"prune": {"allocation": "search"}}, "search"),
                             ({"prune": {"speed_up": 2}, "method": {"global_pruning": True}}, "global"),
                             ({"prune": {}, "method": {"global_pruning": False}}, "uniform")):
        path.write_text(json.dumps(config))
        assert allocation_of(path) == expected
    path.write_text("{trunc")
    assert allocation_of(path) == "uniform"


def test_console_table_fits_120_columns_one_line_per_row(mixed: Path):
    runs, incomplete = scan_runs(mixed)
    rows = aggregate(runs)
    assert len(rows) == 6 and {r["allocation"] for r in rows} == {"uniform", "global"}
    out = StringIO()
    print_table(rows, incomplete, Console(file=out, width=120))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 120
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("model"))
    heads = lines[header].split()
    assert heads == ["model", "method", "alloc", "overrides", "n", "final%", "Δpp", "target", "MACs", "lat@1",
                     "lat@64", "params"]  # whole words: no header broken
    body = lines[header + 2: header + 2 + len(rows)]  # below the header's rule: one line per row
    assert [line.split()[0] for line in body] == [r["model"] for r in rows]
    assert lines[header + 2 + len(rows)].startswith("8 finished run(s) in 6 row(s): 7 counted, 1 rerun(s)")
    two = next(line for line in body if "+1r" in line)  # seeds 0 and 1, and the rerun of seed 0
    assert re.search(r"group_norm\s+uniform\s+-\s+2\+1r\s+91\.00±1\.41\s+-4\.00±1\.41\s+1\.5x", two), two
    assert "1.45x!" in two  # the mean over the seeds at batch 64, one of them NOISY
    assert "reg=0.00443" in out.getvalue() and "schedule=tiny" not in "\n".join(body)  # shared: in the legend
    legend = " ".join(" ".join(lines[header + 2 + len(rows):]).split())  # the legend's lines wrap at 120
    assert f"shared by every row: {', '.join(SHARED.split(','))}" in legend
    assert "+Nr: N reruns of a seed already counted" in legend and "lat@N: measured latency speed-up at batch N " \
        "(cpu, fp32)" in legend and "alloc: prune.allocation" in legend
    assert "Pruning results: dataset digits" in lines[0]  # a column every row shares moves to the title


def test_console_and_report_md_count_the_same_runs(mixed: Path, tmp_path: Path):
    done = run_main(report_cli.main, [mixed, "--out", tmp_path / "out"])
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "out" / "report.md").read_text()
    counts = "8 finished run(s) in 6 row(s): 7 counted, 1 rerun(s) of a seed already counted"
    assert counts in text and counts in done.stdout
    assert f"{SHARED},prune.speed_up=1.5" in text  # report.md keeps the full overrides
    assert max(len(line) for line in done.stdout.splitlines()) <= 120  # not a terminal: 120 columns


def test_differing_overrides_split_lists_and_setup_parts():
    rows = [{"overrides": "a.x=[1,64],b=2; without sparse_train"}, {"overrides": "a.x=[1,64],b=3"}]
    assert differing_overrides(rows) == (["b", "without"], ["a.x=[1,64]"])


def test_tradeoff_lines_join_runs_that_differ_in_speed_up_alone(tmp_path: Path):
    root = tmp_path / "runs"
    _run(root, "s15", speed_up=1.5, acc=0.99, latency={1: 1.3, 64: 1.4})
    _run(root, "s2", speed_up=2.0, acc=0.97, latency={1: 1.6, 64: 1.8})
    _run(root, "r1", speed_up=2.0, extra="method.reg=0.001")  # another reg at the same speed-up: its own line
    _run(root, "r2", speed_up=2.0, extra="method.reg=0.01")
    rows = aggregate(scan_runs(root)[0])
    fig = tradeoff_figure(rows, [])
    macs, bs1, bs64 = [ax for ax in fig.axes if ax.get_visible()]
    assert [len(c.lines[0].get_xdata()) for c in macs.containers] == [2, 1, 1]  # one line of two, two points
    assert bs1.get_title() == "digits/resnet20: latency bs 1 (cpu, fp32)"
    assert bs64.get_title() == "digits/resnet20: latency bs 64 (cpu, fp32)"
    low, high = macs.get_ylim()
    assert high <= 100.0 and high > 99.0 > 95.0 > low  # accuracy up to 99%, the base line at 95% inside
    assert write_report(root)["plot"].exists()


def test_runs_that_withheld_a_holdout_get_its_accuracy_column_and_others_do_not(mixed: Path, tmp_path: Path):
    root = tmp_path / "trials"
    for rel, held in (("t0", 0.81), ("t1", 0.87)):
        run_dir = _run(root, rel, speed_up=2.0 if rel == "t0" else 3.0)
        results = json.loads((run_dir / "results.json").read_text())
        results["holdout"] = {"acc": held, "images": 13, "fraction": 0.1, "train_images": 115}
        (run_dir / "results.json").write_text(json.dumps(results))
    rows = aggregate(scan_runs(root)[0])
    assert sorted(r["holdout_acc"].mean for r in rows) == pytest.approx([81.0, 87.0])
    md = write_report(root, tmp_path / "out")["report"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| dataset"))
    assert "| final acc % | holdout acc % |" in header and "| 81.00 |" in md and "| 87.00 |" in md
    out = StringIO()
    print_table(rows, console=Console(file=out, width=120))
    assert "hold%" in out.getvalue() and "87.00" in out.getvalue()
    plain = aggregate(scan_runs(mixed)[0])  # no run withheld one: the columns stay as they were
    out = StringIO()
    print_table(plain, console=Console(file=out, width=120))
    assert "hold%" not in out.getvalue() and all(r["holdout_acc"] is None for r in plain)
