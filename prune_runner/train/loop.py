"""Training and evaluation loops: small functions over a model, data and a schedule."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import FastConfig, StageSchedule
from ..errors import UserError


class DivergedError(UserError):
    """The loss became NaN/inf; the stage stops and its last good checkpoint is kept."""


@dataclass
class Fast:
    """The run's `fast` settings (config.FastConfig) as they apply on its device."""

    amp: bool  # bf16 autocast
    channels_last: bool

    @classmethod
    def for_device(cls, config: FastConfig, device: torch.device) -> Fast:
        """A setting left unset (None) is on for CUDA and off elsewhere."""
        on_cuda = device.type == "cuda"
        return cls(amp=on_cuda if config.amp is None else config.amp,
                   channels_last=on_cuda if config.channels_last is None else config.channels_last)

    def autocast(self, device: torch.device):
        if not self.amp:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def make_optimizer(model: nn.Module, sched: StageSchedule) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=sched.lr, momentum=sched.momentum,
                           weight_decay=sched.weight_decay)


def lr_factor(sched: StageSchedule, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based), per-step resolution."""
    total = max(1, sched.epochs * steps_per_epoch)
    warm = sched.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if sched.lr_schedule == "cosine":
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if sched.lr_schedule == "step":
        epoch = step / steps_per_epoch
        passed = sum(epoch >= m * sched.epochs for m in sched.milestones)
        return sched.lr_gamma ** passed
    return 1.0  # constant


def make_scheduler(opt: torch.optim.Optimizer, sched: StageSchedule, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(sched, s, steps_per_epoch))


class _Tally:
    """Loss and accuracy summed on the device: no host sync until `totals()`."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0

    def add(self, loss_sum: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += loss_sum
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += y.numel()

    def totals(self) -> tuple[float, float]:
        n = max(1, self.seen)
        return self.loss_sum.item() / n, self.correct.item() / n


def train_epoch(model: nn.Module, batches, opt, scheduler, device: torch.device, fast: Fast, *,
                regularize: Optional[Callable[[], None]] = None,
                criterion: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> dict:
    """One epoch: forward, loss.backward(), then the regularizer adds its gradients, then opt.step().

    `criterion(x, logits, y)` replaces cross-entropy (distillation); it runs inside the same autocast.

    Loss and accuracy are accumulated on the device; the only host sync is at the end.
    """
    model.train()
    tally = _Tally(device)
    for x, y in batches:
        if fast.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with fast.autocast(device):
            logits = model(x)
            loss = F.cross_entropy(logits, y) if criterion is None else criterion(x, logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if regularize is not None:
            regularize()
        opt.step()
        scheduler.step()
        tally.add(loss.detach() * y.numel(), logits.detach(), y)
    loss_value, acc = tally.totals()
    if not math.isfinite(loss_value):
        raise DivergedError(f"training loss became {loss_value}; stopped (lower the lr or the reg coefficient)")
    return {"loss": loss_value, "train_acc": acc, "lr": opt.param_groups[0]["lr"]}


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, fast: Fast) -> dict:
    was_training = model.training
    model.eval()
    tally = _Tally(device)
    for x, y in batches:
        if fast.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with fast.autocast(device):
            logits = model(x)
        tally.add(F.cross_entropy(logits.float(), y, reduction="sum"), logits, y)
    model.train(was_training)
    loss, acc = tally.totals()
    return {"acc": acc, "loss": loss}
