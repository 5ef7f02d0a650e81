"""Hyperparameter search: what a run returns to a sweeper (its objectives), the Optuna study the sweeper asks and
tells (storage, resume, parallel workers), and the study's summary.

With `hydra/sweeper=optuna` (the plugin in hydra_plugins/prune_runner_optuna) every trial is an ordinary run; the
objectives of `search.objective` (one name or a list), read from its results.json, go back to Optuna, which
maximizes each: every objective here is higher-is-better. The study lives in a storage (a journal file under
out_root by default, or a database URL), so a re-run of the same command continues it, and several processes
started on one study share it. After the last trial, `write_study` puts the trials, the best trial or the Pareto
front (study.json) and a plot (study.png) into the sweep directory.

Hydra stays in cli.py and the plugin: this module takes plain values and paths; Optuna is imported where it is
used (the `search` extra).
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Union

from .errors import UserError
from .names import value_text
from .registry import Registry
from .run.files import atomic_write_json

JOURNAL = "optuna_journal.log"  # the default storage, in the sweep dir (out_root); optuna-dashboard opens it
HEARTBEAT_S = 60.0  # a worker marks each trial it runs this often (user attr "heartbeat", epoch seconds)
STALE_S = 600.0  # a RUNNING trial of another machine unmarked this long: its worker is gone (ten missed marks)
MAX_DUPLICATES = 50  # proposals in a row that repeat a parameter set: the search space has no new set left


# dataset.holdout a trial of an accuracy objective gets unless its command gives one: 10% of the training split,
# as prune.search.holdout (5,000 CIFAR-10 images: a top-1 standard error near 0.4 points at 90%)
TRIAL_HOLDOUT = 0.1
HOLDOUT_KEY = "dataset.holdout"


@dataclass(frozen=True)
class Objective:
    name: str
    value: Callable[[dict, Optional[float]], float]  # value(results, min_speed_up) -> float, higher is better
    summary: str
    reads: str  # what selects: study.json's selected_on; "holdout" = the training images a trial withheld


OBJECTIVES: Registry[Objective] = Registry("search.objective")


def _objective(name: str, summary: str, reads: str):
    def add(fn):
        OBJECTIVES.add(name, Objective(name, fn, summary, reads))
        return fn

    return add


def holdout_accuracy(results: dict) -> float:
    """Top-1 on the training images the run withheld from training (dataset.holdout), never the test split."""
    if "holdout" not in results:
        raise UserError("the accuracy objectives read the accuracy on a holdout withheld from training; this run "
                        f"withheld none ({HOLDOUT_KEY}=null): leave {HOLDOUT_KEY} out of the search's command "
                        f"(it is then {TRIAL_HOLDOUT}) or give a fraction in (0, 1)")
    return float(results["holdout"]["acc"])


@_objective("accuracy", "top-1 accuracy after fine-tuning on the trial's holdout (dataset.holdout of the training "
                        "split, withheld from its training)", "holdout")
def _accuracy(results: dict, min_speed_up: Optional[float]) -> float:
    return holdout_accuracy(results)


@_objective("accuracy_at_speed_up", "holdout accuracy (as accuracy) where the reached MACs speed-up is at least "
                                    "search.min_speed_up (default: prune.speed_up); accuracy - 1 below it, so every "
                                    "run that reaches it ranks above every run that does not", "holdout")
def _accuracy_at_speed_up(results: dict, min_speed_up: Optional[float]) -> float:
    floor = min_speed_up if min_speed_up is not None else results["target_speed_up"]
    acc = holdout_accuracy(results)
    return acc if results["speed_up"] >= floor else acc - 1.0


@_objective("speed_up", "reached MACs speed-up (base MACs / final MACs)", "macs")
def _speed_up(results: dict, min_speed_up: Optional[float]) -> float:
    return float(results["speed_up"])


@_objective("latency_speed_up", "measured latency speed-up (base / final latency) at the largest timed batch size "
                                "(needs eval.latency=true)", "latency")
def _latency_speed_up(results: dict, min_speed_up: Optional[float]) -> float:
    ratios = {int(bs): v for bs, v in ((results.get("latency") or {}).get("speed_up") or {}).items() if v is not None}
    if not ratios:
        raise UserError("search.objective latency_speed_up needs a latency measurement; this run has none "
                        "(eval.latency=false?)")
    return float(ratios[max(ratios)])


def list_objectives() -> List[str]:
    return OBJECTIVES.names()


def objective_names(objective: Union[str, List[str]]) -> List[str]:
    """search.objective as a list of names: one name, or a list of distinct names, each registered."""
    names = [objective] if isinstance(objective, str) else list(objective)
    if not names or not all(isinstance(n, str) for n in names):
        raise UserError(f"search.objective={objective} is invalid; give one name or a list of names of: "
                        f"{', '.join(list_objectives())}")
    for name in names:
        OBJECTIVES.get(name)  # unknown: one line naming the objectives
    if len(set(names)) < len(names):
        raise UserError(f"search.objective={names} names an objective twice; each must appear once")
    return names


def objective_value(name: str, results: dict, min_speed_up: Optional[float] = None) -> float:
    return OBJECTIVES.get(name).value(results, min_speed_up)


def needs_holdout(objectives: List[str]) -> bool:
    return any(OBJECTIVES.get(name).reads == "holdout" for name in objectives)


def holdout_override(objectives: List[str], given: Dict[str, object]) -> Optional[str]:
    """The override that withholds a trial's holdout from its training (dataset.holdout=TRIAL_HOLDOUT), when an
    objective reads accuracy and the command sets no holdout (`given`: the fixed overrides, key -> value); None
    when none is needed or the command gives one. A holdout of null with such an objective is refused."""
    if not needs_holdout(objectives):
        return None
    if HOLDOUT_KEY not in given:
        return f"{HOLDOUT_KEY}={TRIAL_HOLDOUT}"
    if given[HOLDOUT_KEY] is None:
        raise UserError(f"search.objective {'+'.join(objectives)} is scored on a holdout withheld from each trial's "
                        f"training; {HOLDOUT_KEY}=null leaves none: give a fraction in (0, 1) or leave it out "
                        f"({TRIAL_HOLDOUT})")
    return None


@dataclass(frozen=True)
class TrialFailed:
    """What a run that failed returns to the sweeper: its one-line reason (told to Optuna as a failed trial)."""

    reason: str


def run_objective(objective: Union[str, List[str]], run_dir: Path,
                  min_speed_up: Optional[float] = None) -> Union[float, List[float], TrialFailed]:
    """The objective of a finished run (its results.json): a float for one name, a list of floats for a list."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return TrialFailed(f"no results.json in {run_dir}: the run ended before its eval stage")
    results = json.loads(path.read_text())
    try:
        if isinstance(objective, str):
            return objective_value(objective, results, min_speed_up)
        return [objective_value(name, results, min_speed_up) for name in objective]
    except (UserError, KeyError, TypeError, ValueError) as err:  # e.g. latency_speed_up without a measurement
        return TrialFailed(str(err) if isinstance(err, UserError) else f"results.json lacks {err} for {objective}")


