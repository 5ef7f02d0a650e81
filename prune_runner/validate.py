"""Checks of a RunConfig that Hydra's types cannot express; each failure is one line.

The one place a run's config is checked before anything runs (cli.py only turns Hydra's type errors into
one line): names, ranges, and the optional packages that `export` and `logger` need, so that a missing one
fails now and not after hours of training.
"""

from __future__ import annotations

import importlib.util
import math

from .config import STAGES, RunConfig
from .data import list_datasets
from .errors import UnknownChoiceError, UserError
from .export import validate_formats
from .latency.dtype import check_latency_dtype
from .models import get_model_spec
from .models.support import check_supported
from .pruning import METHODS, NORMALIZERS, check_round_to, resolve_method_defaults
from .pruning.samplers import SAMPLERS
from .search import objective_names
from .tracking.mlflow_run import check_installed as mlflow_installed

LR_SCHEDULES = ("constant", "cosine", "step")
RESUME_MODES = ("auto", "overwrite")
LOGGERS = ("jsonl", "tensorboard", "mlflow")
PRUNE_TARGETS = ("latency", "macs")
ALLOCATIONS = ("global", "search", "uniform")  # prune.allocation


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _non_negative(name: str, value: float) -> None:
    _check(value is None or (math.isfinite(value) and value >= 0), f"{name}={value} is invalid; it must be >= 0")


def validate(cfg: RunConfig) -> RunConfig:
    """Check `cfg`; return it with the method's defaults filled in (what the run records and hashes)."""
    spec = get_model_spec(cfg.model.name)  # raises UnknownChoiceError naming the choices, or "not supported"
    if cfg.dataset.name not in list_datasets():
        raise UnknownChoiceError("dataset", cfg.dataset.name, list_datasets())
    holdout = cfg.dataset.holdout
    _check(holdout is None or (math.isfinite(holdout) and 0 < holdout < 1),
           f"dataset.holdout={holdout} is invalid; it is a fraction of the training split, in (0, 1), or null "
           "(nothing withheld)")
    METHODS.get(cfg.method.name)
    check_supported(cfg.model.name, cfg.method.name, spec.family)
    m = cfg.method
    if m.normalizer is not None and m.normalizer not in NORMALIZERS:
        raise UnknownChoiceError("method.normalizer", m.normalizer, NORMALIZERS)
    for key in ("reg", "alpha", "delta_reg"):
        if getattr(m, key) is not None:  # None: the method's default for the schedule (method_defaults.py)
            _non_negative(f"method.{key}", getattr(m, key))
    for key in ("reg_warmup", "reg_update_every", "importance_batches"):
        _non_negative(f"method.{key}", getattr(m, key))
    calibration = METHODS.get(m.name).calibration
    _check(calibration is None or m.importance_batches >= 1,
           f"method.importance_batches={m.importance_batches} is invalid for method {m.name}: it scores channels "
           "from the gradients of these batches, so it needs at least 1")
    _check(0 <= cfg.seed < 2**32, f"seed={cfg.seed} is invalid; it must be in [0, 2^32) (the generators keep 32 bits)")
    for stage in ("pretrain", "sparse_train", "finetune"):
        s = getattr(cfg.schedule, stage)
        for key in ("epochs", "lr", "momentum", "weight_decay", "warmup_epochs", "lr_gamma"):
            _non_negative(f"schedule.{stage}.{key}", getattr(s, key))
        _check(s.batch_size >= 1, f"schedule.{stage}.batch_size={s.batch_size} is invalid; it must be >= 1")
        _check(all(0 <= x <= 1 for x in s.milestones) and list(s.milestones) == sorted(s.milestones),
               f"schedule.{stage}.milestones={list(s.milestones)} is invalid; they are increasing fractions of "
               "the epochs, each in [0, 1]")
        if s.lr_schedule not in LR_SCHEDULES:
            raise UnknownChoiceError(f"schedule.{stage}.lr_schedule", s.lr_schedule, LR_SCHEDULES)
    kd = cfg.schedule.finetune.distill
    _check(0 <= kd.alpha <= 1, f"schedule.finetune.distill.alpha={kd.alpha} is invalid; it must be in [0, 1] (0 = off)")
    _check(math.isfinite(kd.temperature) and kd.temperature > 0,
           f"schedule.finetune.distill.temperature={kd.temperature} is invalid; it must be > 0")
    p = cfg.prune
    _check(math.isfinite(p.speed_up) and p.speed_up >= 1,
           f"prune.speed_up={p.speed_up} is invalid; it is the target speed-up (prune.target={p.target}) "
           "and must be >= 1")
    _check(p.iterative_steps >= 1, f"prune.iterative_steps={p.iterative_steps} is invalid; it must be >= 1")
    _check(0 < p.max_pruning_ratio <= 1, f"prune.max_pruning_ratio={p.max_pruning_ratio} is invalid; "
                                         "it must be in (0, 1] (a layer always keeps one channel)")
    _non_negative("prune.bn_stats_batches", p.bn_stats_batches)
    _non_negative("prune.preflight_s", p.preflight_s)  # seconds; 0 = no pre-flight check
    _check_latency_options(cfg)
    _check_allocation(cfg)
    for stage in cfg.stages:
        if stage not in STAGES:
            raise UnknownChoiceError("stage", stage, STAGES)
    if cfg.resume not in RESUME_MODES:
        raise UnknownChoiceError("resume mode", cfg.resume, RESUME_MODES)
    _check_dependencies(cfg)
    _check(cfg.eval.latency_batch >= 1 and cfg.eval.latency_repeats >= 1,
           "eval.latency_batch and eval.latency_repeats must be >= 1")
    dev = cfg.device
    _check(dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:"),
           f"unknown device '{dev}'; choose one of: auto, cpu, cuda, cuda:N")
    return resolve_method_defaults(cfg)


