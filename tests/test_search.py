"""Hyperparameter search with prune-runner's Optuna sweeper (`-m hydra/sweeper=optuna`, the `search` extra): the
objectives, the plugin Hydra finds, the study in its journal (resume after a kill, workers sharing it, no repeated
parameter set), a failed trial with its reason, and a multi-objective search whose front study.json lists and
prune-report marks. The searches run in this process (run_cli) on digits with the tiny schedule; the two that need
processes (a real SIGKILL, two workers at once) are slow."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import tomllib
from conftest import FAST, REPO, doc_commands, error_lines, results_of, run_cli
from inprocess import tiny_config
from optuna.distributions import FloatDistribution

from prune_runner import report_cli
from prune_runner.cli import preflight
from prune_runner.data import build_data
from prune_runner.data.tensor_data import TensorData
from prune_runner.errors import UnknownChoiceError, UserError
from prune_runner.names import value_text
from prune_runner.search import (
    JOURNAL,
    STALE_S,
    TRIAL_HOLDOUT,
    TrialFailed,
    _stale,
    ask,
    ask_lock,
    counted,
    holdout_override,
    list_objectives,
    objective_value,
    open_storage,
    run_objective,
    tell,
)
from prune_runner.validate import validate

optuna.logging.set_verbosity(optuna.logging.WARNING)

# the test accuracy (final) differs from the holdout's: the accuracy objectives must read the holdout
RESULTS = {"final": {"acc": 0.8}, "holdout": {"acc": 0.75}, "speed_up": 2.1, "target_speed_up": 2.0,
           "latency": {"speed_up": {"1": 1.4, "8": 1.7}}}
# objective -> (value for RESULTS, value when the speed-up reached is below the floor of 2.5)
EXPECTED = {"accuracy": (0.75, 0.75), "accuracy_at_speed_up": (0.75, 0.75 - 1.0), "speed_up": (2.1, 2.1),
            "latency_speed_up": (1.7, 1.7)}
SPACE = "method.reg=tag(log, interval(1e-5, 1e-2))"
# the tiny digits schedule with one pretraining epoch and no latency timing (fewer overrides: they name the run
# dirs, at most 255 characters)
BASE = ["model=resnet20", "method=group_norm", "dataset.train_limit=128", "schedule.pretrain.epochs=1",
        "eval.latency=false", *[a for a in FAST if not a.startswith("eval.")]]


def load(out: Path) -> optuna.Study:
    summary = json.loads((out / "study.json").read_text())
    return optuna.load_study(study_name=summary["study_name"], storage=open_storage(None, out))


def dominated(a: dict, b: dict) -> bool:
    """a is dominated by b: b is at least as good in every objective and better in one (all maximized)."""
    return all(b[k] >= a[k] for k in a) and any(b[k] > a[k] for k in a)


@pytest.mark.parametrize("name", list_objectives())
def test_every_objective(name):
    assert objective_value(name, RESULTS) == pytest.approx(EXPECTED[name][0])
    assert objective_value(name, RESULTS, min_speed_up=2.5) == pytest.approx(EXPECTED[name][1])


def test_an_accuracy_objective_never_falls_back_to_the_test_split(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({k: v for k, v in RESULTS.items() if k != "holdout"}))
    for name in ("accuracy", "accuracy_at_speed_up"):
        failed = run_objective(name, tmp_path)
        assert isinstance(failed, TrialFailed) and failed.reason.startswith(
            "the accuracy objectives read the accuracy on a holdout withheld from training; this run withheld none")
    assert run_objective("speed_up", tmp_path) == 2.1


def test_a_trial_of_an_accuracy_objective_withholds_the_holdout():
    assert holdout_override(["accuracy"], {}) == f"dataset.holdout={TRIAL_HOLDOUT}"
    assert holdout_override(["speed_up", "accuracy_at_speed_up"], {"method.reg": 0.1}) == "dataset.holdout=0.1"
    assert holdout_override(["accuracy"], {"dataset.holdout": 0.2}) is None  # the command's own fraction
    assert holdout_override(["speed_up", "latency_speed_up"], {}) is None  # nothing reads accuracy
    with pytest.raises(UserError, match=r"^search.objective accuracy is scored on a holdout withheld from each "
                                        r"trial's training; dataset.holdout=null leaves none"):
        holdout_override(["accuracy"], {"dataset.holdout": None})


def test_a_search_on_accuracy_that_withholds_nothing_is_refused_in_one_line(tmp_path):
    done = run_cli(["-m", "hydra/sweeper=optuna", SPACE, *BASE, "dataset.holdout=null", f"out_root={tmp_path}"],
                   cwd=tmp_path)
    assert done.returncode == 2 and error_lines(done.stderr) == [
        "prune-run: error: search.objective accuracy is scored on a holdout withheld from each trial's training; "
        f"dataset.holdout=null leaves none: give a fraction in (0, 1) or leave it out ({TRIAL_HOLDOUT})"]
    assert not (tmp_path / "digits").exists()  # no trial ran


@pytest.mark.parametrize("in_memory", [True, False])
def test_withheld_images_stay_out_of_every_training_batch(in_memory):
    """dataset.holdout on digits (128 training images): 13 withheld, the same 13 whatever the path; training,
    calibration and train-subset batches come from the other 115 only; the fingerprint (the stage hashes) changes."""
    def images(batches):
        return {tuple(x.flatten().tolist()) for xb, _ in batches for x in xb}

    whole = build_data("digits", root="data", input_size=8, device="cpu", train_limit=128, in_memory=in_memory,
                       augment=False, workers=0)
    data = build_data("digits", root="data", input_size=8, device="cpu", train_limit=128, in_memory=in_memory,
                      augment=False, workers=0, holdout=0.1)
    held = images(whole.train_subset_batches(whole.holdout_indices(0.1), 64))
    assert (data.num_train, data.num_withheld, whole.num_withheld) == (115, 13, 0)
    assert images(data.withheld_batches(5)) == held and len(held) == 13  # 13 distinct digits
    trained = images(data.train_batches(5, epoch=0, seed=3))
    assert len(trained) == 115 and not trained & held  # 23 full batches of 5: each kept image once
    assert not images(data.calib_batches(16, 10, seed=1)) & held
    assert data.fingerprint == f"{whole.fingerprint}+holdout=0.1" and not list(whole.withheld_batches(5))
    with pytest.raises(UserError, match=r"^dataset.holdout=1.0 is invalid; it is a fraction of the training split"):
        build_data("digits", root="data", input_size=8, device="cpu", holdout=1.0)


@pytest.mark.parametrize("objective, message", [
    ("acuracy", r"^unknown search.objective 'acuracy'; choose one of: accuracy, "),
    (["accuracy", "sped_up"], r"^unknown search.objective 'sped_up'; choose one of: accuracy, "),
    (["accuracy", "accuracy"], r"^search.objective=\['accuracy', 'accuracy'\] names an objective twice"),
    ([], r"^search.objective=\[\] is invalid; give one name or a list of names of: accuracy, "),
])
def test_a_bad_objective_is_one_line_before_the_run(tmp_path, objective, message):
    cfg = tiny_config(tmp_path, "resnet20", "l1")
    cfg.search.objective = objective
    with pytest.raises((UnknownChoiceError, UserError), match=message):
        validate(cfg)


def test_a_list_of_objectives_passes_the_checks(tmp_path):
    cfg = tiny_config(tmp_path, "resnet20", "l1")
    cfg.search.objective = ["accuracy", "speed_up"]
    validate(cfg)
    words = ["-m", "hydra/sweeper=optuna", "search.objective=[accuracy,speed_up]", SPACE]
    assert preflight(words) == words


def test_the_search_extra_missing_is_one_line(monkeypatch):
    monkeypatch.setattr("prune_runner.cli_search.optuna_installed", lambda: False)
    with pytest.raises(UserError, match=r"^hydra/sweeper=optuna needs the optional dependency: "
                                        r"pip install 'prune-runner\[search\]'$"):
        preflight(["-m", "hydra/sweeper=optuna", SPACE])


def test_hydra_finds_the_plugin_in_the_hydra_plugins_namespace():
    """The wheel ships hydra_plugins/prune_runner_optuna; Hydra's scan finds the sweeper there, and skips
    _search.py (Optuna is imported only when a search starts)."""
    from hydra.core.plugins import Plugins

    assert not (REPO / "hydra_plugins" / "__init__.py").exists()  # a namespace package, shared with other plugins
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert "hydra_plugins.prune_runner_optuna" in packages
    namespace = types.ModuleType("hydra_plugins")
    namespace.__path__ = [str(REPO / "hydra_plugins")]
    found, stats = Plugins._scan_all_plugins([namespace])
    names = [f"{c.__module__}.{c.__name__}" for c in found]
    assert names == ["hydra_plugins.prune_runner_optuna.sweeper.OptunaSweeper"]
    assert "hydra_plugins.prune_runner_optuna._search" not in stats.modules_import_time


def test_the_sweeper_config_maximizes_with_a_seeded_tpe_sampler():
    from hydra import compose, initialize_config_module

    from prune_runner.cli_search import register_optuna_sweeper

    register_optuna_sweeper()
    with initialize_config_module("prune_runner.conf", version_base="1.3"):
        cfg = compose("config", overrides=["hydra/sweeper=optuna"], return_hydra_config=True)
        nsga = compose("config", overrides=["hydra/sweeper=optuna", "hydra/sweeper/sampler=nsgaii"],
                       return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.prune_runner_optuna.sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and sweeper.storage is None and sweeper.study_name is None
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0
    assert nsga.hydra.sweeper.sampler._target_ == "optuna.samplers.NSGAIISampler"
    assert cfg.hydra.sweep.dir == cfg.out_root  # trials land where any sweep's runs land; so does the journal


def test_the_search_space_grammar():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hydra_plugins.prune_runner_optuna._search import distribution

    words = ["a=tag(log, interval(1e-5, 1e-2))", "b=interval(1.5, 3)", "c=choice(l1, group_norm)", "d=1.3,2",
             "e=range(1, 7, 2)", "f=range(0.5, 2, 0.5)"]
    got = [distribution(o) for o in OverridesParser.create().parse_overrides(words)]
    assert got == [FloatDistribution(1e-5, 1e-2, log=True), FloatDistribution(1.5, 3.0),
                   CategoricalDistribution(["l1", "group_norm"]), CategoricalDistribution([1.3, 2]),
                   IntDistribution(1, 5, step=2), FloatDistribution(0.5, 1.5, step=0.5)]


def test_the_study_name_is_the_search_not_where_it_runs():
    from optuna.distributions import FloatDistribution

    from hydra_plugins.prune_runner_optuna._search import derived_study_name

    space = {"method.reg": FloatDistribution(1e-5, 1e-2, log=True)}
    name = derived_study_name(["accuracy"], space, ["model=resnet20", "out_root=/a"])
    assert name.startswith("accuracy:method.reg:")
    assert derived_study_name(["accuracy"], space, ["out_root=/b", "model=resnet20"]) == name
    assert derived_study_name(["accuracy"], space, ["model=resnet32"]) != name
    assert derived_study_name(["accuracy", "speed_up"], space, ["model=resnet20"]) != name


def test_two_workers_asking_at_once_never_repeat_nor_exceed_n_trials(tmp_path):
    """Two storage objects on one journal (two workers): the proposals interleave, each seeded by its trial
    number, so the same seed gives no twin; a categorical space runs out instead of repeating."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.samplers import TPESampler

    workers = [optuna.create_study(study_name="s", storage=open_storage(None, tmp_path), load_if_exists=True,
                                   direction="maximize") for _ in range(2)]
    space = {"method.reg": FloatDistribution(1e-5, 1e-2, log=True)}
    asked = []
    for _ in range(4):
        with ask_lock(None, tmp_path):
            pair = [ask(study, space, 6, lambda n: TPESampler(seed=n)) for study in workers]  # both RUNNING
        for study, trial in zip(workers, pair):
            if trial is not None:
                assert tell(study, trial, 0.5, 1, None) is None
        asked += pair
    assert asked[6:] == [None, None]
    trials = workers[1].get_trials()
    assert len(trials) == 6 and len({t.params["method.reg"] for t in trials}) == 6

    study = optuna.create_study(study_name="c", storage=open_storage(None, tmp_path), direction="maximize")
    space = {"method": CategoricalDistribution(["l1", "l2", "group_norm"])}
    for _ in range(3):
        tell(study, ask(study, space, 4, lambda n: TPESampler(seed=n)), 0.5, 1, None)
    assert sorted(t.params["method"] for t in counted(study.get_trials())) == ["group_norm", "l1", "l2"]
    with pytest.raises(UserError, match=r"^the search space has no new parameter set left: 50 proposals in a row "):
        ask(study, space, 4, lambda n: TPESampler(seed=n))


