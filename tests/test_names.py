"""Run-directory names: one spelling per value for a plain run and a search trial (names.py), a search's
trials that would share a name are one trial, study.json holds only what was searched, and study.png plots a
log-scale parameter on a log axis. In this process, without training."""

from __future__ import annotations

import logging

import optuna
import pytest
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from optuna.distributions import CategoricalDistribution, FloatDistribution

from prune_runner import cli
from prune_runner.names import overrides_name, split_overrides, value_text
from prune_runner.report.plots import study_figure
from prune_runner.search import ask, summarize, tell

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize(("value", "text"), [
    (False, "false"), (True, "true"), (0.004430375245218269, "0.00443"), (2.0, "2"), (2, "2"), (1e-4, "0.0001"),
    (1e-5, "1e-05"), (1.5, "1.5"), ([1, 64], "[1,64]"), (None, "null"), ("l1", "l1"), ({"a": 0.5}, "{a:0.5}"),
])
def test_a_value_has_one_spelling(value, text):
    assert value_text(value) == text


def test_a_plain_run_and_a_search_trial_name_a_value_alike():
    """The command line as typed, and as a search launches a trial (Python's reprs), give one name."""
    typed = cli.overrides_dirname(["eval.latency=false", "method.reg=0.00443", "prune.speed_up=2", "seed=1"],
                                  ["seed"])
    proposed = cli.overrides_dirname(["prune.speed_up=2.0", "method.reg=0.004430375245218269", "eval.latency=False"],
                                     [])
    assert typed == proposed == "eval.latency=false,method.reg=0.00443,prune.speed_up=2"
    assert split_overrides(typed + ",x=[1,64]") == ["eval.latency=false", "method.reg=0.00443", "prune.speed_up=2",
                                                    "x=[1,64]"]
    assert overrides_name([("~method.alpha", None, True), ("a", True, False)]) == "a=true,~method.alpha"


def test_hydra_names_the_run_directory_with_it():
    overrides = cli.preflight(["eval.latency=False", "method.reg=0.004430375245218269", "out_root=/o"])
    with initialize_config_module("prune_runner.conf", version_base="1.3"):
        config = compose("config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(config)
        assert config.hydra.run.dir == "/o/digits/resnet56/group_norm/eval.latency=false,method.reg=0.00443/seed0"


def test_a_proposal_named_like_a_trial_is_not_run_and_params_hold_what_was_searched():
    """Two proposals whose floats agree to 4 significant digits would share a run directory: the second is failed
    as a duplicate and the sampler asked again. study.json's trials hold the searched parameters only, and the
    log-scale ones are listed, so study.png draws them on a log axis."""
    study = optuna.create_study(direction="maximize")
    space = {"method.reg": FloatDistribution(1e-5, 1e-2, log=True), "method": CategoricalDistribution(["l1"])}
    first = ask(study, space, 5, lambda n: optuna.samplers.RandomSampler(seed=0))
    tell(study, first, 0.5, 1, "/runs/a")
    twin = first.params["method.reg"] * (1 + 1e-6)  # another float, the same name

    class Twin(optuna.samplers.RandomSampler):
        calls = 0

        def sample_independent(self, study, trial, name, distribution):
            if name == "method.reg":
                Twin.calls += 1
                if Twin.calls == 1:  # the first proposal: the twin; the next, the sampler's own
                    return twin
            return super().sample_independent(study, trial, name, distribution)

    second = ask(study, space, 5, lambda n: Twin(seed=n))
    assert value_text(second.params["method.reg"]) != value_text(first.params["method.reg"])
    tell(study, second, 0.6, 1, "/runs/b")
    summary = summarize(study, ["accuracy"], "memory")
    assert [t["params"].keys() for t in summary["trials"]] == [{"method", "method.reg"}] * 3
    assert summary["trials"][1]["fail_reason"] == "proposed the parameters of trial 0 again; not run"
    assert summary["searched"] == ["method", "method.reg"] and summary["log_scale"] == ["method.reg"]
    flat = [{"number": t["number"], "params": t["params"], "value": (t["values"] or {}).get("accuracy")}
            for t in summary["trials"]]
    fig = study_figure(flat, ["method.reg"], "accuracy", None, log_keys=summary["log_scale"])
    assert fig.axes[0].get_xscale() == "log"  # whatever the trials' spread
    linear = study_figure(flat, ["method.reg"], "accuracy", None)
    spread = max(t["params"]["method.reg"] for t in flat) / min(t["params"]["method.reg"] for t in flat)
    assert linear.axes[0].get_xscale() == ("log" if spread >= 10 else "linear")


def test_the_sweeper_drops_alembic_info_and_optunas_colour_codes_in_a_file(monkeypatch, tmp_path):
    from hydra_plugins.prune_runner_optuna._search import quiet_library_logs

    monkeypatch.setenv("FORCE_COLOR", "1")  # colorlog would colour even a file
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)  # as Hydra's [HYDRA] logging sets it
    path = tmp_path / "optuna.log"
    optuna_logger = logging.getLogger("optuna")
    saved = [(h, h.formatter) for h in optuna_logger.handlers]
    with path.open("w") as stream:
        file_handler = logging.StreamHandler(stream)
        file_handler.setFormatter(optuna.logging.create_default_formatter())
        optuna_logger.addHandler(file_handler)
        try:
            quiet_library_logs()
            from alembic.runtime.plugins import Plugin

            plugin = Plugin("prune_runner_test.quiet")  # alembic logs "setup plugin ..." at INFO
            plugin.remove()
            optuna_logger.warning("a trial line")
        finally:
            optuna_logger.removeHandler(file_handler)
            root.removeHandler(handler)
            root.setLevel(level)
            for h, formatter in saved:
                h.setFormatter(formatter)
    assert not [r for r in records if r.name.startswith("alembic")]
    text = path.read_text()
    assert "a trial line" in text and "\x1b[" not in text
