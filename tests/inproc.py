"""Shared helpers for in-process pipeline tests: a RunConfig with the `tiny` schedule's values."""

from __future__ import annotations

from pathlib import Path

from prune_runner.config import RunConfig


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
