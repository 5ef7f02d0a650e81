"""A run that cannot lose work: kill-and-resume equals an uninterrupted run; a finished stage of one run
starts another (resume_from, as docs/how-to/resume.md writes it and as a run prints it). Sweeps reusing stages:
test_sweep_report.py.
Only the runs that are killed are subprocesses; the rest run in this process."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST, REPO, results_of, run_cli

# deterministic CPU runs with two epochs per training stage, so a kill can land inside a stage
ARGS = ["model=resnet20", "method=group_norm", "prune.speed_up=1.3", "deterministic=true", "eval.latency=false",
        "schedule.pretrain.epochs=2", "schedule.sparse_train.epochs=2", "schedule.finetune.epochs=2",
        "dataset.train_limit=640", *FAST]
COMPARED = ("base", "pruned", "final", "acc_delta", "speed_up", "params_ratio", "prune_steps")


def _kill_when(args, cwd: Path, marker: Path, timeout: float = 300) -> None:
    """Start prune-run, SIGKILL it as soon as `marker` exists (a stage's first epoch checkpoint)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the in-process runs (conftest): the same arithmetic
    proc = subprocess.Popen([sys.executable, "-m", "prune_runner.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("kill_in", [
    ("finetune",),  # resumes a stage whose model is rebuilt from the upstream pruning record
    pytest.param(("sparse_train", "finetune"), marks=pytest.mark.slow),  # two kills, two resumed stages
])
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, kill_in):
    straight = tmp_path / "straight"
    proc = run_cli([*ARGS, f"run_dir={straight}", f"out_root={tmp_path / 'out_a'}"], cwd=tmp_path)  # in process
    assert proc.returncode == 0, proc.stderr[-2000:]

    killed = tmp_path / "killed"
    args = [*ARGS, f"run_dir={killed}", f"out_root={tmp_path / 'out_b'}"]
    for stage in kill_in:  # SIGKILL once the stage's first epoch checkpoint exists, before it finishes
        _kill_when(args, tmp_path, killed / stage / "epoch_0000.json")
        assert not (killed / stage / "done.json").exists()
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pretrain: finished earlier, skipped" in proc.stdout
    assert "finetune: resuming at epoch 2/2" in proc.stdout

    a, b = results_of(straight), results_of(killed)
    assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}


def _docs_commands() -> tuple[list[str], list[str]]:
    """docs/how-to/resume.md's 'killed half-way?' command and its re-prune command with resume_from, as words."""
    text = (REPO / "docs/how-to/resume.md").read_text()
    first = re.search(r"^prune-run (.*?)\s+# killed half-way", text, re.MULTILINE).group(1)
    again = re.search(r"^(prune-run .*?)\s*\\\n\s+(resume_from=\S+)", text, re.MULTILINE)
    return shlex.split(first), shlex.split(again.group(1))[1:] + [again.group(2)]


def test_docs_resume_from_command_parses_as_written(tmp_path):
    """The derived run dir in resume_from holds '=' (and ',' with several overrides): taken literally."""
    first, again = _docs_commands()
    resume_from = again[-1].partition("=")[2]
    assert "=" in resume_from and first[0] == "method=group_norm"
    proc = run_cli([*again, "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"resume_from: {resume_from}" in proc.stdout


@pytest.mark.slow  # ~55 s on 2 cores; the resume_from parsing it relies on is tested above in seconds
def test_printed_reprune_command_starts_from_this_runs_stages(tmp_path):
    """A finished run prints the command that prunes its sparse_train output again; run verbatim (its
    resume_from, a run dir derived from several overrides, holds '=' and ','), it takes pretrain and
    sparse_train from the first run and prunes further."""
    args = ["model=resnet20", "method=group_norm", "prune.speed_up=1.2", "schedule.pretrain.epochs=1",
            "eval.latency=false", *FAST]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    command = proc.stdout.splitlines()[-1].strip()
    assert command.startswith("prune-run ") and "prune.speed_up=2.2" in command
    words = shlex.split(command)[1:]
    resume_from = words[-1].partition("=")[2]
    assert words[-1].startswith("resume_from=") and "," in resume_from and resume_from.endswith("/sparse_train")
    again = run_cli(words, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    (first,) = (tmp_path / "outputs").glob("digits/resnet20/group_norm/*prune.speed_up=1.2*/seed0")
    (second,) = (tmp_path / "outputs").glob("digits/resnet20/group_norm/*prune.speed_up=2.2*/seed0")
    assert resume_from.startswith("outputs/")  # relative to where the command ran, as a user writes it
    assert (tmp_path / resume_from).parent == first
    assert f"pretrain: from {first.relative_to(tmp_path) / 'pretrain'}" in again.stdout
    assert f"sparse_train: from {first.relative_to(tmp_path) / 'sparse_train'}" in again.stdout
    r1, r2 = results_of(first), results_of(second)
    assert r2["base"] == r1["base"] and r2["speed_up"] >= 2.2 > r1["speed_up"]
    assert r2["setup"]["resume_from"] == resume_from


@pytest.mark.slow
def test_docs_resume_from_commands_run_as_written(tmp_path):
    """The page's two commands, verbatim (schedule=demo: about a minute each on 2 CPU cores)."""
    first, again = _docs_commands()
    assert run_cli(first, cwd=tmp_path).returncode == 0
    proc = run_cli(again, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    second = tmp_path / "outputs/digits/resnet20/group_norm/prune.speed_up=3,schedule=demo/seed0"
    assert results_of(second)["speed_up"] >= 3 and results_of(second)["setup"]["resume_from"] == again[-1][12:]
