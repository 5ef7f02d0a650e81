"""Hyperparameter search: the objectives a run returns, and a 4-trial search with Hydra's Optuna sweeper
(`hydra/sweeper=optuna`, the `search` extra) on digits that pretrains once and writes the best trial."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys

import pytest
from conftest import FAST, readme_commands, results_of, run_cli
from inprocess import tiny_config

from prune_runner import report_cli
from prune_runner.cli import preflight
from prune_runner.errors import UnknownChoiceError, UserError
from prune_runner.search import list_objectives, objective_value
from prune_runner.validate import validate

# Optuna 2.10 (the plugin's pin) imports its database models with SQLAlchemy 2's deprecated spelling
pytestmark = pytest.mark.filterwarnings("ignore:The ``declarative_base\\(\\)`` function is now available")
HAS_OPTUNA = importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
needs_optuna = pytest.mark.skipif(not HAS_OPTUNA, reason="the search extra (hydra-optuna-sweeper) is not installed")

RESULTS = {"final": {"acc": 0.8}, "speed_up": 2.1, "target_speed_up": 2.0}
# objective -> (value for RESULTS, value when the speed-up reached is below the floor of 2.5)
EXPECTED = {"accuracy": (0.8, 0.8), "accuracy_at_speed_up": (0.8, 0.8 - 1.0), "speed_up": (2.1, 2.1)}


@pytest.mark.parametrize("name", list_objectives())
def test_every_objective(name):
    assert objective_value(name, RESULTS) == pytest.approx(EXPECTED[name][0])
    assert objective_value(name, RESULTS, min_speed_up=2.5) == pytest.approx(EXPECTED[name][1])


def test_an_unknown_objective_is_one_line_before_the_run(tmp_path):
    cfg = tiny_config(tmp_path, "resnet20", "l1")
    cfg.search.objective = "acuracy"
    with pytest.raises(UnknownChoiceError, match=r"unknown search.objective 'acuracy'; choose one of: accuracy, "):
        validate(cfg)


def test_the_search_extra_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_optuna_sweeper.config", None)  # import raises
    with pytest.raises(UserError, match=r"^hydra/sweeper=optuna needs the optional dependency: "
                                        r"pip install 'prune-runner\[search\]'$"):
        preflight(["-m", "hydra/sweeper=optuna", "method.reg=tag(log, interval(1e-5, 1e-2))"])


@needs_optuna
def test_the_preset_maximizes_with_a_seeded_sampler_and_the_study_callback():
    from hydra import compose, initialize_config_module

    from prune_runner.cli_search import store_optuna_preset

    store_optuna_preset()
    with initialize_config_module("prune_runner.conf", version_base="1.3"):
        cfg = compose("config", overrides=["hydra/sweeper=optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0
    assert cfg.hydra.callbacks.study._target_ == "prune_runner.cli_search.StudyCallback"
    assert cfg.hydra.sweep.dir == cfg.out_root  # trials land where any sweep's runs land


@needs_optuna
def test_the_readme_command_passes_the_checks():
    (words,) = readme_commands("Hyperparameter search with Optuna")
    assert words == ["-m", "hydra/sweeper=optuna", "method.reg=tag(log, interval(1e-5, 1e-2))",
                     "hydra.sweeper.n_trials=20"]
    assert preflight(words) == words
    with pytest.raises(UserError, match=r"^unknown option 'method.rgl'"):  # the search space's key is checked
        preflight(["-m", "hydra/sweeper=optuna", "method.rgl=tag(log, interval(1e-5, 1e-2))"])


def test_printing_the_jobs_of_a_search_is_one_line(tmp_path):
    proc = run_cli(["-m", "method.reg=tag(log, interval(1e-5, 1e-2))", "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("prune-run: error: method.reg=tag(log, interval(1e-5, 1e-2)) is a search space: a "
                                   "search picks its trials as it runs, so they cannot be listed; for one trial's "
                                   "config give a value, without -m: method.reg=1e-05")


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    args = ["-m", "hydra/sweeper=optuna", "method.reg=tag(log, interval(1e-5, 1e-2))", "hydra.sweeper.n_trials=4",
            "model=resnet20", "method=group_norm", "prune.speed_up=1.3", "dataset.train_limit=128",
            "schedule.pretrain.epochs=1", "eval.latency=false", *[a for a in FAST if not a.startswith("eval.")],
            f"out_root={root / 'outputs'}"]  # (fewer overrides: they name the run dirs, at most 255 characters)
    proc = run_cli(args, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "outputs", proc, args


@needs_optuna
def test_a_search_pretrains_once_and_writes_the_best_trial(search):
    out, proc, _ = search
    lines = proc.stdout.splitlines()
    assert lines.count("pretrain") == 1  # computed by the first trial
    assert sum(line.startswith("pretrain: reused from") for line in lines) == 3  # the stage cache, as in any sweep
    study = json.loads((out / "study.json").read_text())
    trials = study["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2, 3] and study["searched"] == ["method.reg"]
    regs = [t["params"]["method.reg"] for t in trials]
    assert len(set(regs)) == 4 and all(1e-5 <= r <= 1e-2 for r in regs)
    for t in trials:  # each trial's value is its run's final accuracy (the default objective)
        assert t["value"] == results_of(t["run_dir"])["final"]["acc"]
    best = study["best"]
    assert best["value"] == max(t["value"] for t in trials) and best["params"] == {"method.reg": regs[best["number"]]}
    optuna_best = (out / "optimization_results.yaml").read_text()  # the plugin's own record agrees
    assert f"best_value: {best['value']}" in optuna_best
    assert f"best of 4 trials: trial {best['number']}, accuracy {best['value']:.4f}" in proc.stdout
    png = (out / "study.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


@needs_optuna
def test_prune_report_on_the_sweep_dir(search):
    out, _, _ = search
    with contextlib.redirect_stdout(io.StringIO()):
        assert report_cli.main([str(out)]) == 0
    table = (out / "report.md").read_text()
    assert len([line for line in table.splitlines() if line.startswith("| digits")]) == 4, table


@needs_optuna
@pytest.mark.slow
def test_the_same_search_again_proposes_the_same_trials_and_skips_them(search):
    out, _, args = search
    before = json.loads((out / "study.json").read_text())["trials"]
    proc = run_cli(args, cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((out / "study.json").read_text())["trials"]
    assert [t["params"] for t in after] == [t["params"] for t in before]
    assert proc.stdout.count("eval: finished earlier, skipped") == 4
