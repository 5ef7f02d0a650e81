"""The staged pipeline: a loop over the stages that skips a stage whose completion
record matches the config, reuses one from the stage cache, or runs it (resuming
from its last epoch checkpoint)."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
from rich.console import Console

from .checkpoint import atomic_write_json, read_json
from .config import STAGES, RunConfig
from .distributed import DistInfo, barrier, init_distributed, shutdown
from .errors import UserError
from .methods import get_method
from .metrics_log import MetricsLog
from .records import StageCache, StageDir, config_hash, differing_keys, stage_config
from .results import print_results
from .stages import MAIN_ONLY, STAGE_FNS, StageRun
from .state import RunState
from .train import Precision
from .validate import validate


def resolve_device(name: str, dist: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device '{name}' asked for, but CUDA is not available here; use device=cpu")
        if name == "cuda":
            name = f"cuda:{dist.local_rank}"
        torch.cuda.set_device(torch.device(name))
    return torch.device(name)


def set_determinism(cfg: RunConfig) -> None:
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def _resume_from(cfg: RunConfig) -> tuple[Optional[str], dict]:
    """resume_from=<run_dir>/<stage>: that stage's record and its upstream records."""
    if not cfg.resume_from:
        return None, {}
    src = Path(cfg.resume_from)
    if src.name not in STAGES:
        raise UserError(f"resume_from={cfg.resume_from} must end in a stage folder: one of {', '.join(STAGES)}")
    records = {}
    for stage in STAGES[: STAGES.index(src.name) + 1]:
        rec = read_json(src.parent / stage / "done.json")
        if rec is None:
            raise UserError(f"resume_from={cfg.resume_from}: stage '{stage}' is not finished there")
        records[stage] = rec
    return src.name, records