# ---- the study: storage, asking (resume, parallel workers, no repeats), telling --------------------------------


def open_storage(storage: Optional[str], sweep_dir: Path):
    """A database URL (`sqlite:///...`, `postgresql://...`) as Optuna's RDB storage; anything else a journal
    file (default <sweep dir>/optuna_journal.log), which several processes share through its file lock."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if storage and "://" in storage:
        try:
            return optuna.storages.RDBStorage(storage)
        except Exception as err:  # a wrong URL or a missing driver: one line
            raise UserError(f"hydra.sweeper.storage={storage} cannot be opened: "
                            f"{str(err).strip().splitlines()[0]}") from None
    path = Path(storage) if storage else Path(sweep_dir) / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def storage_label(storage: Optional[str], sweep_dir: Path) -> str:
    """What optuna-dashboard is given to open the study's storage."""
    if storage and "://" in storage:
        return storage
    return str(Path(storage) if storage else Path(sweep_dir) / JOURNAL)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _stale(trial, now: float) -> bool:
    """A RUNNING trial whose worker is gone: on this machine its process has ended; elsewhere it has not marked
    the trial for STALE_S."""
    host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return int(pid) != os.getpid() and not _alive(int(pid))
    last = trial.user_attrs.get("heartbeat")
    if last is None and trial.datetime_start is not None:
        last = trial.datetime_start.timestamp()
    return last is not None and now - float(last) > STALE_S


