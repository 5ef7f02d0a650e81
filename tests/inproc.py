"""Shared helpers for in-process pipeline tests: a RunConfig with the `tiny` schedule's values."""

from __future__ import annotations

from pathlib import Path

from prune_runner.config import RunConfig, ScheduleConfig, StageSchedule


def tiny_config(tmp_path: Path, model: str, method: str, **prune) -> RunConfig:
    """Digits on the CPU, one short epoch per stage, few latency repeats: seconds per run."""
    cfg = RunConfig()
    cfg.model.name, cfg.method.name = model, method
    cfg.dataset.train_limit = 256  # a smoke run: enough to see the loss move
    cfg.schedule = ScheduleConfig(
        name="tiny",
        pretrain=StageSchedule(epochs=1, lr=0.05, batch_size=32),
        sparse_train=StageSchedule(epochs=1, lr=0.02, batch_size=32, lr_schedule="constant"),
        finetune=StageSchedule(epochs=1, lr=0.05, batch_size=32))
    cfg.prune.speed_up = prune.get("speed_up", 1.5)
    cfg.prune.iterative_steps = prune.get("iterative_steps", 10)
    cfg.device, cfg.progress = "cpu", False
    cfg.eval.latency_repeats, cfg.eval.latency_batch = 3, 4
    cfg.out_root = str(tmp_path / "outputs")
    return cfg
