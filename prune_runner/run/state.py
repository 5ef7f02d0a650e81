"""The run state the stages work on: config, device, data, the current model and records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn
from rich.console import Console

from ..config import RunConfig
from ..errors import UserError
from ..pruning import MethodSpec
from ..tracking.metrics_log import MetricsLog
from ..train.loop import Fast
from .checkpoint import load_checkpoint, model_payload, rebuild_model
from .distributed import DistInfo


@dataclass
class RunState:
    cfg: RunConfig
    run_dir: Path
    device: torch.device
    dist: DistInfo
    data: object  # prune_runner.data.Data
    spec: MethodSpec
    log: MetricsLog
    console: Console
    fast: Fast
    input_size: int
    model: Optional[nn.Module] = None
    history: list = field(default_factory=list)  # torch-pruning pruning history of `model`
    pending: Optional[tuple] = None  # (checkpoint path, sha256) to load when a stage needs the model
    records: Dict[str, dict] = field(default_factory=dict)  # finished stage -> completion record (see keep)
    overrides: str = ""  # the key command-line overrides that name the run (for reports)
    base_sha: Optional[str] = None  # SHA-256 of base_checkpoint, hashed into pretrain and checked on load

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def say(self, text: str) -> None:
        if self.dist.is_main:
            self.console.print(text)

    def warn(self, text: str) -> None:
        self.say(f"[yellow]{text}[/yellow]")

    def keep(self, stage: str, record: dict, load: bool) -> None:
        """A finished stage's record (the one way `records` is written, by run/rundir.py). With `load`, its
        checkpoint becomes the model, loaded when next needed; without, the model in memory already is it."""
        self.records[stage] = record
        if load:
            self.pending = (Path(record["checkpoint"]), record["sha256"])
            self.model = None

    def load(self, path: Path, sha: Optional[str] = None) -> nn.Module:
        ckpt = load_checkpoint(path, expected_sha=sha)
        model, history = rebuild_model(ckpt, path, expect_model=self.cfg.model.name,
                                       expect_classes=self.num_classes)
        return self.to_device(model), history

    def to_device(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.fast.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def ensure_model(self, stage: str) -> nn.Module:
        if self.model is None:
            if self.pending is None:
                raise UserError(f"stage '{stage}' needs a model from an earlier stage: add that stage to "
                                "stages=[...], or give base_checkpoint= or resume_from=")
            self.model, self.history = self.load(*self.pending)
            self.pending = None
        return self.model

    def payload(self) -> dict:
        return model_payload(self.model, self.cfg.model.name, self.num_classes, self.input_size, self.history)
