"""The five stages. Each is a small function over the run state that returns
(metrics, checkpoint payload or None = the upstream checkpoint is the output)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from ..config import STAGES, StageSchedule
from ..data.base import stream_seed
from ..export import export_model
from ..latency.dtype import as_deployed, latency_env, resolve_latency_dtype
from ..latency.meter import MAX_SPREAD, compare_latency
from ..models import build_model, get_model_spec
from ..pruning import (
    SMALL_NORM,
    MacCounter,
    ObdcCalibration,
    Regularizer,
    build_pruner,
    build_regularizer,
    channel_group_norms,
    grad_calibration,
    progressive_prune,
    prune_to_latency_in_run,
    regularizer_from_config,
    resolve_round_to,
)
from ..pruning.weight_scale import restore_weight_scale
from ..report import build_results, chance_threshold, chance_warning, plot_importance, print_results
from ..tracking.progress import stage_progress
from ..train.batchnorm import (
    EPOCH_BN_STATS_BATCHES,
    batchnorms,
    reestimate_batchnorms,
    slow_batchnorms,
    training_batches,
)
from ..train.distill import Distiller
from ..train.loop import evaluate, make_optimizer, make_scheduler, train_epoch
from .distributed import barrier, wrap_ddp
from .files import atomic_write_json
from .records import StageDir, teacher_record
from .search_stage import prune_by_search
from .state import RunState

EVAL_BATCH = 256  # images per evaluation batch


@dataclass
class StageRun:
    name: str
    dir: StageDir
    stage_config: dict  # the config this stage depends on, upstream included
    hash: str
    resume: Optional[dict]  # the epoch checkpoint to continue from, if any


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def measure(state: RunState, model) -> dict:
    """Top-1 accuracy, MACs and parameters of `model` (the MACs from its current shapes)."""
    metrics = evaluate(model, state.data.eval_batches(EVAL_BATCH), state.device, state.fast)
    macs, params = MacCounter(model, state.data.example_input(1)).count(model)
    return {"acc": metrics["acc"], "eval_loss": metrics["loss"], "macs": int(macs), "params": int(params)}


def warn_if_chance(state: RunState, acc: float, what: str) -> None:
    """A run that ends (or starts) at chance accuracy says so, with the likeliest fix."""
    cfg = state.cfg
    base = state.records.get("pretrain", {}).get("metrics", {}).get("acc")
    if what == "final" and base is not None and base >= chance_threshold(state.num_classes):
        hint = "the base model had learned, so pruning lost it: lower prune.speed_up or raise schedule.finetune.epochs"
    elif (cfg.dataset.name == "digits" and not cfg.model.pretrained
          and get_model_spec(cfg.model.name).family in ("torchvision", "timm")):
        hint = DIGITS_TORCHVISION_HINT
    else:
        hint = (f"check schedule.pretrain (lr {cfg.schedule.pretrain.lr}, {cfg.schedule.pretrain.epochs} epochs) "
                "and the data")
    text = chance_warning(acc, state.num_classes, what, hint)
    if text is not None:
        state.say(f"[yellow]{text}[/yellow]")


# an ImageNet architecture trained from scratch on 1,437 upscaled 8x8 digits (scripts/bench_digits_torchvision.py)
DIGITS_TORCHVISION_HINT = ("ImageNet architectures trained from scratch on the 1,437 digits images can stay there; "
                           "the CIFAR models learn them in schedule=demo (model=resnet20), or start from "
                           "ImageNet weights (model.pretrained=true)")


def fit(state: RunState, run: StageRun, sched: StageSchedule, regularizer=None,
        coef: Callable[[int], float] = lambda epoch: 0.0, on_epoch_end: Optional[Callable[[], None]] = None,
        criterion: Optional[Callable] = None) -> dict:
    """Train `state.model` for `sched.epochs`, saving an epoch checkpoint after each epoch."""
    model, cfg, data = state.model, state.cfg, state.data
    opt = make_optimizer(model, sched)
    steps = data.steps_per_epoch(sched.batch_size)
    scheduler = make_scheduler(opt, sched, steps)
    start = 0
    if run.resume is not None:
        model.load_state_dict(run.resume["state_dict"])
        opt.load_state_dict(run.resume["optimizer"])
        scheduler.load_state_dict(run.resume["scheduler"])
        if regularizer is not None and run.resume.get("regularizer") is not None:
            regularizer.load_state_dict(run.resume["regularizer"])
        _set_rng_state(run.resume["rng"])
        start = run.resume["epoch"] + 1
        state.say(f"{run.name}: resuming at epoch {start + 1}/{sched.epochs}")
    train_model = wrap_ddp(model, state.dist, state.device)
    if cfg.fast.compile:
        torch._dynamo.reset()  # the model may have changed shape since the last compile (pruning)
        train_model = torch.compile(train_model)
    data_seed = stream_seed(cfg.seed, STAGES.index(run.name))  # distinct shuffles per stage, fixed per seed
    # re-estimated before each validation: slow ones (momentum 0.01) lag far behind in a short schedule, and
    # under a regularizer the shrinking weights outrun every running average (train/batchnorm.py)
    stale_bn = batchnorms(model) if regularizer is not None else slow_batchnorms(model)
    last: dict = {}
    with stage_progress(state.console, cfg.progress and state.dist.is_main, run.name, sched.epochs, start) as bar:
        for epoch in range(start, sched.epochs):
            reg_fn = None
            if regularizer is not None:
                regularizer.refresh()
                strength = coef(epoch)

                def reg_fn(strength=strength):
                    regularizer.apply(strength)

            batches = bar.steps(data.train_batches(sched.batch_size, epoch, data_seed), steps)
            last = train_epoch(train_model, batches, opt, scheduler, state.device, state.fast,
                               regularize=reg_fn, criterion=criterion)
            if on_epoch_end is not None:
                on_epoch_end()
            if stale_bn:
                bn_batches = islice(data.train_batches(sched.batch_size, epoch, data_seed), EPOCH_BN_STATS_BATCHES)
                reestimate_batchnorms(model, bn_batches, state.device, state.fast, layers=stale_bn)
            val = evaluate(model, data.eval_batches(EVAL_BATCH), state.device, state.fast)
            last.update(val_acc=val["acc"], val_loss=val["loss"])
            if regularizer is not None:
                last.update(reg_coef=coef(epoch), **{f"reg_{k}": v for k, v in regularizer.stats().items()})
            state.log.log(run.name, epoch, **last)
            if state.dist.is_main:
                payload = {**state.payload(), "optimizer": opt.state_dict(), "scheduler": scheduler.state_dict(),
                           "regularizer": regularizer.state_dict() if regularizer is not None else None,
                           "rng": _rng_state()}
                run.dir.save_epoch(epoch, payload, run.hash)
            barrier(state.dist)
            bar.epoch_done()
            state.say(f"{run.name} epoch {epoch + 1}/{sched.epochs}: loss {last['loss']:.4f} "  # with or without bars
                      f"val acc {val['acc']:.4f} lr {last['lr']:.4g}")
    return last


def pretrain(state: RunState, run: StageRun):
    cfg = state.cfg
    if cfg.base_checkpoint:
        state.model, state.history = state.load(Path(cfg.base_checkpoint), state.base_sha)  # the file hashed
        state.say(f"pretrain: loaded {cfg.base_checkpoint}")
    else:
        torch.manual_seed(cfg.seed)  # the same initial weights for every run of this seed
        state.model = state.to_device(build_model(cfg.model.name, state.num_classes, cfg.model.pretrained,
                                                  input_size=state.input_size))
        state.history = []
        fit(state, run, cfg.schedule.pretrain)
    metrics = measure(state, state.model)
    warn_if_chance(state, metrics["acc"], "base")
    return metrics, state.payload()


def pruner_options(state: RunState) -> dict:
    """build_pruner's keyword arguments as the run's config gives them (the stages' and the pre-flight check's)."""
    cfg = state.cfg
    round_to = resolve_round_to(cfg.prune.round_to, state.device,
                                resolve_latency_dtype(cfg.eval.latency_dtype, state.device))
    return dict(steps=cfg.prune.iterative_steps, max_pruning_ratio=cfg.prune.max_pruning_ratio,
                global_pruning=cfg.prune.allocation == "global", round_to=round_to, normalizer=cfg.method.normalizer)


def _pruner(state: RunState):
    return build_pruner(state.model, state.data.example_input(1), state.spec, state.num_classes,
                        **pruner_options(state))


def sparse_train(state: RunState, run: StageRun):
    cfg, m = state.cfg, state.cfg.method
    state.ensure_model(run.name)
    pruner = _pruner(state)  # only for its dependency graph: the regularizer's groups
    regularizer, strength = regularizer_from_config(state.spec.regularizer, state.model, pruner, m)

    def coef(epoch: int) -> float:
        """Warm-up: the coefficient ramps linearly over the first `reg_warmup` epochs."""
        warm = 1.0 if m.reg_warmup <= 0 else min(1.0, (epoch + 1) / m.reg_warmup)
        return strength * warm

    fit(state, run, cfg.schedule.sparse_train, regularizer, coef, on_epoch_end=regularizer.epoch_end)
    metrics = measure(state, state.model)
    stats = regularizer.stats()
    metrics.update({f"reg_{k}": v for k, v in stats.items()})
    state.say(f"sparse_train: {100 * stats['frac_below_1e-2']:.1f}% of {stats['channels']} channels have "
              f"{regularizer.NEAR_ZERO} below {SMALL_NORM:g} (the mass pruning can remove at no cost)")
    warning = weak_sparsity_warning(stats["frac_below_1e-2"], m.reg, regularizer.NEAR_ZERO)
    if warning:
        state.say(f"[yellow]{warning}[/yellow]")
    return metrics, state.payload()


WEAK_SPARSITY = 0.05  # below this fraction of channels near zero, sparse training did almost nothing


def weak_sparsity_warning(frac_below: float, reg: float, near_zero: str = Regularizer.NEAR_ZERO) -> str | None:
    """One line when sparse training left almost no channel near zero, with a stronger coefficient to try."""
    if frac_below >= WEAK_SPARSITY:
        return None
    return (f"warning: sparse training left only {100 * frac_below:.1f}% of channels with {near_zero} below "
            f"{SMALL_NORM:g}, so pruning will cut live channels; try a stronger method.reg={10 * reg:.3g} "
            f"(now {reg:g}) or more schedule.sparse_train.epochs")


def prune(state: RunState, run: StageRun):
    cfg = state.cfg
    model = state.ensure_model(run.name)
    example = state.data.example_input(1)
    pruner = _pruner(state)
    if state.dist.is_main:
        _plot_importance(state, pruner, run.dir.path / "sparsity.png")
    calibrate = None
    calib = list(state.data.calib_batches(64, cfg.method.importance_batches, cfg.seed))
    if state.spec.calibration == "grad":
        def calibrate():
            model.eval()
            grad_calibration(model, calib)
    elif state.spec.calibration == "obdc":
        obdc = ObdcCalibration(pruner, cfg.seed)

        def calibrate():
            model.eval()
            obdc(model, calib)

    random.seed(cfg.seed)  # random importance (and any other draw) picks the same channels on every rerun
    torch.manual_seed(cfg.seed)

    def on_step(step: int, budget: int, speed_up: float) -> None:
        state.say(f"prune step {step}/{budget}: MACs speed-up {speed_up:.3f}x, target {cfg.prune.speed_up}x"
                  + (" measured latency" if cfg.prune.target == "latency" else ""))

    round_to = pruner_options(state)["round_to"]  # the channel multiple, auto resolved for this device
    if cfg.prune.round_to == "auto":
        state.say(f"prune: round_to=auto is {round_to} on {state.device.type} "
                  f"{resolve_latency_dtype(cfg.eval.latency_dtype, state.device)} (pruning/round_to.py): pruned layers "
                  f"keep a multiple of {round_to} channels")
    describe = f"model {cfg.model.name} with method {cfg.method.name}"
    if cfg.prune.allocation == "search":  # candidates pruned in one shot from copies, the best kept (search_stage.py)
        result = prune_by_search(state, run, pruner_options(state))
        model, history = result.pop("model"), result.pop("history")
    elif cfg.prune.target == "latency":  # may step back to an earlier, rebuilt model (a stop past the need)
        result = prune_to_latency_in_run(
            model, pruner, example, cfg.prune.speed_up, device=state.device, batch=cfg.prune.latency_batch,
            dtype=resolve_latency_dtype(cfg.eval.latency_dtype, state.device), num_classes=state.num_classes,
            input_size=state.input_size, to_device=state.to_device, calibrate=calibrate, describe=describe,
            on_step=on_step, say=state.say)
        model, history = result.pop("model"), result.pop("history")
    else:
        result = progressive_prune(model, pruner, MacCounter(model, example), cfg.prune.speed_up,
                                   calibrate=calibrate, describe=describe, on_step=on_step)
        history = pruner.pruning_history()
    state.history = state.history + [tuple(h) for h in history]
    state.model = state.to_device(model)  # pruned layers are new Parameters: keep device and memory format
    stale = measure(state, state.model) if cfg.prune.bn_stats_batches > 0 else None
    if stale is not None:
        batches = training_batches(state.data, cfg.schedule.finetune.batch_size, cfg.prune.bn_stats_batches,
                                   seed=stream_seed(cfg.seed, len(STAGES)))  # a stream no training stage draws
        used = reestimate_batchnorms(state.model, batches, state.device, state.fast)
    settled = restore_weight_scale(state.model, example) if cfg.prune.restore_weight_scale else None
    metrics = measure(state, state.model)
    acc_line = f"acc before fine-tuning {metrics['acc']:.4f}"
    if stale is not None:
        metrics.update(acc_before_bn_recal=stale["acc"], eval_loss_before_bn_recal=stale["eval_loss"],
                       bn_recal_batches=used)
        acc_line += f" after BN recalibration on {used} batches ({stale['acc']:.4f} without)"
    if settled is not None:
        metrics.update(rescaled_filters=settled["rescaled"], zeroed_filters=settled["zeroed"])
        acc_line += f"; {settled['rescaled']} live filters rescaled to unit norm, {settled['zeroed']} dead ones zeroed"
    state.say(f"prune: {result['steps']} steps, MACs {result['base_macs'] / 1e6:.2f}M -> {metrics['macs'] / 1e6:.2f}M "
              f"({result['speed_up']:.2f}x), {acc_line}")
    metrics.update(steps=result["steps"], speed_up=result["speed_up"], round_to=round_to)  # round_to: as resolved
    if "latency" in result:  # prune.target=latency: what was measured, and what measuring cost
        metrics["latency"] = result["latency"]
    if "search" in result:  # prune.allocation=search: results.json's `search` section
        metrics["search"] = result["search"]
    return metrics, state.payload()


def _plot_importance(state: RunState, pruner, path: Path) -> None:
    """sparsity.png: before pruning, the per-channel magnitudes of what the method's regularizer drives to
    zero (BN scales for slim / group_slim), or group L2 norms for a method without one."""
    name = state.spec.regularizer
    try:
        if name is not None:
            regularizer = build_regularizer(name, state.model, pruner)
            values, what = regularizer.sparsity_values(), regularizer.SPARSIFIES
        else:
            values, what = channel_group_norms(pruner), Regularizer.SPARSIFIES
        plot_importance(values.detach().float().cpu(), path,
                        title=f"{state.cfg.method.name}: {what} before pruning")
    except Exception as err:  # a plot must never fail a run
        state.say(f"[yellow]sparsity.png not written: {err}[/yellow]")


def finetune(state: RunState, run: StageRun):
    state.ensure_model(run.name)
    sched = state.cfg.schedule.finetune
    criterion = None
    if sched.distill.alpha > 0:
        record = teacher_record(state.records)  # loaded once per stage, on every rank (resume included)
        teacher, _ = state.load(Path(record["checkpoint"]), record["sha256"])
        criterion = Distiller(teacher, sched.distill.alpha, sched.distill.temperature)
        state.say(f"finetune: distilling from {record['checkpoint']} (alpha {sched.distill.alpha}, "
                  f"temperature {sched.distill.temperature})")
    fit(state, run, sched, criterion=criterion)
    del criterion  # frees the teacher before evaluation
    return measure(state, state.model), state.payload()


def evaluate_stage(state: RunState, run: StageRun):
    cfg = state.cfg
    model = state.ensure_model(run.name)
    final = measure(state, model)
    warn_if_chance(state, final["acc"], "final")
    latency = None
    if cfg.eval.latency:
        base_model, _ = state.load(Path(state.records["pretrain"]["checkpoint"]),
                                   state.records["pretrain"]["sha256"])
        shape = (3, state.input_size, state.input_size)
        sizes = sorted({1, cfg.eval.latency_batch} | ({cfg.prune.latency_batch} if cfg.prune.target == "latency"
                                                      else set()))
        env = latency_env(state.device, cfg.eval.latency_dtype)  # the device's name and the deployed precision
        # base and final forwards alternate within one measurement: a load that changes meanwhile hits both
        latency = {"device": state.device.type, "device_name": env["device"], "dtype": env["latency_dtype"],
                   "batch_sizes": sizes, "max_spread": MAX_SPREAD,
                   "compare": compare_latency(as_deployed(base_model, env["latency_dtype"]),
                                              as_deployed(model, env["latency_dtype"]), shape, state.device, sizes,
                                              repeats=cfg.eval.latency_repeats)}
        del base_model
    results = build_results(cfg, state.records, final, latency, run_dir=state.run_dir, overrides=state.overrides,
                            device=state.device, world_size=state.dist.world_size)
    if state.data.num_withheld:  # dataset.holdout: images no stage trained on, what a search's trial is scored on
        held = evaluate(model, state.data.withheld_batches(EVAL_BATCH), state.device, state.fast)
        results["holdout"] = {"acc": held["acc"], "images": state.data.num_withheld,
                              "fraction": cfg.dataset.holdout, "train_images": state.data.num_train}
    if cfg.export:
        paths = export_model(model.eval(), state.data.example_input(1), list(cfg.export), run.dir.path / "export")
        results["export"] = {k: str(v) for k, v in paths.items()}
    atomic_write_json(run.dir.path / "results.json", results)  # the run dir links it up to its top
    print_results(state.console, results)
    if "holdout" in results:
        h = results["holdout"]
        state.say(f"holdout accuracy {100 * h['acc']:.2f}% on the {h['images']} training images withheld from "
                  f"training (dataset.holdout={h['fraction']:g}); the final accuracy above is on the test split")
    return {**final, "speed_up": results["speed_up"]}, None


STAGE_FNS: Dict[str, Callable] = {
    "pretrain": pretrain,
    "sparse_train": sparse_train,
    "prune": prune,
    "finetune": finetune,
    "eval": evaluate_stage,
}
MAIN_ONLY = {"prune", "eval"}  # computed on rank 0; other ranks load the result
