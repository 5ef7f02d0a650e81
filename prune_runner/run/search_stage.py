"""The prune stage's side of prune.allocation=search (pruning/width_search.py): the proxy that scores a candidate
(top-1 on the holdout carved from the TRAINING split, after BatchNorm re-estimation on training batches), the
method's calibration on each candidate's copy, and what the stage keeps: the winner, candidates.jsonl and
search.png in the stage's folder, the `search` summary in its metrics (results.json)."""

from __future__ import annotations

from ..config import STAGES
from ..data.base import stream_seed
from ..pruning import ObdcCalibration, grad_calibration
from ..pruning.candidates import NoPerGroupRatiosError, OneShot, check_per_group_ratios
from ..pruning.width_search import CANDIDATES_FILE, search_widths
from ..report.search_plot import SEARCH_PLOT, plot_search
from ..train.batchnorm import reestimate_batchnorms, training_batches
from ..train.loop import evaluate
from .state import RunState

EVAL_BATCH = 256  # holdout images per evaluation batch


def _twin_calibration(state: RunState):
    """calibrate(twin, pruner) for the method's importance (Taylor gradients, OBDC statistics), or None."""
    cfg = state.cfg
    if state.spec.calibration is None:
        return None
    calib = list(state.data.calib_batches(64, cfg.method.importance_batches, cfg.seed))

    def calibrate(twin, pruner) -> None:
        twin.eval()
        if state.spec.calibration == "grad":
            grad_calibration(twin, calib)
        else:
            ObdcCalibration(pruner, cfg.seed)(twin, calib)

    return calibrate


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
    outcome = search_widths(one_shot, cfg.prune.speed_up, cfg.prune.max_pruning_ratio, cfg.prune.search, cfg.seed,
                            proxy_score(state), run.dir.path / CANDIDATES_FILE, run.hash, say=state.say)
    try:
        plot_search(outcome.rows, run.dir.path / SEARCH_PLOT, cfg.prune.speed_up,
                    title=f"{cfg.model.name} / {cfg.method.name}: {cfg.prune.search.sampler} search")
    except Exception as err:  # a plot must never fail a run
        state.say(f"[yellow]{SEARCH_PLOT} not written: {err}[/yellow]")
    winner = outcome.winner
    s = outcome.summary
    state.say(f"prune search: {s['candidates']} candidates in {s['seconds']:.1f} s; winner #{s['winner'] + 1} "
              f"({s['winner_kind']}) proxy {s['winner_proxy']:.4f}, uniform {_fmt(s['uniform_proxy'])}, "
              f"global {_fmt(s['global_proxy'])}")
    return {"model": winner.model, "history": winner.history, "steps": 1, "speed_up": winner.speed_up,
            "base_macs": one_shot.base_macs, "macs": winner.macs, "search": s}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