def test_a_running_trial_is_stale_when_its_worker_is_gone():
    dead = subprocess.Popen(["true"])
    dead.wait()
    here, now = socket.gethostname(), time.time()
    trial = lambda worker, beat=None: types.SimpleNamespace(  # noqa: E731
        user_attrs={"worker": worker, **({"heartbeat": beat} if beat else {})}, datetime_start=datetime.now())
    assert _stale(trial(f"{here}:{dead.pid}"), now)
    assert not _stale(trial(f"{here}:{os.getppid()}"), now)  # alive
    assert not _stale(trial("node7:123", now - 60), now)  # another machine, marked a minute ago
    assert _stale(trial("node7:123", now - STALE_S - 1), now)


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    """A 4-trial multi-objective search over method.reg and prune.speed_up, accuracy and speed-up maximized;
    the size of the training split each training epoch drew from, recorded."""
    root = tmp_path_factory.mktemp("front")
    args = ["-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=nsgaii", "hydra.sweeper.n_trials=4",
            "search.objective=[accuracy,speed_up]", "method.reg=tag(log, interval(1e-4, 1e-1))",
            "prune.speed_up=interval(1.2, 2.0)", *BASE, f"out_root={root / 'outputs'}"]
    drawn = []
    epoch = TensorData.train_batches

    def counted_epoch(self, batch_size, epoch_index, seed):
        drawn.append(self.num_train)
        return epoch(self, batch_size, epoch_index, seed)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TensorData, "train_batches", counted_epoch)
        done = run_cli(args, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "outputs", done, drawn


def test_a_multi_objective_search_writes_its_pareto_front(front):
    out, done, _ = front
    lines = done.stdout.splitlines()
    assert lines.count("pretrain") == 1  # computed by the first trial; the others reuse it (the stage cache)
    summary = json.loads((out / "study.json").read_text())
    assert summary["objectives"] == ["accuracy", "speed_up"] and summary["searched"] == ["method.reg",
                                                                                         "prune.speed_up"]
    trials = {t["number"]: t for t in summary["trials"]}
    assert len(trials) == 4 and all(t["state"] == "COMPLETE" for t in trials.values())
    for t in trials.values():  # each trial's values are its run's
        results = results_of(t["run_dir"])
        assert t["values"] == {"accuracy": results["holdout"]["acc"], "speed_up": results["speed_up"]}
    values = [t["values"] for t in trials.values()]
    on_front = [trials[n]["values"] for n in summary["front"]]
    off_front = [t["values"] for n, t in trials.items() if n not in summary["front"]]
    assert on_front and not any(dominated(a, b) for a in on_front for b in values)
    assert all(any(dominated(a, b) for b in on_front) for a in off_front)
    assert "Pareto front of 4 finished trials (accuracy, speed_up):" in done.stdout
    assert len(load(out).best_trials) == len(summary["front"])  # the study in the journal agrees
    png = (out / "study.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_a_search_selects_on_a_holdout_its_trials_never_trained_on(front):
    """dataset.train_limit=128: each trial withholds 13 images (dataset.holdout=0.1, set by the sweeper) and trains
    on 115; accuracy is their top-1, the test accuracy is shown beside it and selects nothing."""
    out, done, drawn = front
    assert set(drawn) == {115} and len(drawn) >= 3  # every epoch of every training stage drew from 115 images
    summary = json.loads((out / "study.json").read_text())
    assert summary["selected_on"] == {"accuracy": "holdout", "speed_up": "macs"}
    pairs = []
    for t in summary["trials"]:
        results = results_of(t["run_dir"])
        assert "dataset.holdout=0.1" in t["run_dir"]  # not a plain run's directory, nor its stages (hashes):
        for stage in ("pretrain", "finetune"):
            done_record = json.loads((Path(t["run_dir"]) / stage / "done.json").read_text())
            assert done_record["config"]["input.dataset"].endswith("+holdout=0.1")
        assert {k: results["holdout"][k] for k in ("images", "train_images", "fraction")} == {
            "images": 13, "train_images": 115, "fraction": 0.1}
        assert t["test_acc"] == results["final"]["acc"]
        pairs.append((t["values"]["accuracy"], t["test_acc"]))
    assert any(holdout != test for holdout, test in pairs), pairs  # 13 images against 360: they differ
    for number in summary["front"]:
        t = summary["trials"][number]
        assert (f"trial {number}: accuracy {t['values']['accuracy']:.4f} on the holdout, speed_up "
                f"{t['values']['speed_up']:.4f}, test accuracy {t['test_acc']:.4f} (") in done.stdout


def test_prune_report_marks_the_front(front):
    out, _, _ = front
    with contextlib.redirect_stdout(io.StringIO()):
        assert report_cli.main([str(out)]) == 0
    rows = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| digits")]
    summary = json.loads((out / "study.json").read_text())
    assert len(rows) == 4 and sum("[front]" in row for row in rows) == len(summary["front"])
    for n in summary["front"]:
        reg = value_text(summary["trials"][n]["params"]["method.reg"])  # as the run directory spells it
        assert any(f"method.reg={reg}," in row and "[front]" in row for row in rows)


def test_a_rerun_after_a_kill_runs_the_killed_trial_again_and_no_more(tmp_path):
    """A 1-trial search, then a trial left RUNNING by a worker that is gone (as a SIGKILL leaves it), then the
    same command with n_trials=2: the killed trial is marked failed, its parameters run as trial 2, and the
    study ends with 2 counted trials."""
    args = ["-m", "hydra/sweeper=optuna", SPACE, *BASE, "prune.speed_up=1.3", f"out_root={tmp_path / 'outputs'}"]
    first = run_cli([*args, "hydra.sweeper.n_trials=1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.search(r"best of 1 finished trials: trial 0, accuracy 0\.\d{4} on the holdout, test accuracy "
                     r"0\.\d{4} \(method\.reg=", first.stdout)
    out = tmp_path / "outputs"
    study = load(out)
    dead = subprocess.Popen(["true"])
    dead.wait()
    study.enqueue_trial({"method.reg": 3e-3})
    killed = study.ask({"method.reg": FloatDistribution(1e-5, 1e-2, log=True)})
    killed.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    again = run_cli([*args, "hydra.sweeper.n_trials=2"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trial(s) 1 of study" in again.stdout and "1 of 2 trials finished already" in again.stdout
    trials = load(out).get_trials()
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE")]
    assert trials[2].params == {"method.reg": 3e-3} and trials[2].user_attrs["retry_of"] == 1
    assert again.stdout.splitlines().count("pretrain") == 0  # pretrained by the first process, reused
    summary = json.loads((out / "study.json").read_text())
    assert summary["trials"][1]["fail_reason"].startswith(f"its worker ({socket.gethostname()}:{dead.pid}) stopped "
                                                          "while it ran; asked again as trial 2")
    again = run_cli([*args, "hydra.sweeper.n_trials=2"], cwd=tmp_path)  # nothing left to run
    assert "2 of 2 trials finished already" in again.stdout and "Launching" not in again.stdout
    assert len(load(out).get_trials()) == 3


def test_a_failed_run_is_a_failed_trial_with_its_reason_and_the_search_goes_on(tmp_path):
    args = ["-m", "hydra/sweeper=optuna", "prune.speed_up=choice(0.5, 1.3)", "hydra.sweeper.n_trials=2", *BASE,
            f"out_root={tmp_path / 'outputs'}"]
    done = run_cli(args, cwd=tmp_path)
    assert done.returncode == 1  # as any sweep with a failed job: listed at the end
    summary = json.loads((tmp_path / "outputs" / "study.json").read_text())
    by_speed_up = {t["params"]["prune.speed_up"]: t for t in summary["trials"] if t["counted"]}  # not a repeat
    assert sorted(by_speed_up) == [0.5, 1.3]
    failed, ok = by_speed_up[0.5], by_speed_up[1.3]
    assert failed["state"] == "FAIL" and failed["fail_reason"].startswith("prune.speed_up=0.5 is invalid;")
    assert "\n" not in failed["fail_reason"]
    assert ok["state"] == "COMPLETE" and summary["best"]["number"] == ok["number"]
    assert f"trial {failed['number']} (prune.speed_up=0.5) failed: prune.speed_up=0.5 is invalid;" in done.stdout
    stored = load(tmp_path / "outputs").trials[failed["number"]]
    assert stored.state.name == "FAIL" and stored.user_attrs["fail_reason"] == failed["fail_reason"]


def test_the_docs_commands_pass_the_checks():
    commands = doc_commands("docs/how-to/search.md")
    assert len(commands) >= 4
    for words in commands:
        preflight(words)  # keys, values and search spaces checked; an error raises
    with pytest.raises(UserError, match=r"^unknown option 'method.rgl'"):  # the search space's key is checked
        preflight(["-m", "hydra/sweeper=optuna", "method.rgl=tag(log, interval(1e-5, 1e-2))"])


# ---- processes: a real SIGKILL, two workers at once ---------------------------------------------------------


def _prune_run(args, cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "prune_runner.cli", *args], cwd=cwd, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def _six_trial_args(out: Path) -> list:
    return ["-m", "hydra/sweeper=optuna", SPACE, "hydra.sweeper.n_trials=6", *BASE, "prune.speed_up=1.3",
            f"out_root={out}"]


@pytest.mark.slow
def test_sigkill_after_three_trials_then_the_same_command_runs_the_missing_ones(tmp_path):
    out = tmp_path / "outputs"
    args = _six_trial_args(out)
    first = _prune_run(args, tmp_path, tmp_path / "first.log")
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        time.sleep(0.5)
        if (out / JOURNAL).is_file():
            names = optuna.get_all_study_names(open_storage(None, out))
            trials = optuna.load_study(study_name=names[0], storage=open_storage(None, out)).trials if names else []
            if sum(t.state.name == "COMPLETE" for t in trials) >= 3:
                break
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = subprocess.run([sys.executable, "-m", "prune_runner.cli", *args], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert second.returncode == 0, second.stderr[-3000:]
    trials = load(out).get_trials()
    live = counted(trials)
    assert len(live) == 6 and all(t.state.name == "COMPLETE" for t in live)
    assert len({t.params["method.reg"] for t in live}) == 6
    logs = (tmp_path / "first.log").read_text().splitlines() + second.stdout.splitlines()
    assert logs.count("pretrain") == 1  # over both processes


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path):
    out = tmp_path / "outputs"
    args = _six_trial_args(out)
    workers = [_prune_run(args, tmp_path, tmp_path / f"worker{i}.log") for i in range(2)]
    assert [w.wait(timeout=600) for w in workers] == [0, 0]
    trials = load(out).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    assert len({t.params["method.reg"] for t in trials}) == 6
    by_worker = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t.number)
    assert len(by_worker) == 2, by_worker  # both took part
