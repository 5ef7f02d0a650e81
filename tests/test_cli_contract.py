"""The installed `prune-run` command as a user meets it, in subprocesses: it finds its configs from any
directory, exits 0 after a run, and on bad input exits 2 with exactly one line on stderr. Everything else
runs `prune-run` in the test process (conftest.run_cli), which skips ~9 s of imports per run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import FAST, error_lines, results_of, run_subprocess

PRUNE_RUN = Path(sys.executable).parent / "prune-run"  # the console script `make install` puts in the venv


@pytest.fixture(scope="module")
def prune_run() -> list[str]:
    assert PRUNE_RUN.exists(), f"{PRUNE_RUN} is missing: `make install` (pip install -e .) installs it"
    return [str(PRUNE_RUN)]


def test_installed_command_runs_from_another_directory(prune_run, tmp_path):
    """No conf/ next to the working directory: the configs come from the installed package."""
    assert not (tmp_path / "conf").exists()
    proc = run_subprocess(["model=resnet20", "method=l1", "prune.speed_up=1.2", "run_dir=run", "eval.latency=false",
                           "schedule.pretrain.epochs=1", *FAST], cwd=tmp_path, command=prune_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = results_of(tmp_path / "run")
    assert r["choices"]["method"] == "l1" and r["speed_up"] >= 1.2
    # l1 has no sparse training: a re-prune starts from the pretrained model, in the run dir as given (relative)
    assert "to prune this run's pretrained model (l1 has no sparse training) again" in proc.stdout
    assert proc.stdout.rstrip().endswith("resume_from=run/pretrain")


@pytest.mark.parametrize(("args", "expected"), [
    (["method=l3"], "unknown method 'l3'; choose one of: "),  # refused before Hydra composes anything
    (["prune.speed_up=0.8"], "prune.speed_up=0.8 is invalid"),  # refused by the run's own checks
])
def test_bad_input_exits_2_with_one_line(prune_run, tmp_path, args, expected):
    proc = run_subprocess(["model=resnet20", "method=l1", *FAST, *args], cwd=tmp_path, command=prune_run)
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("prune-run: error: ") and expected in lines[0], proc.stderr
    assert not list(tmp_path.rglob("*"))  # nothing written, no run dir made: checked before Hydra makes it
