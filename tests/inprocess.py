"""In-process pipeline runs for tests: a RunConfig with the `tiny` schedule's values, the config `prune-run`
would compose, and the console output."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

import prune_runner.cli  # noqa: F401  registers the typed schema and the run-dir resolvers
from prune_runner.config import RunConfig
from prune_runner.run.pipeline import run_pipeline

QUICK = {"dataset": "digits", "schedule": "tiny", "device": "cpu", "progress": "false", "eval.latency": "false",
         "prune.iterative_steps": 25}


def compose(overrides: dict):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("prune_runner.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"{k}={v}" for k, v in overrides.items()])
    return OmegaConf.to_object(cfg)


def run_inprocess(run_dir: Path, **overrides) -> tuple[dict, str]:
    """(completion records, console text) of one run under `run_dir`'s parent as out_root."""
    run_dir = Path(run_dir)
    cfg = compose({**QUICK, "out_root": str(run_dir.parent / "outputs"), "run_dir": str(run_dir), **overrides})
    buffer = io.StringIO()
    records = run_pipeline(cfg, run_dir, console=Console(file=buffer, soft_wrap=True, width=300))
    return records, buffer.getvalue()


def tiny_config(tmp_path: Path, model: str, method: str, **prune) -> RunConfig:
    """Digits on the CPU, one short epoch per stage, few latency repeats: seconds per run."""
    cfg = RunConfig()
    cfg.model.name, cfg.method.name = model, method
    cfg.dataset.train_limit = 256  # a smoke run: enough to see the loss move
    cfg.schedule.name = "tiny"
    for stage, lr, lr_schedule in (("pretrain", 0.05, "cosine"), ("sparse_train", 0.02, "constant"),
                                   ("finetune", 0.05, "cosine")):
        sched = getattr(cfg.schedule, stage)  # in place: finetune's schedule type also holds distillation
        sched.epochs, sched.lr, sched.batch_size, sched.lr_schedule = 1, lr, 32, lr_schedule
    cfg.prune.speed_up = prune.get("speed_up", 1.5)
    cfg.prune.iterative_steps = prune.get("iterative_steps", 10)
    cfg.device, cfg.progress = "cpu", False
    cfg.eval.latency_repeats, cfg.eval.latency_batch = 3, 4
    cfg.out_root = str(tmp_path / "outputs")
    return cfg
