"""What a run says: the closing re-prune hint (the stage it really starts from, a path that works from here), a
missed latency target cited from confirmed figures only, an MLflow warning never cut mid-word, a refused run that
leaves nothing on disk. In this process; the run that shows round_to=auto and the hint end to end is slow."""

from __future__ import annotations

import json
import shlex

import pytest
import requests
from conftest import FAST, results_of, run_cli
from test_latency_target import FakeMachine, sequence

from prune_runner import cli
from prune_runner.pruning.latency_target import MISSED, missed_line
from prune_runner.tracking.mlflow_run import MAX_ERROR_CHARS, error_text

SPARSE = {"pretrain": {"metrics": {}}, "sparse_train": {"metrics": {"acc": 0.9}}}
NO_SPARSE = {"pretrain": {"metrics": {}}, "sparse_train": {"metrics": {"acc": 0.9, "skipped": "no regularizer"}}}


def test_a_reprune_starts_from_sparse_train_only_where_the_method_sparse_trained(monkeypatch, tmp_path):
    assert cli.reprune_stage(SPARSE) == "sparse_train"
    assert cli.reprune_stage(NO_SPARSE) == "pretrain"
    assert cli.reprune_stage({"pretrain": {}}) == "pretrain"  # stages=[pretrain,prune,...]
    assert cli.reprune_stage({}) is None
    monkeypatch.chdir(tmp_path)
    argv = ["method=l1", f"run_dir={tmp_path / 'r'}", "prune.speed_up=2"]
    absolute = cli.reprune_command(argv, tmp_path / "r", 2.0, "pretrain", given=str(tmp_path / "r"))
    assert shlex.split(absolute)[-1] == f"resume_from={tmp_path / 'r' / 'pretrain'}"  # given absolute: stays so
    relative = cli.reprune_command(["method=l1"], tmp_path / "outputs" / "x", 2.0, "pretrain", given="outputs")
    assert shlex.split(relative)[-2:] == ["prune.speed_up=3", "resume_from=outputs/x/pretrain"]  # from here


def test_a_missed_latency_target_cites_no_unconfirmed_reading_above_it():
    """A clean 1.92x at the first read step is not confirmed (the next reading of that model is 1.20x), and no
    later model passes: the line cites the best clean reading below the 1.3x target and counts the other."""
    fake = FakeMachine(sequence([1.92, 1.20, *[1.25] * 40]), macs=lambda s: 1 + 0.1 * s)
    outcome = fake.decide(1.3, budget=8)
    assert outcome.decided == MISSED and outcome.final.ratio == 1.25
    text = missed_line(outcome.final, 1.3, "batch 1, cpu fp32", 8, 1.0, unconfirmed=1)
    assert "1.92" not in text and text.startswith("reached a measured latency speed-up of only 1.25x (batch 1, ")
    assert "; 1 clean reading(s) at or above the target were not confirmed by the next reading" in text
    only_above = missed_line(None, 1.3, "batch 1, cpu fp32", 8, 1.0, unconfirmed=2)
    assert only_above.startswith("no pruned model read clean below the 1.3x latency target") and "x (" not in only_above


def test_an_mlflow_warning_names_the_cause_and_is_never_cut_mid_word():
    with pytest.raises(requests.ConnectionError) as err:
        requests.get("http://127.0.0.1:9/health", timeout=5)  # nothing listens there
    assert error_text(err.value) == "ConnectionError: [Errno 111] Connection refused"
    long = error_text(RuntimeError("word " * 100))
    assert long.endswith("word ...") and len(long) <= len("RuntimeError: ") + MAX_ERROR_CHARS + 4


def test_a_refused_run_leaves_nothing_on_disk(tmp_path):
    done = run_cli(["prune.latency_batch=0", f"run_dir={tmp_path / 'run'}", "model=resnet20"], cwd=tmp_path)
    assert done.returncode == 2 and "prune.latency_batch=0 is invalid" in done.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


def test_a_refused_sweep_job_leaves_no_empty_run_dir(tmp_path):
    done = run_cli(["-m", "prune.latency_batch=0", "model=resnet20", f"out_root={tmp_path / 'o'}"], cwd=tmp_path)
    assert done.returncode == 1 and "prune.latency_batch=0 is invalid" in done.stderr
    assert not [p for p in (tmp_path / "o").rglob("*") if p.is_dir()]  # the folders Hydra made for the job: removed


@pytest.mark.slow  # one tiny run, ~20 s on 2 cores
def test_round_to_auto_is_said_once_and_recorded_and_the_hint_restarts_from_pretrain(tmp_path):
    run_dir = tmp_path / "l1"
    args = ["model=resnet20", "method=l1", "prune.speed_up=1.3", "prune.round_to=auto", "eval.latency=false",
            f"run_dir={run_dir}", *FAST]
    done = run_cli(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    said = [line for line in done.stdout.splitlines() if "round_to=auto is" in line]
    assert said == ["prune: round_to=auto is 8 on cpu fp32 (pruning/round_to.py): pruned layers keep a multiple of 8 "
                    "channels"]
    assert results_of(run_dir)["round_to"] == 8
    assert json.loads((run_dir / "prune" / "done.json").read_text())["metrics"]["round_to"] == 8
    hint = done.stdout.splitlines()[-2:]
    assert hint[0] == "to prune this run's pretrained model (l1 has no sparse training) again, at another speed-up:"
    assert hint[1].strip().endswith(f"resume_from={run_dir / 'pretrain'}")  # run_dir given absolute: absolute
