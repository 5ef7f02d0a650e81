"""Hyperparameter search: what a run returns to a sweeper (its objective), and the summary of a study.

With `hydra/sweeper=optuna` (conf/hydra/sweeper/optuna.yaml) every trial is an ordinary run; its objective,
`search.objective` of its results.json, goes back to Optuna, which maximizes it: every objective here is
higher-is-better. After the last trial, `write_study` puts the best trial (study.json) and one panel per
searched parameter, objective against value (study.png), into the sweep directory. The trials' run dirs sit
under it too, so `prune-report <sweep dir>` tabulates them.

Hydra stays in cli.py: this module takes plain dicts and paths.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from .registry import Registry
from .report.plots import plot_study
from .run.files import atomic_write_json


@dataclass(frozen=True)
class Objective:
    name: str
    value: Callable[[dict, Optional[float]], float]  # value(results, min_speed_up) -> float, higher is better
    summary: str


OBJECTIVES: Registry[Objective] = Registry("search.objective")


def _objective(name: str, summary: str):
    def add(fn):
        OBJECTIVES.add(name, Objective(name, fn, summary))
        return fn

    return add


@_objective("accuracy", "final top-1 accuracy (after fine-tuning)")
def _accuracy(results: dict, min_speed_up: Optional[float]) -> float:
    return float(results["final"]["acc"])


@_objective("accuracy_at_speed_up", "final accuracy where the reached MACs speed-up is at least search.min_speed_up "
                                    "(default: prune.speed_up); accuracy - 1 below it, so every run that reaches it "
                                    "ranks above every run that does not")
def _accuracy_at_speed_up(results: dict, min_speed_up: Optional[float]) -> float:
    floor = min_speed_up if min_speed_up is not None else results["target_speed_up"]
    acc = float(results["final"]["acc"])
    return acc if results["speed_up"] >= floor else acc - 1.0


@_objective("speed_up", "reached MACs speed-up (base MACs / final MACs)")
def _speed_up(results: dict, min_speed_up: Optional[float]) -> float:
    return float(results["speed_up"])


def list_objectives() -> List[str]:
    return OBJECTIVES.names()


def objective_value(name: str, results: dict, min_speed_up: Optional[float] = None) -> float:
    return OBJECTIVES.get(name).value(results, min_speed_up)


def run_objective(name: str, run_dir: Path, min_speed_up: Optional[float] = None) -> Optional[float]:
    """The objective of a finished run (its results.json), or None for a run without results."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return None
    return objective_value(name, json.loads(path.read_text()), min_speed_up)


# ---- the study's summary -------------------------------------------------------------------------------------


def _parse(value: str):
    """An override's value as a number where it is one (for the plot's axis)."""
    try:
        return float(value)
    except ValueError:
        return value


def trial_params(overrides: List[str]) -> dict:
    return {key: _parse(value) for key, _, value in (o.partition("=") for o in overrides)}


def searched_keys(trials: List[dict], declared: Optional[List[str]] = None) -> List[str]:
    """The parameters the study searched: those the sweeper names, else those whose value varies."""
    if declared:
        return list(declared)
    keys = sorted({k for t in trials for k in t["params"]})
    return [k for k in keys if len({str(t["params"].get(k)) for t in trials}) > 1]


def write_study(sweep_dir: Path, trials: List[dict], objective: str, declared: Optional[List[str]] = None,
                warn: Callable[[str], None] = print) -> Optional[dict]:
    """study.json (best trial, then every trial in order) and study.png in `sweep_dir`; returns the best trial.

    A trial is {"number", "overrides": [k=v, ...], "run_dir", "value" (None: the run failed)}."""
    sweep_dir = Path(sweep_dir)
    trials = sorted(({**t, "params": trial_params(t["overrides"])} for t in trials), key=lambda t: t["number"])
    done = [t for t in trials if t.get("value") is not None and math.isfinite(t["value"])]
    best = max(done, key=lambda t: t["value"]) if done else None
    keys = searched_keys(trials, declared)
    summary = {"objective": objective, "direction": "maximize", "searched": keys,
               "best": None if best is None else {**best, "params": {k: best["params"].get(k) for k in keys}},
               "trials": trials}
    atomic_write_json(sweep_dir / "study.json", summary)
    try:
        plot_study(trials, keys, objective, best, sweep_dir / "study.png")
    except Exception as err:  # a plot must never fail a search
        warn(f"study.png not written: {err}")
    return summary["best"]
