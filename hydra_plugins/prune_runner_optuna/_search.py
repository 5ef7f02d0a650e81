"""One worker's search: the search space from Hydra's override grammar, the study opened (or continued) in its
storage, then ask, launch and tell until the study holds n_trials, then the summary. The study's rules (what
counts, resume, no repeats) are prune_runner.search's."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.utils import JobStatus
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from prune_runner.errors import UserError
from prune_runner.names import override_text
from prune_runner.search import (
    ask,
    ask_lock,
    counted,
    heartbeat,
    holdout_override,
    objective_names,
    open_storage,
    recover_stale,
    storage_label,
    summarize,
    tell,
    write_study,
)

DIRECTIONS = ("maximize", "minimize")
# options that say where or how a trial runs, not what it computes: left out of the derived study name
NOT_IN_NAME = ("out_root", "device", "progress")


def distribution(override: Override) -> optuna.distributions.BaseDistribution:
    """choice(a, b) and a,b: categorical; range(a, b, step): ints or floats on a step grid (b excluded, as in
    Python); interval(a, b): floats, on a log scale with tag(log, ...); shuffle(range): categorical."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    word = override.input_line or override.get_key_element()
    if override.is_interval_sweep():
        value = override.value()
        return FloatDistribution(float(value.start), float(value.end), log="log" in value.tags)
    if override.is_range_sweep() and not override.value().shuffle:
        values = list(override.sweep_iterator(transformer=Transformer.encode))
        if not values:
            raise UserError(f"{word} is an empty range")
        step = override.value().step
        if all(isinstance(v, int) for v in values) and isinstance(step, int):
            return IntDistribution(values[0], values[-1], step=step)
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(step))
    if override.is_choice_sweep() or override.is_range_sweep():
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    raise UserError(f"{word} cannot be searched; use choice(...), range(...), interval(...) or tag(log, interval(...))")


def search_space(arguments: List[str], params) -> Tuple[Dict[str, object], List[str]]:
    """({key: distribution}, the fixed overrides) from the command line and hydra.sweeper.params (the command
    line wins for a key in both)."""
    parser = OverridesParser.create()
    from_config = [f"{k}={v}" for k, v in (params or {}).items()]
    overrides = {o.get_key_element(): o for o in parser.parse_overrides(from_config)}
    overrides.update({o.get_key_element(): o for o in parser.parse_overrides(list(arguments))})
    space, fixed = {}, []
    for key, override in overrides.items():
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed.append(override.input_line)  # as written: a quoted path stays quoted for Hydra
    if not space:
        raise UserError("hydra/sweeper=optuna has nothing to search: give a search space, e.g. "
                        "'method.reg=tag(log, interval(1e-5, 1e-2))', 'prune.speed_up=interval(1.5, 3)' or "
                        "'method=choice(l1, group_norm)'")
    return space, fixed


def fixed_values(fixed: List[str]) -> Dict[str, object]:
    """{key: value} of the fixed overrides, the key without its +/++ prefix; a deletion `~key` is None."""
    parsed = OverridesParser.create().parse_overrides(list(fixed))
    return {o.key_or_group: None if o.is_delete() else o.value() for o in parsed}


def derived_study_name(objectives: List[str], space: dict, fixed: List[str]) -> str:
    """<objectives>:<searched keys>:<digest of objectives, search space and fixed overrides>: the same search
    gets the same name, so re-running its command continues its study."""
    kept = sorted(f for f in fixed if f.partition("=")[0].lstrip("+~") not in NOT_IN_NAME)
    what = json.dumps({"objectives": objectives, "space": {k: repr(d) for k, d in sorted(space.items())},
                       "fixed": kept})
    digest = hashlib.sha256(what.encode()).hexdigest()[:10]
    return f"{'+'.join(objectives)}:{','.join(sorted(space))}:{digest}"


def directions(direction, n_objectives: int) -> List[str]:
    given = [str(d) for d in direction] if isinstance(direction, (list, tuple, ListConfig)) else [str(direction)]
    if len(given) == 1:
        given = given * n_objectives
    if len(given) != n_objectives or any(d not in DIRECTIONS for d in given):
        raise UserError(f"hydra.sweeper.direction={direction} is invalid; give one of {', '.join(DIRECTIONS)}, or a "
                        f"list of them, one per objective ({n_objectives})")
    return given


def _format(params: dict) -> str:
    """A trial's parameters as its run directory's name spells them (prune_runner/names.py)."""
    return " ".join(override_text(k, v) for k, v in params.items())


def _values(trial: dict, summary: dict) -> str:
    """A trial's objective values, each labelled with what it read, then its accuracy on the test split: the figure
    to report, which selected nothing."""
    on = summary.get("selected_on", {})
    values = [f"{k} {v:.4f}" + (" on the holdout" if on.get(k) == "holdout" else "")
              for k, v in trial["values"].items()]
    if trial.get("test_acc") is not None:
        values.append(f"test accuracy {trial['test_acc']:.4f}")
    return ", ".join(values)


