"""The staged pipeline: a loop over the stages that skips a stage whose completion
record matches the config, reuses one from the stage cache, or runs it (resuming
from its last epoch checkpoint)."""

from __future__ import annotations

import hashlib
import json
import os
import random
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
from rich.console import Console

from ..config import STAGES, RunConfig
from ..data import build_data
from ..errors import CheckpointError, RecordError, UserError
from ..latency.dtype import latency_inputs
from ..models import get_model_spec
from ..pruning import get_method
from ..report import print_results
from ..tracking.metrics_log import MetricsLog
from ..tracking.mlflow_run import MlflowTracker
from ..train.loop import Fast
from ..validate import validate
from .distributed import DistInfo, barrier, broadcast_object, init_distributed, shutdown
from .files import atomic_write_json, read_json
from .locks import lock_run_dir
from .records import (
    RECORD_FORMAT,
    StageCache,
    StageDir,
    StageInputs,
    chain,
    config_hash,
    differing_keys,
    file_sha256,
    link_or_copy,
    own_config,
    problem_with,
    teacher_key,
)
from .stages import MAIN_ONLY, STAGE_FNS, StageRun
from .state import RunState


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
    """resume_from=<run_dir>/<stage>: that stage's record and its upstream records, each intact."""
    if not cfg.resume_from:
        return None, {}
    src = Path(cfg.resume_from)
    if src.name not in STAGES:
        raise UserError(f"resume_from={cfg.resume_from} must end in a stage folder: one of {', '.join(STAGES)}")
    records = {}
    for stage in STAGES[: STAGES.index(src.name) + 1]:
        rec = StageDir(src.parent, stage).record()
        if rec is None:
            raise UserError(f"resume_from={cfg.resume_from}: stage '{stage}' is not finished there")
        problem = problem_with(rec)
        if problem:
            raise UserError(f"resume_from={cfg.resume_from}: stage '{stage}' cannot be used: {problem}; "
                            "re-run that run first")
        records[stage] = rec
    return src.name, records


def build_state(cfg: RunConfig, run_dir: Path, console: Console, overrides: str, dist: DistInfo,
                tracker=None) -> RunState:
    device = resolve_device(cfg.device, dist)
    set_determinism(cfg)
    fast = Fast.for_device(cfg.fast, device)
    input_size = cfg.model.input_size or get_model_spec(cfg.model.name).input_size
    d = cfg.dataset
    data = build_data(d.name, root=d.root, input_size=input_size, device=device, download=d.download,
                      in_memory=d.in_memory, augment=d.augment, workers=d.workers, rank=dist.rank,
                      world_size=dist.world_size, train_limit=d.train_limit)
    state = RunState(cfg=cfg, run_dir=run_dir, device=device, dist=dist, data=data, spec=get_method(cfg.method.name),
                     log=MetricsLog(run_dir, dist.is_main, cfg.logger, sink=tracker), console=console, fast=fast,
                     input_size=input_size, overrides=overrides)
    return state


def _base_checkpoint_sha(cfg: RunConfig) -> Optional[str]:
    if not cfg.base_checkpoint:
        return None
    path = Path(cfg.base_checkpoint)
    if not path.is_file():
        raise CheckpointError(f"base_checkpoint={path} does not exist" if not path.exists() else
                              f"base_checkpoint={path} is a folder; give the checkpoint.pt file in it")
    return file_sha256(path)


# keys that name upstream content (a checkpoint's hash), not the user's config: a change is redone, not refused
CHAINED_KEYS = ("upstream", "finetune.distill.teacher_sha256")


def _refuse_changed(cfg: RunConfig, run_dir: Path, has_reg: bool, inputs: StageInputs, upstream: dict) -> None:
    """Before anything is written: a finished stage whose own config changed needs resume=overwrite."""
    if cfg.resume == "overwrite":
        return
    for stage in STAGES:
        if stage in upstream:
            continue
        try:
            record = StageDir(run_dir, stage).record()
        except RecordError:
            continue  # unreadable: redone with a warning when the pipeline gets there
        if record is None:
            continue
        if record.get("format") != RECORD_FORMAT:
            raise UserError(f"{stage} in {run_dir} was finished by an older prune-runner; add resume=overwrite "
                            "to redo it, or choose another run_dir")
        old = {k: v for k, v in record.get("config", {}).items() if k not in CHAINED_KEYS}
        keys = differing_keys(old, own_config(cfg, stage, has_reg, inputs))
        if keys:
            raise UserError(f"{stage} in {run_dir} was finished with another config (differs in: {', '.join(keys)}); "
                            "add resume=overwrite to redo it, or choose another run_dir")


