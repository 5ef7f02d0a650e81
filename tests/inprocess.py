"""In-process pipeline runs for tests: the config `prune-run` would compose, and the console output."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

import prune_runner.cli  # noqa: F401  registers the typed schema and the run-dir resolvers
from prune_runner.pipeline import run_pipeline

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