def retried(trials) -> Dict[int, int]:
    """{number of a trial whose worker was killed: number of the trial that asked its parameters again}."""
    return {int(t.user_attrs["retry_of"]): t.number for t in trials if "retry_of" in t.user_attrs}


def counted(trials) -> list:
    """The trials that count toward n_trials: finished (complete or failed), running, or queued; not a killed
    worker's trial (its parameters were asked again) and not a proposal that repeated a parameter set."""
    from optuna.trial import TrialState

    again = retried(trials)
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING,
                                             TrialState.WAITING)
            and t.number not in again and "duplicate_of" not in t.user_attrs]


def recover_stale(study) -> List[int]:
    """Mark failed the RUNNING trials whose worker is gone, and queue their parameters again; their numbers."""
    from optuna.trial import TrialState

    now, failed = time.time(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _stale(trial, now):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            failed.append(trial.number)
    return failed


@contextmanager
def ask_lock(storage: Optional[str], sweep_dir: Path) -> Iterator[None]:
    """Workers on one journal file ask one at a time (count, propose, check for a repeat, create), so together
    they never exceed n_trials nor run a parameter set twice. A database storage has no lock file: there a
    repeat proposed in the same instant by two machines is possible (then one fails as a busy run dir)."""
    from .run.locks import FileLock

    if storage and "://" in storage:
        yield
        return
    path = Path(storage) if storage else Path(sweep_dir) / JOURNAL
    lock = FileLock(path.with_name(path.name + ".ask.lock"))
    lock.acquire_blocking()
    try:
        yield
    finally:
        lock.release()


def ask(study, distributions: dict, n_trials: int, make_sampler: Callable[[int], object]):
    """The next trial to run, or None when the study holds n_trials counted trials.

    A queued trial (a killed worker's parameters) goes first. Otherwise the sampler, seeded with its seed plus
    the number of trials in the study, proposes parameters: the same command proposes the same trials, and two
    workers never propose from the same random state. A proposal that repeats a counted trial's parameters, as
    its run directory's name spells them (names.py: floats to 4 significant digits), is failed with
    `duplicate_of` and not run; the sampler proposes again."""
    from optuna.trial import TrialState

    for _ in range(MAX_DUPLICATES):
        trials = study.get_trials(deepcopy=False)
        live = counted(trials)
        if sum(t.state != TrialState.WAITING for t in live) >= n_trials:  # a queued trial is asked even so:
            return None  # it stands for a killed one, whose place in n_trials it takes
        study.sampler = make_sampler(len(trials))
        trial = study.ask(distributions)
        trial.set_user_attr("worker", worker_id())
        named = name_values(trial.params)  # equal as the run directory spells them: the same run directory
        twin = next((t.number for t in live if name_values(t.params) == named and t.number != trial.number), None)
        if twin is None:
            return trial
        trial.set_user_attr("duplicate_of", twin)
        study.tell(trial, state=TrialState.FAIL)
    raise UserError(f"the search space has no new parameter set left: {MAX_DUPLICATES} proposals in a row repeated "
                    f"a trial's; lower hydra.sweeper.n_trials (now {n_trials}) or widen the search space")


def name_values(params: dict) -> Dict[str, str]:
    """A trial's parameters as its run directory's name spells them."""
    return {k: value_text(v) for k, v in params.items()}


def tell(study, trial, outcome, n_objectives: int, run_dir: Optional[str]) -> Optional[str]:
    """Tell Optuna a run's outcome (values, or TrialFailed, or an exception); returns the failure reason, if any."""
    from optuna.trial import TrialState

    if run_dir:
        trial.set_user_attr("run_dir", str(run_dir))
    reason = None
    if isinstance(outcome, TrialFailed):
        reason = outcome.reason
    elif isinstance(outcome, BaseException):
        reason = f"{type(outcome).__name__}: {str(outcome).strip().splitlines()[0] if str(outcome).strip() else ''}"
    else:
        values = [outcome] if isinstance(outcome, (int, float)) else list(outcome or [])
        if len(values) != n_objectives or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            reason = f"the run returned {outcome!r}, not {n_objectives} finite objective value(s)"
    if reason is not None:
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=TrialState.FAIL)
        return reason
    study.tell(trial, [float(v) for v in values])
    return None


