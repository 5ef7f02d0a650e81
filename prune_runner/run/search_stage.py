"""The prune stage's side of prune.allocation=search (pruning/width_search.py): the proxy that scores a candidate
(top-1 on the holdout carved from the TRAINING split, after BatchNorm re-estimation on training batches), the
method's calibration on each candidate's copy, and what the stage keeps: the winner, candidates.jsonl and
search.png in the stage's folder, the `search` summary in its metrics (results.json).

With prune.target=latency the candidates are drawn at the MACs speed-up where the uniform allocation reaches the
latency target (the latency rule, pruning/latency_target.py, on a copy of the stage's input model); the
FINALISTS best by the proxy are read with the latency meter, and the best of them that reaches the target wins.
If none does, the uniform allocation at the latency rule's stop wins, and the `search` summary says so."""

from __future__ import annotations

import copy
import time

from ..config import STAGES
from ..data.base import stream_seed
from ..latency.dtype import resolve_latency_dtype
from ..latency.meter import LatencyMeter
from ..pruning import ObdcCalibration, build_pruner, grad_calibration, prune_to_latency_in_run
from ..pruning.candidates import NoPerGroupRatiosError, OneShot, check_per_group_ratios
from ..pruning.latency_target import CONFIRMED
from ..pruning.width_search import CANDIDATES_FILE, pruned_again, read_finalists, search_widths
from ..report.search_plot import SEARCH_PLOT, plot_search
from ..train.batchnorm import reestimate_batchnorms, training_batches
from ..train.loop import evaluate
from .state import RunState

EVAL_BATCH = 256  # holdout images per evaluation batch
UNIFORM_AT_STOP = "uniform at the latency stop"  # the winner's kind when no finalist reached the latency target


def _calibration(state: RunState):
    """make(twin, pruner) -> calibrate(): the method's importance (Taylor gradients, OBDC statistics) on `twin`
    before each pruning step, as the prune stage prepares it; None for a method without one."""
    cfg = state.cfg
    if state.spec.calibration is None:
        return None
    calib = list(state.data.calib_batches(64, cfg.method.importance_batches, cfg.seed))

    def make(twin, pruner):
        obdc = ObdcCalibration(pruner, cfg.seed) if state.spec.calibration == "obdc" else None

        def calibrate() -> None:
            twin.eval()
            if obdc is None:
                grad_calibration(twin, calib)
            else:
                obdc(twin, calib)

        return calibrate

    return make


def _twin_calibration(state: RunState):
    """calibrate(twin, pruner) for a candidate's one pruning step, or None."""
    make = _calibration(state)
    return None if make is None else (lambda twin, pruner: make(twin, pruner)())


def uniform_latency_stop(state: RunState, options: dict) -> dict:
    """The latency rule (prune_to_latency_in_run) on a copy of the stage's input model, pruned uniformly in the
    run's small steps: what prune.allocation=uniform with this latency target would keep (model, history, its MACs
    speed-up, what was read). Raises the rule's one-line errors (target missed, machine too busy)."""
    cfg = state.cfg
    twin = copy.deepcopy(state.model)
    example = state.data.example_input(1)
    pruner = build_pruner(twin, example, state.spec, state.num_classes, **{**options, "global_pruning": False})
    make = _calibration(state)

    def on_step(step: int, budget: int, speed_up: float) -> None:
        state.say(f"prune search: uniform step {step}/{budget}: MACs speed-up {speed_up:.3f}x, latency target "
                  f"{cfg.prune.speed_up}x")

    return prune_to_latency_in_run(
        twin, pruner, example, cfg.prune.speed_up, device=state.device, batch=cfg.prune.latency_batch,
        dtype=resolve_latency_dtype(cfg.eval.latency_dtype, state.device), num_classes=state.num_classes,
        input_size=state.input_size, to_device=state.to_device, calibrate=None if make is None else make(twin, pruner),
        describe=f"model {cfg.model.name} with method {cfg.method.name} (uniform allocation)", on_step=on_step,
        say=state.say)


def proxy_score(state: RunState):
    """score(model): its BatchNorm statistics re-estimated on prune.search.recalibration_batches training batches
    (the same batches for every candidate), then its top-1 on the holdout. The test split is never read."""
    cfg, settings = state.cfg, state.cfg.prune.search
    batch = cfg.schedule.finetune.batch_size

    def score(model) -> float:
        # drawn again for each candidate (not held: at 224 px they would take GBs): the same seeded stream
        recal = training_batches(state.data, batch, settings.recalibration_batches,
                                 seed=stream_seed(cfg.seed, len(STAGES)))
        reestimate_batchnorms(model, recal, state.device, state.fast)
        return evaluate(model, state.data.holdout_batches(EVAL_BATCH, settings.holdout), state.device,
                        state.fast)["acc"]

    return score