def build_state(cfg: RunConfig, run_dir: Path, console: Console, overrides: str) -> RunState:
    from .data import build_data
    from .models.torchvision_models import get_model_spec

    dist = init_distributed("cuda" if cfg.device.startswith("cuda") or (
        cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    device = resolve_device(cfg.device, dist)
    set_determinism(cfg)
    on_cuda = device.type == "cuda"
    precision = Precision(amp=on_cuda if cfg.fast.amp is None else cfg.fast.amp,
                          channels_last=on_cuda if cfg.fast.channels_last is None else cfg.fast.channels_last)
    input_size = cfg.model.input_size or get_model_spec(cfg.model.name).input_size
    d = cfg.dataset
    data = build_data(d.name, root=d.root, input_size=input_size, device=device, download=d.download,
                      in_memory=d.in_memory, augment=d.augment, workers=d.workers, rank=dist.rank,
                      world_size=dist.world_size, train_limit=d.train_limit)
    state = RunState(cfg=cfg, run_dir=run_dir, device=device, dist=dist, data=data, spec=get_method(cfg.method.name),
                     log=MetricsLog(run_dir, dist.is_main, cfg.logger), console=console, precision=precision,
                     input_size=input_size, overrides=overrides)
    return state


def _plan(cfg: RunConfig, run_dir: Path, has_reg: bool, upstream: dict, first: int) -> list:
    """(stage, action, flat config, record) for every stage; action: upstream | done | run | not selected."""
    plan = []
    for stage in STAGES:
        if stage in upstream:
            plan.append((stage, "upstream", None, upstream[stage]))
            continue
        flat = stage_config(cfg, stage, has_reg, first_stage=STAGES[min(first, len(STAGES) - 1)],
                            upstream_hash=upstream[STAGES[first - 1]]["hash"] if upstream else None)
        record = StageDir(run_dir, stage).record()
        if record is not None and record.get("hash") == config_hash(flat):
            action = "done"
        elif record is not None and cfg.resume != "overwrite":
            keys = differing_keys(record.get("config", {}), flat)
            raise UserError(f"{stage} in {run_dir} was finished with another config (differs in: {', '.join(keys)}); "
                            "add resume=overwrite to redo it, or choose another run_dir")
        else:
            action = "run" if stage in cfg.stages else "not selected"
        plan.append((stage, action, flat, record))
    return plan


def _report_architecture(state: RunState) -> None:
    """Each rank prints a fingerprint of its final model's shapes: they must agree under DDP."""
    if state.model is None and state.pending is None:
        return
    model = state.ensure_model("eval")
    shapes = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    digest = hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]
    print(f"rank {state.dist.rank}/{state.dist.world_size}: architecture {digest}", flush=True)


def run_pipeline(cfg: RunConfig, run_dir: Path, console: Optional[Console] = None, overrides: str = "") -> dict:
    """Run (or resume) every configured stage in `run_dir`; returns the completion records."""
    cfg = validate(cfg)  # with the method's defaults filled in
    console = console or Console(soft_wrap=True)  # long paths stay on one line in logs
    run_dir = Path(run_dir)
    state = build_state(cfg, run_dir, console, overrides)
    has_reg = state.spec.regularizer is not None
    cache = StageCache(cfg.out_root)
    start_stage, upstream = _resume_from(cfg)
    first = STAGES.index(start_stage) + 1 if start_stage else 0
    plan = _plan(cfg, run_dir, has_reg, upstream, first)  # refuses a changed config before anything is written
    state.say(f"run dir: {run_dir}")
    if state.dist.is_main:
        atomic_write_json(run_dir / "config.json", asdict(cfg))  # the resolved config, with or without Hydra
    ran = []
    for stage, action, flat, record in plan:
        stage_dir = StageDir(run_dir, stage)
        if action == "upstream":  # taken from another run as is
            source = str(Path(cfg.resume_from).parent / stage)
            if state.dist.is_main:
                stage_dir.reuse(record, record["config"], source)
            state.use_record(stage, record)
            state.say(f"{stage}: from {source}")
            continue
        if action == "done":
            state.use_record(stage, record)
            state.say(f"{stage}: finished earlier, skipped")
            continue
        if action == "not selected":
            continue
        stage_hash = config_hash(flat)
        if state.dist.is_main and record is not None:
            stage_dir.clear()  # resume=overwrite and a changed config: redo this stage
        hit = cache.lookup(stage, stage_hash) if cfg.cache else None
        if hit is not None and Path(hit[1]).resolve() != stage_dir.path.resolve():
            source, source_dir = hit
            if state.dist.is_main:
                stage_dir.reuse(source, flat, source_dir)
            state.use_record(stage, dict(source, config=flat))
            state.say(f"{stage}: reused from {source_dir}")
            continue
        if stage == "sparse_train" and not has_reg:
            prev = state.records["pretrain"]
            metrics = {**prev["metrics"], "skipped": "no regularizer"}
            state.records[stage] = stage_dir.pass_through(prev, flat, metrics, write=state.dist.is_main)
            state.say(f"{stage}: skipped ({cfg.method.name} has no regularizer)")
            continue
        state.records[stage] = _run_stage(state, stage, stage_dir, flat, stage_hash, cache)
        ran.append(stage)
    state.log.close()
    if state.dist.enabled:
        _report_architecture(state)
        shutdown(state.dist)
    results = read_json(run_dir / "results.json")
    if results and "eval" not in ran and state.dist.is_main:
        print_results(console, results)  # a finished run: show its results again
    return state.records


def _run_stage(state: RunState, stage: str, stage_dir: StageDir, flat: dict, stage_hash: str,
               cache: StageCache) -> dict:
    cfg = state.cfg
    resume = None
    if cfg.resume == "auto":
        resume = stage_dir.latest_epoch(stage_hash, warn=lambda text: state.say(f"[yellow]{text}[/yellow]"))
    run = StageRun(stage, stage_dir, flat, stage_hash, resume)
    state.say(f"[bold]{stage}[/bold]")
    if stage in MAIN_ONLY and state.dist.enabled:
        if state.dist.is_main:
            metrics, payload = STAGE_FNS[stage](state, run)
        else:
            metrics, payload = None, None  # rank 0 computes; this rank loads its record below
    else:
        metrics, payload = STAGE_FNS[stage](state, run)
    record = None
    if state.dist.is_main:
        if payload is None:  # the stage's output is its input model (eval)
            upstream = state.records[STAGES[STAGES.index(stage) - 1]]
            record = stage_dir.pass_through(upstream, flat, metrics)
        else:
            record = stage_dir.finish(payload, flat, metrics)
        if cfg.cache:
            cache.add(stage, stage_hash, stage_dir.path)
    if state.dist.enabled:
        barrier(state.dist)
        if record is None:
            record = stage_dir.record()
        if stage in MAIN_ONLY:
            state.use_record(stage, record)  # every rank continues from rank 0's result
    return record