def _publish(state: RunState, stage_dir: StageDir, record: dict) -> None:
    """A finished stage's rows and files at the top of the run dir, as if it had just run here."""
    state.log.replace_stage(stage_dir.stage, record.get("log", []))

    def put(name: str, kept: Path) -> None:
        top = state.run_dir / name
        if name == "results.json":
            results = dict(json.loads(kept.read_text()), run_dir=str(state.run_dir), overrides=state.overrides)
            if read_json(top) != results:
                atomic_write_json(top, results)
        elif not top.exists():
            link_or_copy(kept, top)

    stage_dir.publish_artifacts(put)


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
    cfg = validate(cfg)  # with the method's defaults for its schedule filled in: what the stages hash
    console = console or Console(soft_wrap=True)  # long paths stay on one line in logs
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run_dir={run_dir} is a file, not a folder; choose another run_dir")
    dist = init_distributed("cuda" if cfg.device.startswith("cuda") or (
        cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    lock = lock_run_dir(run_dir) if dist.is_main else None  # one writer per run dir, released even on SIGKILL
    tracker = _tracker(cfg, run_dir, console, overrides) if dist.is_main else None
    records, status = None, "FAILED"
    try:
        records = _run_locked(cfg, run_dir, console, overrides, dist, tracker)
        status = "FINISHED"
        return records
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if tracker is not None:
            tracker.close(records, status)
        if lock is not None:
            lock.release()


def _tracker(cfg: RunConfig, run_dir: Path, console: Console, overrides: str):
    """logger=mlflow: the run's MLflow run (tracking/mlflow_run.py), which never fails the run."""
    if cfg.logger != "mlflow":
        return None
    return MlflowTracker(cfg, run_dir, overrides, warn=lambda text: console.print(f"[yellow]{text}[/yellow]"))


def _run_locked(cfg: RunConfig, run_dir: Path, console: Console, overrides: str, dist: DistInfo,
                tracker=None) -> dict:
    state = build_state(cfg, run_dir, console, overrides, dist, tracker)
    state.base_sha = _base_checkpoint_sha(cfg)
    inputs = StageInputs(dataset=state.data.fingerprint, base_checkpoint=state.base_sha,
                         world_size=dist.world_size, amp=bool(state.fast.amp), **latency_inputs(state))
    has_reg = state.spec.regularizer is not None
    cache = StageCache(Path(cfg.out_root) / ".stage_cache", warn=state.warn)
    start_stage, upstream = _resume_from(cfg)
    _refuse_changed(cfg, run_dir, has_reg, inputs, upstream)
    if dist.is_main:
        for stage in STAGES:
            StageDir(run_dir, stage).remove_temp_files()  # left by a killed run; this process holds the lock
        if cfg.cache:
            cache.remove_stale_temp()
    state.say(f"run dir: {run_dir}")
    if cfg.cache:
        state.say(f"stage cache: {cache.root.resolve()}")
    ran: list = []
    consumed: Optional[dict] = None  # the record whose model the next stage starts from
    config_written = False
    for stage in STAGES:
        stage_dir = StageDir(run_dir, stage)
        if stage in upstream:  # taken from another run as is
            source = Path(cfg.resume_from).parent / stage
            record = upstream[stage]
            if dist.is_main:
                record = stage_dir.adopt(record, source, record["config"], consumed)
            record = broadcast_object(dist, record)
            state.use_record(stage, record)
            state.say(f"{stage}: from {source}")
            consumed = record
            continue
        own = own_config(cfg, stage, has_reg, inputs)
        if stage == "finetune":
            own.update(teacher_key(cfg, state.records))  # the teacher stage has finished by now
        stage_config = chain(own, consumed)
        stage_hash = config_hash(stage_config)
        action, record = broadcast_object(dist, _decide(state, stage, stage_dir, stage_config, stage_hash, cache)
                                          if dist.is_main else None)
        if action == "not selected":
            continue
        if action == "done":
            state.use_record(stage, record)
            if dist.is_main:
                _publish(state, stage_dir, record)
            state.say(f"{stage}: finished earlier, skipped")
        elif action == "reuse":
            entry = Path(record["entry"])
            if dist.is_main:
                record = stage_dir.adopt(record, entry, stage_config, consumed)
                _publish(state, stage_dir, record)
            record = broadcast_object(dist, record)
            state.use_record(stage, record)
            state.say(f"{stage}: reused from {record['reused_from']}")
        elif action == "pass":
            metrics = {**consumed["metrics"], "skipped": "no regularizer"}
            record = stage_dir.pass_through(consumed, stage_config, metrics, [], write=dist.is_main)
            state.records[stage] = record
            state.say(f"{stage}: skipped ({cfg.method.name} has no regularizer)")
        else:
            _check_inputs(state, stage)
            with _entry_lock(state, cache, stage, stage_hash):
                record = _run_stage(state, stage, stage_dir, stage_config, stage_hash, cache, consumed)
                state.records[stage] = record
            ran.append(stage)
        if dist.is_main and action != "done" and not config_written:
            atomic_write_json(run_dir / "config.json", asdict(cfg))  # the config the run dir's stages came from
            config_written = True
        consumed = record
    state.log.close()
    if state.dist.enabled:
        _report_architecture(state)
        shutdown(state.dist)
    results = read_json(run_dir / "results.json") if "eval" in state.records else None
    if results and "eval" not in ran and state.dist.is_main:
        print_results(console, results)  # a finished run: show its results again
    return state.records


def _decide(state: RunState, stage: str, stage_dir: StageDir, stage_config: dict, stage_hash: str,
            cache: StageCache) -> tuple[str, Optional[dict]]:
    """(action, record): done | reuse (record of the cache entry) | pass | run | not selected."""
    cfg = state.cfg
    try:
        record = stage_dir.record()
    except RecordError as err:
        state.warn(f"{stage}: {err}; computing the stage again")
        record = None
    if record is not None and record.get("hash") == stage_hash:
        problem = problem_with(record)
        if problem is None:
            return "done", record
        state.warn(f"{stage}: the finished stage cannot be used: {problem}; computing it again")
    elif record is not None and cfg.resume == "auto" and stage in cfg.stages:
        state.say(f"{stage}: its upstream stage changed; computing it again")
    if stage not in cfg.stages:
        return "not selected", None
    if stage == "sparse_train" and state.spec.regularizer is None:
        return "pass", None
    if cfg.cache:
        hit = cache.lookup(stage, stage_hash)
        if hit is not None:
            entry_record, entry = hit
            return "reuse", dict(entry_record, entry=str(entry))
    return "run", None


@contextmanager
def _entry_lock(state: RunState, cache: StageCache, stage: str, stage_hash: str):
    """Rank 0 holds the cache entry of the stage it computes: a concurrent run of the same config waits
    for it and then reuses the result. Under DDP no one waits (every rank must take the same path)."""
    if not state.cfg.cache or state.dist.enabled:
        yield
        return
    with cache.hold(stage, stage_hash, lambda pid: state.say(f"{stage}: process {pid} is computing the same "
                                                             "stage; waiting for it")):
        yield


def _check_inputs(state: RunState, stage: str) -> None:
    """A stage that needs the result of a stage this run neither has nor runs: one line, not a KeyError."""
    needs = {"eval": ("pretrain", "prune")}.get(stage, ())
    missing = [s for s in needs if s not in state.records]
    if missing:
        raise UserError(f"stage '{stage}' needs the results of {', '.join(missing)}: add them to stages=[...] "
                        "(stages always run in the order " + ", ".join(STAGES) + ")")


def _run_stage(state: RunState, stage: str, stage_dir: StageDir, stage_config: dict, stage_hash: str,
               cache: StageCache, upstream: Optional[dict]) -> dict:
    cfg = state.cfg
    resume = None
    if cfg.resume == "auto":
        resume = stage_dir.latest_epoch(stage_hash, warn=lambda text: state.say(f"[yellow]{text}[/yellow]"))
    run = StageRun(stage, stage_dir, stage_config, stage_hash, resume)
    if state.dist.is_main:
        state.log.drop_from(stage, 0 if resume is None else resume["epoch"] + 1)  # rows about to be logged again
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
        log = state.log.rows(stage)
        if payload is None:  # the stage's output is its input model (eval)
            record = stage_dir.pass_through(upstream, stage_config, metrics, log)
        else:
            record = stage_dir.finish(payload, stage_config, metrics, log)
        if cfg.cache:
            cache.add(stage, stage_hash, stage_dir, record)
    if state.dist.enabled:
        barrier(state.dist)
        if record is None:
            record = stage_dir.record()
        if stage in MAIN_ONLY:
            state.use_record(stage, record)  # every rank continues from rank 0's result
    return record