@contextmanager
def heartbeat(trials: list) -> Iterator[None]:
    """Mark each trial in flight every HEARTBEAT_S, so workers on other machines can tell it from a killed one."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            for trial in trials:
                try:
                    trial.set_user_attr("heartbeat", time.time())
                except Exception:  # a storage hiccup must not stop a run; the next beat tries again
                    pass

    thread = threading.Thread(target=beat, name="prune-runner-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# ---- the study's summary -------------------------------------------------------------------------------------


def summarize(study, objectives: List[str], storage: str) -> dict:
    """study.json's content: the objectives, the searched parameters, the best trial (one objective) or the
    Pareto front (several), then every trial with its state, parameters, values, run dir and failure reason."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    again, kept = retried(trials), {t.number for t in counted(trials)}
    rows = []
    for t in trials:
        reason = t.user_attrs.get("fail_reason")
        if t.number in again:
            reason = f"its worker ({t.user_attrs.get('worker', '?')}) stopped while it ran; asked again as trial " \
                     f"{again[t.number]}"
        elif "duplicate_of" in t.user_attrs:
            reason = f"proposed the parameters of trial {t.user_attrs['duplicate_of']} again; not run"
        rows.append({"number": t.number, "state": t.state.name, "counted": t.number in kept, "params": dict(t.params),
                     "values": dict(zip(objectives, t.values)) if t.values else None,
                     "test_acc": _test_accuracy(t.user_attrs.get("run_dir")) if t.values else None,
                     "run_dir": t.user_attrs.get("run_dir"), "worker": t.user_attrs.get("worker"),
                     "fail_reason": reason})
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    front = sorted(t.number for t in study.best_trials) if complete else []
    keys = sorted({k for t in trials for k in t.params})
    log_scale = sorted({k for t in trials for k, d in t.distributions.items() if getattr(d, "log", False)})
    summary = {"study_name": study.study_name, "storage": storage, "objectives": objectives,
               "directions": [d.name.lower() for d in study.directions],
               # what each objective selected on: "holdout" (training images each trial withheld from its
               # training, dataset.holdout), "macs" or "latency"; never the test split
               "selected_on": {name: OBJECTIVES.get(name).reads for name in objectives}, "searched": keys,
               "log_scale": log_scale, "front": front, "trials": rows}
    if len(objectives) == 1:
        summary["best"] = next((r for r in rows if r["number"] == front[0]), None) if front else None
    return summary


def _test_accuracy(run_dir: Optional[str]) -> Optional[float]:
    """A finished trial's final accuracy on the test split (results.json), shown beside the values that selected
    it and never used to select; None when its results.json is gone."""
    if not run_dir:
        return None
    try:
        return float(json.loads((Path(run_dir) / "results.json").read_text())["final"]["acc"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_study(sweep_dir: Path, summary: dict, warn: Callable[[str], None] = print) -> None:
    """study.json and study.png in `sweep_dir`: one objective against each searched parameter, or (several
    objectives) the first against the second with the front joined."""
    from .report.plots import plot_front, plot_study  # not at the top: matplotlib, only at the end of a search

    sweep_dir = Path(sweep_dir)
    summary = {**summary, "sweep_dir": str(sweep_dir.resolve())}  # report/summary.py finds the runs if it moves
    atomic_write_json(sweep_dir / "study.json", summary)
    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    try:
        if len(summary["objectives"]) == 1:  # failed trials too (value None): the plot counts them
            name = summary["objectives"][0]
            flat = [{"number": t["number"], "params": t["params"], "value": (t["values"] or {}).get(name)}
                    for t in summary["trials"] if t["state"] in ("COMPLETE", "FAIL")]
            best = next((t for t in flat if t["number"] == summary["front"][0]), None) if summary["front"] else None
            plot_study(flat, summary["searched"], name, best, sweep_dir / "study.png",
                       log_keys=summary.get("log_scale", []))
        else:
            plot_front(done, summary["objectives"], summary["front"], sweep_dir / "study.png")
    except Exception as err:  # a plot must never fail a search
        warn(f"study.png not written: {err}")
