"""The staged pipeline: a loop over the stages in which the run directory (rundir.py) says whether each
is done, reused, skipped or to run, and the stage functions (stages.py) compute the ones to run."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Optional

import torch
from rich.console import Console

from ..config import STAGES, RunConfig
from ..data import build_data
from ..errors import CheckpointError, UserError
from ..latency.dtype import latency_env
from ..models import get_model_spec
from ..pruning import get_method
from ..report import print_results
from ..tracking.metrics_log import MetricsLog
from ..tracking.mlflow_run import MlflowTracker
from ..train.loop import Fast
from ..validate import validate
from .distributed import DistInfo, init_distributed, shutdown
from .files import read_json
from .locks import lock_run_dir
from .preflight import preflight_run
from .records import StageInputs, file_sha256
from .rundir import Action, RunDir
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


def build_state(cfg: RunConfig, run_dir: Path, console: Console, overrides: str, dist: DistInfo,
                tracker=None) -> RunState:
    device = resolve_device(cfg.device, dist)
    set_determinism(cfg)
    fast = Fast.for_device(cfg.fast, device)
    input_size = cfg.model.input_size or get_model_spec(cfg.model.name).input_size
    d = cfg.dataset
    data = build_data(d.name, root=d.root, input_size=input_size, device=device, download=d.download,
                      in_memory=d.in_memory, augment=d.augment, workers=d.workers, rank=dist.rank,
                      world_size=dist.world_size, train_limit=d.train_limit, holdout=d.holdout)
    state = RunState(cfg=cfg, run_dir=run_dir, device=device, dist=dist, data=data, spec=get_method(cfg.method.name),
                     log=MetricsLog(run_dir, dist.is_main, cfg.logger, sink=tracker), console=console, fast=fast,
                     input_size=input_size, overrides=overrides)
    state.base_sha = _base_checkpoint_sha(cfg)
    return state


def stage_inputs(state: RunState) -> StageInputs:
    """What the run's stages depend on beyond the config text (hashed into their records)."""
    return StageInputs(dataset=state.data.fingerprint, base_checkpoint=state.base_sha,
                       world_size=state.dist.world_size, amp=bool(state.fast.amp),
                       **latency_env(state.device, state.cfg.eval.latency_dtype))


def _base_checkpoint_sha(cfg: RunConfig) -> Optional[str]:
    if not cfg.base_checkpoint:
        return None
    path = Path(cfg.base_checkpoint)
    if not path.is_file():
        raise CheckpointError(f"base_checkpoint={path} does not exist" if not path.exists() else
                              f"base_checkpoint={path} is a folder; give the checkpoint.pt file in it")
    return file_sha256(path)


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
    with RunDir(state, stage_inputs(state)) as rundir:
        rundir.check()
        preflight_run(state)  # pre-flight: a model torch-pruning cannot take apart is refused before training
        for stage in STAGES:
            step = rundir.resolve(stage)
            if step.action is Action.RUN:
                metrics, payload = _compute(state, step.run)
                rundir.commit(stage, payload, metrics)
    _close(state, shown="eval" in rundir.ran)
    return state.records


def _compute(state: RunState, run: StageRun) -> tuple:
    """The stage function's (metrics, checkpoint payload). Under DDP a stage in MAIN_ONLY is computed on rank 0
    alone; the other ranks take its result from RunDir.commit."""
    if run.name in MAIN_ONLY and state.dist.enabled and not state.dist.is_main:
        return None, None
    return STAGE_FNS[run.name](state, run)


def _close(state: RunState, shown: bool) -> None:
    """After the last stage: the log closed, the ranks compared and let go, a finished run's results shown
    again (`shown`: the eval stage ran now and printed them)."""
    state.log.close()
    if state.dist.enabled:
        _report_architecture(state)
        shutdown(state.dist)
    results = read_json(state.run_dir / "results.json") if "eval" in state.records else None
    if results and not shown and state.dist.is_main:
        print_results(state.console, results)