PLAIN_FORMAT = "[%(levelname)1.1s %(asctime)s] %(message)s"  # Optuna's own line, without its colour codes


def quiet_library_logs() -> None:
    """What libraries would add to a search's output: alembic's INFO lines ("setup plugin alembic.autogenerate.*",
    printed in Hydra's [HYDRA] format when a database storage or MLflow imports it) are dropped, and Optuna's lines
    lose their colour codes where they go to a file, not a terminal (FORCE_COLOR set or not)."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:
        stream = getattr(handler, "stream", None)
        if stream is not None and not (hasattr(stream, "isatty") and stream.isatty()):
            handler.setFormatter(logging.Formatter(PLAIN_FORMAT))


def run_search(sweeper, arguments: List[str]) -> None:
    quiet_library_logs()
    try:
        _run(sweeper, arguments)
    except UserError as err:
        print(f"prune-run: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def _run(sweeper, arguments: List[str]) -> None:
    config: DictConfig = sweeper.config
    sweep_dir = Path(config.hydra.sweep.dir)
    objective = config.search.objective
    objectives = objective_names(OmegaConf.to_container(objective) if isinstance(objective, ListConfig)
                                 else objective)
    space, fixed = search_space(arguments, sweeper.params)
    withhold = holdout_override(objectives, {**fixed_values(fixed), **dict.fromkeys(space, "searched")})
    if withhold is not None:  # an accuracy objective: each trial is scored on images kept out of its training
        fixed.append(withhold)
    name = sweeper.study_name or derived_study_name(objectives, space, fixed)
    label = storage_label(sweeper.storage, sweep_dir)
    wanted = directions(sweeper.direction, len(objectives))
    storage = open_storage(sweeper.storage, sweep_dir)
    study = optuna.create_study(storage=storage, study_name=name, directions=wanted, load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != wanted:
        raise UserError(f"study '{name}' in {label} has directions {have}, this search {wanted}; give another "
                        "hydra.sweeper.study_name")
    sampler_cfg = sweeper.sampler

    def make_sampler(n: int):
        seed = sampler_cfg.get("seed")
        return instantiate(sampler_cfg, **({"seed": int(seed) + n} if seed is not None else {}))

    with ask_lock(sweeper.storage, sweep_dir):
        again = recover_stale(study)
        before = sum(t.state.is_finished() for t in counted(study.get_trials(deepcopy=False)))
    if again:
        print(f"prune-run: trial(s) {', '.join(map(str, again))} of study '{name}' were left running by a worker "
              "that is gone: marked failed, their parameters asked again", flush=True)
    print(f"prune-run: study '{name}' in {label}: {before} of {sweeper.n_trials} trials finished already", flush=True)
    job_idx, failed = 0, 0
    while True:
        with ask_lock(sweeper.storage, sweep_dir):
            recover_stale(study)
            batch = []
            for _ in range(max(1, sweeper.n_jobs)):
                trial = ask(study, space, sweeper.n_trials, make_sampler)
                if trial is None:
                    break
                batch.append(trial)
        if not batch:
            break
        jobs = [[*fixed, *(f"{k}={v}" for k, v in trial.params.items())] for trial in batch]
        with heartbeat(batch):
            returns = sweeper.launcher.launch(jobs, initial_job_idx=job_idx)
        job_idx += len(batch)
        for trial, ret in zip(batch, returns):
            outcome = ret.return_value if ret.status == JobStatus.COMPLETED else ret._return_value
            run_dir = (ret.cfg.get("run_dir") if ret.cfg is not None else None) or (
                ret.hydra_cfg.hydra.runtime.output_dir if ret.hydra_cfg is not None else None)
            reason = tell(study, trial, outcome, len(objectives), run_dir)
            if reason is not None:
                failed += 1
                print(f"prune-run: trial {trial.number} ({_format(trial.params)}) failed: {reason}", flush=True)
    summary = summarize(study, objectives, label)
    write_study(sweep_dir, summary, warn=lambda text: print(f"prune-run: {text}", file=sys.stderr))
    _print_result(summary, sweep_dir)


def _print_result(summary: dict, sweep_dir: Path) -> None:
    rows = {t["number"]: t for t in summary["trials"]}
    done = sum(t["state"] == "COMPLETE" for t in summary["trials"])
    where = f"study.json and study.png in {sweep_dir}"
    if not summary["front"]:
        print(f"prune-run: no trial of study '{summary['study_name']}' finished; {where}", flush=True)
        return
    if len(summary["objectives"]) == 1:
        best = rows[summary["front"][0]]
        print(f"prune-run: best of {done} finished trials: trial {best['number']}, {_values(best, summary)} "
              f"({_format(best['params'])}) in {best['run_dir']}; {where}", flush=True)
        return
    print(f"prune-run: Pareto front of {done} finished trials ({', '.join(summary['objectives'])}):", flush=True)
    for number in summary["front"]:
        t = rows[number]
        print(f"  trial {number}: {_values(t, summary)} ({_format(t['params'])}) in {t['run_dir']}", flush=True)
    print(f"prune-run: {where}", flush=True)
