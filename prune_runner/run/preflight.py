"""The run's side of the pre-flight check (pruning/preflight.py): which stages need it, on which model, and
under DDP one answer for every rank. It runs after the run dir is checked and before the first stage."""

from __future__ import annotations

import random
from pathlib import Path
from typing import List

import torch

from ..config import STAGES
from ..models import build_model
from ..pruning import MethodSpec
from ..pruning.preflight import check_prunable
from .distributed import on_main
from .records import StageDir
from .stages import pruner_options
from .state import RunState

PRUNING_STAGES = ("sparse_train", "prune")  # the stages that build a pruner (sparse_train: its regularizer)


def stages_to_check(cfg, spec: MethodSpec, run_dir: Path) -> List[str]:
    """The stages of this run that will build a pruner: configured; not taken from another run (resume_from
    names the last one taken); not finished in `run_dir` under resume=auto (a record there shows this model was
    pruned with this method before: a changed model or method is refused before this point); and sparse_train
    only when the method has a regularizer."""
    taken = STAGES[: STAGES.index(Path(cfg.resume_from).name) + 1] if cfg.resume_from else ()
    stages = [s for s in PRUNING_STAGES if s in cfg.stages and s not in taken]
    if spec.regularizer is None:
        stages = [s for s in stages if s != "sparse_train"]
    if cfg.resume == "auto":
        stages = [s for s in stages if not StageDir(run_dir, s).record_path.is_file()]
    return stages


def preflight_run(state: RunState) -> None:
    """The pre-flight check of a run: skipped when no stage that builds a pruner will run, or prune.preflight_s
    is 0. Under DDP rank 0 checks and every rank raises the same one line."""
    cfg = state.cfg
    if cfg.prune.preflight_s <= 0 or not stages_to_check(cfg, state.spec, state.run_dir):
        return
    on_main(state.dist, lambda: _check_run(state))  # rank 0 checks; every rank raises its one line


def _check_run(state: RunState) -> None:
    """check_prunable on the model the run starts from (base_checkpoint's, else a fresh one: the graph depends on
    the architecture only, so never pretrained weights, which could mean a download), with the run's pruner
    settings; when the prune stage is to come, whether its schedule can reach prune.speed_up at all (for a latency
    target too: MACs bound latency). The global random generators are left as they were: the run's results do not
    change."""
    cfg = state.cfg
    python_rng = random.getstate()
    with torch.random.fork_rng(devices=[]):
        if cfg.base_checkpoint:
            model, _ = state.load(Path(cfg.base_checkpoint), state.base_sha)
        else:
            model = build_model(cfg.model.name, state.num_classes, False, input_size=state.input_size)
        try:
            check_prunable(model, state.data.example_input(1), state.spec, state.num_classes,
                           describe=f"model {cfg.model.name} with method {cfg.method.name}",
                           limit_s=cfg.prune.preflight_s, method_config=cfg.method,
                           pruner_options=pruner_options(state), per_group_ratios=cfg.prune.allocation == "search",
                           speed_up=cfg.prune.speed_up if "prune" in stages_to_check(cfg, state.spec, state.run_dir)
                           else None)
        finally:
            random.setstate(python_rng)