def _check_latency_options(cfg: RunConfig) -> None:
    p = cfg.prune
    if p.target not in PRUNE_TARGETS:
        raise UnknownChoiceError("prune.target", p.target, PRUNE_TARGETS)
    _check(p.latency_batch >= 1, f"prune.latency_batch={p.latency_batch} is invalid; it must be >= 1")
    check_round_to(p.round_to)
    check_latency_dtype(cfg.eval.latency_dtype)


def _check_allocation(cfg: RunConfig) -> None:
    p, s = cfg.prune, cfg.prune.search
    if p.allocation not in ALLOCATIONS:
        raise UnknownChoiceError("prune.allocation", p.allocation, ALLOCATIONS)
    SAMPLERS.get(s.sampler)  # one line naming the samplers
    _check(s.sampler != "tpe" or p.allocation != "search" or importlib.util.find_spec("optuna") is not None,
           "prune.search.sampler=tpe needs the optional dependency Optuna: pip install 'prune-runner[search]'")
    _check(s.candidates >= 1, f"prune.search.candidates={s.candidates} is invalid; it must be >= 1 (uniform and "
                              "global are the first two)")
    _check(s.recalibration_batches >= 1, f"prune.search.recalibration_batches={s.recalibration_batches} is invalid; "
                                         "it must be >= 1")
    _check(math.isfinite(s.holdout) and 0 < s.holdout < 1,
           f"prune.search.holdout={s.holdout} is invalid; it is a fraction of the training split, in (0, 1)")


def _check_dependencies(cfg: RunConfig) -> None:
    """Export formats and the logger exist, and their optional packages are installed."""
    if cfg.logger not in LOGGERS:
        raise UnknownChoiceError("logger", cfg.logger, LOGGERS)
    if cfg.logger == "tensorboard":
        try:  # an optional dependency, imported here to see whether it is installed
            import tensorboard  # noqa: F401  (the run imports it at the first log call)
        except ImportError:
            raise UserError("logger=tensorboard needs the optional dependency: "
                            "pip install 'prune-runner[tensorboard]'") from None
    if cfg.logger == "mlflow":
        mlflow_installed()
    validate_formats(list(cfg.export))
    objective_names(cfg.search.objective)  # one registered name or a list of distinct ones, else one line
    _check(cfg.search.min_speed_up is None or cfg.search.min_speed_up >= 1,
           f"search.min_speed_up={cfg.search.min_speed_up} is invalid; it is a MACs speed-up and must be >= 1")
