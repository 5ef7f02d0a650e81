"""`prune-run --help` and `prune-report --help` speak for the app: what it does, the config groups, example
commands whose configs compose and pass the run's checks, and where the docs are. In this process."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO, run_cli, run_main
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from prune_runner import cli, report_cli
from prune_runner.validate import validate


@pytest.fixture(scope="module")
def run_help(tmp_path_factory) -> str:
    done = run_cli(["--help"], tmp_path_factory.mktemp("help"))
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def report_help() -> str:
    done = run_main(report_cli.main, ["--help"])
    assert done.returncode == 0, done.stderr
    return done.stdout


def examples(text: str) -> list[list[str]]:
    """The commands shown in a help text (lines that start with prune-run or prune-report), as argv."""
    return [shlex.split(line) for line in re.findall(r"^ +((?:prune-run|prune-report) .*)$", text, re.MULTILINE)]


def composed_jobs(argv: list[str]) -> list:
    """The RunConfig of each run a `prune-run` command starts (one per job of a -m sweep), as prune-run composes
    and checks it before running anything."""
    jobs = cli.sweep_jobs(argv) if "-m" in argv else [argv]
    configs = []
    for job in jobs:
        overrides = cli.preflight(job)
        with initialize_config_module("prune_runner.conf", version_base="1.3"):
            configs.append(validate(OmegaConf.to_object(compose("config", overrides=overrides))))
    return configs


def test_prune_run_help_opens_with_the_app_and_lists_the_groups(run_help):
    lines = run_help.splitlines()
    assert lines[0] == ("prune-run: sparse-train a model, prune its channels to a target speed-up, fine-tune and "
                        "measure it.")
    assert lines[2].startswith("Usage: prune-run [group=option ...] [key=value ...]")
    assert "powered by Hydra" not in run_help and "pretrained: false" not in run_help  # no composed config dump
    for group in cli.GROUPS:  # every YAML option (an earlier in-process test may have stored more, e.g. a
        # torchvision model name, in Hydra's ConfigStore, which the help lists too)
        shown = re.search(rf"^{group}: (.*)$", run_help, re.MULTILINE).group(1).split(", ")
        assert set(cli.group_options(group)) <= set(shown) and shown == sorted(shown), (group, shown)
    assert "prune-run [overrides] --cfg job" in run_help
    for path in re.findall(r"\b(docs/[\w/.-]*)", run_help):  # the docs it points to are there
        assert (REPO / path).exists(), path


def test_prune_run_help_examples_compose(run_help):
    commands = examples(run_help.split("== Examples ==", 1)[1])
    assert [c[0] for c in commands] == ["prune-run"] * 3 + ["prune-report"] + ["prune-run"] * 2
    demo, cifar, sweep, report, latency, preset = commands
    assert " ".join(demo) in (REPO / "Makefile").read_text(), "the demo example is not `make demo`'s command"
    (cfg,) = composed_jobs(demo[1:])
    assert (cfg.schedule.name, cfg.run_dir, cfg.prune.speed_up) == ("demo", "outputs/demo", 2.0)
    (cfg,) = composed_jobs(cifar[1:])
    assert (cfg.dataset.name, cfg.model.name, cfg.schedule.name) == ("cifar10", "resnet56", "default")
    runs = composed_jobs(sweep[1:])
    assert sorted((c.method.name, c.prune.speed_up) for c in runs) == [
        ("group_norm", 1.5), ("group_norm", 2.0), ("l1", 1.5), ("l1", 2.0)]
    # prune-report is pointed at the folder the sweep's runs are under
    assert {Path(c.out_root) / c.dataset.name for c in runs} == {Path(report_cli.build_parser().parse_args(
        report[1:]).dir)}
    (cfg,) = composed_jobs(latency[1:])
    assert (cfg.prune.target, cfg.prune.speed_up) == ("latency", 1.5)
    (cfg,) = composed_jobs(preset[1:])
    assert (cfg.model.name, cfg.dataset.name, cfg.prune.speed_up) == ("resnet56", "cifar10", 2.55)


def test_prune_report_help(report_help):
    assert report_help.startswith("usage: prune-report [-h] [--out DIR] DIR\n\nprune-report: summarize the finished "
                                  "runs under DIR")
    commands = examples(report_help)
    assert [c[0] for c in commands] == ["prune-run", "prune-report", "prune-report"]
    runs = composed_jobs(commands[0][1:])
    parser = report_cli.build_parser()
    assert {Path(c.out_root) / c.dataset.name for c in runs} == {Path(parser.parse_args(commands[1][1:]).dir)}
    assert vars(parser.parse_args(commands[2][1:])) == {"dir": "outputs", "out": "reports/all"}
    assert "exit status: 0 report written; 1 no finished run under DIR; 2 bad input" in report_help
    for path in re.findall(r"\b(docs/[\w/.-]*)", report_help):
        assert (REPO / path).exists(), path


@pytest.mark.parametrize("unbuffered", [False, True])  # the help fails as it is printed, or as it is flushed at exit
def test_a_reader_that_closes_the_pipe_early_gets_no_traceback(tmp_path, unbuffered):
    """`prune-run --help | head -1`: the reader is gone before the help is written. Only a process shows it: its
    stderr and exit status (141, as shells report SIGPIPE)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | ({"PYTHONUNBUFFERED": "1"} if unbuffered
                                                                           else {})
    proc = subprocess.Popen([sys.executable, "-m", "prune_runner.cli", "--help"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the help is written: the interpreter takes a second to start
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