def prune_by_search(state: RunState, run, options: dict) -> dict:
    """The winner of the search, as the prune stage's other paths return their result (model and history
    included); `options` are build_pruner's keyword arguments as the run gives them."""
    cfg = state.cfg
    check_per_group_ratios(state.model, state.num_classes, f"model {cfg.model.name}")  # also without a pre-flight
    one_shot = OneShot(state.model, state.data.example_input(1), state.spec, state.num_classes, options,
                       _twin_calibration(state), seed=cfg.seed)
    if not one_shot.groups:
        raise NoPerGroupRatiosError(f"model {cfg.model.name} has no dependency group to prune; "
                                    "prune.allocation=search has nothing to allocate")
    path, score = run.dir.path / CANDIDATES_FILE, proxy_score(state)
    stop, target, row_hash = None, cfg.prune.speed_up, run.hash
    started = time.perf_counter()
    if cfg.prune.target == "latency":
        stop = uniform_latency_stop(state, options)
        # the candidates' MACs target comes from readings: rows scored at another one (a killed search whose
        # rerun read otherwise) are not resumed
        target = stop["speed_up"]
        row_hash = f"{run.hash}@{target:.6g}"
        state.say(f"prune search: the uniform allocation reaches the {cfg.prune.speed_up}x latency target at "
                  f"{target:.3f}x fewer MACs ({stop['latency']['decided']}); candidates are drawn there")
    outcome = search_widths(one_shot, target, cfg.prune.max_pruning_ratio, cfg.prune.search, cfg.seed, score, path,
                            row_hash, say=state.say)
    s = outcome.summary
    result = {"model": outcome.winner.model, "history": outcome.winner.history, "steps": 1,
              "speed_up": outcome.winner.speed_up, "base_macs": one_shot.base_macs, "macs": outcome.winner.macs}
    if stop is not None:
        result = _latency_winner(state, one_shot, outcome, stop, path, score, result)
        result["latency"]["prune_s"] = time.perf_counter() - started  # the rule, the search and the finalists
    try:
        plot_search(outcome.rows, run.dir.path / SEARCH_PLOT, target, winner=s["winner"],
                    title=f"{cfg.model.name} / {cfg.method.name}: {cfg.prune.search.sampler} search")
    except Exception as err:  # a plot must never fail a run
        state.say(f"[yellow]{SEARCH_PLOT} not written: {err}[/yellow]")
    which = f"#{s['winner'] + 1} ({s['winner_kind']})" if s["winner"] is not None else s["winner_kind"]
    state.say(f"prune search: {s['candidates']} candidates in {s['seconds']:.1f} s; winner {which} "
              f"proxy {s['winner_proxy']:.4f}, uniform {_fmt(s['uniform_proxy'])}, global {_fmt(s['global_proxy'])}")
    return {**result, "search": s}


def _latency_winner(state: RunState, one_shot: OneShot, outcome, stop: dict, path, score, result: dict) -> dict:
    """The finalists read with the latency meter against the stage's input model; the best by the proxy that
    reaches the target wins, else the uniform allocation at the latency rule's stop. Fills the summary's
    `latency` part and returns the stage's result, with the rule's `latency` record (a finalist's readings in it
    when one won)."""
    cfg, s = state.cfg, outcome.summary
    meter = LatencyMeter(state.model, (3, state.input_size, state.input_size), state.device,
                         resolve_latency_dtype(cfg.eval.latency_dtype, state.device), cfg.prune.latency_batch)
    winner = read_finalists(outcome.rows, lambda row: pruned_again(one_shot, row), meter, cfg.prune.speed_up, path,
                            say=state.say)
    finalists = sorted((r for r in outcome.rows if r["latency"] is not None), key=lambda r: (-r["proxy"], r["index"]))
    readings = [m for r in finalists for m in r["latency"]["readings"]]
    latency = {**stop["latency"], "measurements": stop["latency"]["measurements"] + len(readings),
               "measure_s": stop["latency"]["measure_s"] + sum(m["seconds"] for m in readings)}
    s["latency"] = {"target": cfg.prune.speed_up, "macs_target": stop["speed_up"],
                    "uniform_stop": {"decided": stop["latency"]["decided"], "speed_up": stop["latency"]["speed_up"],
                                     "macs_speed_up": stop["speed_up"]},
                    "finalists": [{"index": r["index"], "kind": r["kind"], "proxy": r["proxy"],
                                   "speed_up": r["latency"]["speed_up"], "reached": r["latency"]["reached"]}
                                  for r in finalists]}
    if winner is not None:
        row = next(r for r in finalists if r["latency"]["reached"])  # in proxy order: the first that passed
        last = row["latency"]["readings"][-1]
        s.update(winner=row["index"], winner_kind=row["kind"], winner_proxy=row["proxy"])
        s["latency"]["won"] = "finalist"
        latency.update(decided=CONFIRMED, speed_up=last["ratio"], speed_up_iqr=[last["q1"], last["q3"]], noisy=False)
        return {**result, "model": winner.model, "history": winner.history, "speed_up": winner.speed_up,
                "macs": winner.macs, "latency": latency}
    state.say(f"prune search: no finalist reached the {cfg.prune.speed_up}x latency target in "
              f"{len(readings)} readings; the uniform allocation at the latency stop wins")
    s.update(winner=None, winner_kind=UNIFORM_AT_STOP, winner_proxy=float(score(stop["model"])))
    s["latency"]["won"] = UNIFORM_AT_STOP
    return {**result, "model": stop["model"], "history": stop["history"], "steps": stop["steps"],
            "speed_up": stop["speed_up"], "macs": stop["macs"], "latency": latency}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
