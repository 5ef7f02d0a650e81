"""Before any training: can torch-pruning take this model apart with this method, in bounded time?

torch-pruning's dependency search can loop without end on some architectures (timm's efficientvit_m0: its
memory grows by 1 to 3 GB a minute), which a run would only meet after pretraining. So before the first
stage, a throwaway copy of the model goes through what the pruning stages will do, under a time limit
(prune.preflight_s, seconds): the pruner's dependency graph and groups, the regularizer's plan, two pruning
steps (with the method's calibration), each followed by a forward of the pruned copy. A model that does not get
through, in time and within a memory budget, is refused with one line naming the model, the method and where it stopped.
Then the copy jumps to the schedule's last step (every layer as far as prune.max_pruning_ratio allows): a MACs
speed-up short of prune.speed_up there is refused too, naming the speed-up reached and the layers kept whole that hold
it down (attention the hints keep whole, ...), rather than after pretraining and sparse training. For a latency
target the MACs bound is a necessary condition too: removing channels does not cut latency by more than MACs.

How the limit interrupts: a watchdog on SIGALRM (a repeating real-time timer) raises an exception in the
main thread. A hang inside torch-pruning is pure Python looping, so the handler runs between two of its
bytecodes, and the exception unwinds its frames, which frees all it built. Every way the pipeline runs calls
it in the main thread: a plain run, Hydra's multirun jobs, pytest-xdist workers, each torchrun rank (where
rank 0 alone checks and broadcasts the outcome, so all ranks stop or go on together). A forked child was
the other choice: it would be killed without trace, but a fork of a process whose OpenMP pool or CUDA
context is live can deadlock or cannot use the GPU, and a spawned one imports torch again (seconds) for
every run of the test suite. Off the main thread (an embedding program's worker thread) there is no
signal handler to install, and the check runs without a limit, as the pruning stages themselves would.

Which runs need the check, and on which model, is the run's side: run/preflight.py.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

from ..models.support import ModelNotSupportedError
from .candidates import check_per_group_ratios
from .hints import sync_after_pruning
from .macs import CONV_TYPES, MacCounter
from .methods import MethodSpec
from .progressive import ObdcCalibration, build_pruner, grad_calibration
from .regularizers import regularizer_from_config
from .timm_failures import failed_layer

# how often the watchdog looks at the clock and the memory, in seconds: the overshoot past the limit, and
# the memory a runaway search (up to about 50 MB/s) adds before it is stopped
POLL_S = 0.25
# memory the check may add beyond MODEL_COPIES copies of the model's parameters, in bytes: the traced
# graph's Python objects and one forward's activations stay well below this for every model of the zoo
MEMORY_HEADROOM = 2 << 30
# the model copies the check holds at most: the trial copy, its gradients (taylor / obdc) and a pruning
# step's new tensors beside the old ones, plus one to spare
MODEL_COPIES = 4

PHASE_GRAPH = "torch-pruning 1.6.1's dependency graph"
PHASE_PLAN = "the regularizer's plan"
PHASE_STEP = "the trial pruning step"
PHASE_REACH = "the schedule's last step"


class UnreachableTargetError(ModelNotSupportedError):
    """The model x method cannot reach the run's speed-up: torch-pruning's whole schedule falls short of it."""


class _Stopped(BaseException):
    """Raised by the watchdog inside torch-pruning's code: a BaseException, so that no `except Exception`
    on the way up can swallow it."""

    def __init__(self, why: str, advice: str):
        super().__init__(why)
        self.why, self.advice = why, advice


def _rss_bytes() -> Optional[int]:
    """This process's resident memory, or None where /proc is missing (the memory bound is then off)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Watchdog:
    """Stops the check past `limit_s` seconds, or once it has added `memory_budget` bytes of resident memory.
    `poll()` is what the timer calls; `clock` and `rss` are the real ones outside tests."""

    limit_s: float
    memory_budget: int
    clock: Callable[[], float] = time.monotonic
    rss: Callable[[], Optional[int]] = _rss_bytes
    started: float = field(init=False, default=0.0)
    rss_at_start: Optional[int] = field(init=False, default=None)
    armed: bool = field(init=False, default=False)  # poll() raises only while the work runs

    def start(self) -> None:
        self.started, self.rss_at_start, self.armed = self.clock(), self.rss(), True

    def poll(self) -> None:
        """Raise _Stopped past the limits, at every call until the work has returned: a stop raised where
        Python only prints it (a __del__ the collector runs) is raised again at the next poll."""
        if not self.armed:
            return
        if self.clock() - self.started > self.limit_s:
            raise _Stopped(f"did not finish within {self.limit_s:g} s (prune.preflight_s)",
                           "if it is only slow, raise prune.preflight_s; else try another method or model")
        grown = None if self.rss_at_start is None else (self.rss() or 0) - self.rss_at_start
        if grown is not None and grown > self.memory_budget:
            raise _Stopped(f"used more than {self.memory_budget / 2**30:.1f} GiB of memory",
                           "try another method or model")

    def _on_signal(self, signum, frame) -> None:
        if frame is not None and frame.f_code is Watchdog.run.__code__:
            return  # in run() itself: the work has returned or is unwinding, and the timer is being stopped
        self.poll()

    def run(self, work: Callable[[], None]) -> None:
        """`work()` in the main thread with the timer armed; elsewhere without a limit (see the docstring)."""
        self.start()
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
            work()
            return
        previous = signal.signal(signal.SIGALRM, self._on_signal)
        try:
            outer = signal.setitimer(signal.ITIMER_REAL, POLL_S, POLL_S)
            try:
                work()
            finally:
                self.armed = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            if previous is not None:  # None: a handler set outside Python, which Python cannot put back
                signal.signal(signal.SIGALRM, previous)
            if outer[0] > 0:  # someone else's alarm was running: it goes on, less the time spent here
                signal.setitimer(signal.ITIMER_REAL, max(outer[0] - (self.clock() - self.started), POLL_S),
                                 outer[1])


def _parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def check_prunable(model: nn.Module, example_inputs: torch.Tensor, spec: MethodSpec, num_classes: int, *,
                   describe: str, limit_s: float, method_config, pruner_options: dict,
                   watchdog: Optional[Watchdog] = None, per_group_ratios: bool = False,
                   speed_up: Optional[float] = None) -> None:
    """Take `model` through the pruning stages' torch-pruning work, or raise ModelNotSupportedError with one line
    naming `describe` ("model X with method Y") and where it stopped. `model` is pruned by TRIAL_STEPS steps: give a
    copy (a run gives a fresh build). `pruner_options` are build_pruner's keyword arguments as the run gives them;
    `method_config` is the run's MethodConfig (the regularizer's options). `per_group_ratios`: the run searches
    per-layer widths (prune.allocation=search), which a model must let each group carry (candidates.py).
    `speed_up`: the run's prune.speed_up; the copy then goes on to the schedule's last step, and a MACs speed-up short
    of it raises UnreachableTargetError (None: not checked)."""
    trial = model.cpu().eval()
    x = example_inputs[:1].detach().cpu()
    watchdog = watchdog or Watchdog(limit_s, MEMORY_HEADROOM + MODEL_COPIES * _parameter_bytes(trial))
    phase = [PHASE_GRAPH]
    short: List[str] = []  # the unreachable target's line, raised once the watchdog is off

    def work() -> None:
        if per_group_ratios:
            check_per_group_ratios(trial, num_classes, describe)
        reach = _Reach(trial, x) if speed_up is not None and speed_up > 1 else None  # before any channel goes
        pruner = build_pruner(trial, x, spec, num_classes, **pruner_options)
        if spec.regularizer is not None:  # sparse_train's regularizer; the prune stage plots its values too
            phase[0] = PHASE_PLAN
            regularizer_from_config(spec.regularizer, trial, pruner, method_config)
        phase[0] = PHASE_STEP
        _trial_step(trial, pruner, spec, num_classes, x)
        if reach is not None:
            phase[0] = PHASE_REACH
            short.extend(reach.shortfall(trial, pruner, spec, x, speed_up, describe))

    stopped, grad_enabled = None, torch.is_grad_enabled()
    try:
        with warnings.catch_warnings():  # torch-pruning's warnings come again from the stage that prunes
            warnings.simplefilter("ignore")
            watchdog.run(work)
    except _Stopped as stop:  # the message only: the exception's frames hold all the search built
        stopped = f"{describe} cannot be pruned: {phase[0]} {stop.why}; {stop.advice}"
    except ModelNotSupportedError:
        raise  # a timm model's failure, already one line naming the layer (timm_failures.explain_failures)
    except Exception as err:
        text = " ".join(str(err).split())[:200]
        raise ModelNotSupportedError(
            f"{describe} cannot be pruned: {phase[0]} fails at layer {failed_layer(trial, err)} "
            f"({type(err).__name__}: {text}); try another method or model") from err
    if stopped is not None:
        torch.set_grad_enabled(grad_enabled)  # in case the stop landed in a no_grad block's exit
        trial = model = None  # what the interrupted search built around the model (reference cycles), freed now
        gc.collect()
        raise ModelNotSupportedError(stopped)
    if short:
        raise UnreachableTargetError(short[0])


# pruning steps the trial takes: a model whose first step leaves torch-pruning's index bookkeeping inconsistent
# fails at the second (timm's dla46x_c: IndexError in its grouped convolutions), which one step would not show
TRIAL_STEPS = 2


def _trial_step(model: nn.Module, pruner, spec: MethodSpec, num_classes: int, x: torch.Tensor) -> None:
    """TRIAL_STEPS pruning steps as the prune stage takes them (calibration first), each followed by a forward of
    the pruned model."""
    for _ in range(TRIAL_STEPS):
        _step(model, pruner, spec, x)


def _step(model: nn.Module, pruner, spec: MethodSpec, x: torch.Tensor) -> None:
    """One pruning step as the prune stage takes it (calibration first), then a forward of the pruned model."""
    batch = [(x, torch.zeros(len(x), dtype=torch.long))]  # scores need gradients, not a meaningful loss
    if spec.calibration == "grad":
        grad_calibration(model, batch)
    elif spec.calibration == "obdc":
        ObdcCalibration(pruner, seed=0)(model, batch)
    pruner.step()
    sync_after_pruning(model)
    with torch.no_grad():
        model(x)


class _Reach:
    """How far the whole schedule takes a model: built on the unpruned copy (its MACs and layer widths), asked after
    the trial steps. A step prunes each layer to a fraction of its FIRST width (the schedule's ratio at that step),
    and a layer below 1 - prune.max_pruning_ratio of it is pruned no further; so one step at the ratio
    max_pruning_ratio gives the widths the run's many small steps end at (give or take one step's rounding), at
    the cost of one step."""

    def __init__(self, model: nn.Module, x: torch.Tensor):
        self.counter = MacCounter(model, x)
        self.base_macs = self.counter.count(model)[0]
        self.shapes = {name: tuple(m.weight.shape) for name, m in _layers(model)}

    def shortfall(self, model: nn.Module, pruner, spec: MethodSpec, x: torch.Tensor, target: float,
                  describe: str) -> List[str]:
        """[the refusal's one line] when the schedule's end falls short of `target` x MACs, else []."""
        last = pruner.iterative_steps
        if pruner.current_step < last:
            # the next step is the schedule's last (BasePruner.step() adds one), at the ratio the cap allows: the
            # library caps a layer's ratio only when it is past it, so the last step's 1.0 would remove all
            ratios = list(pruner.per_step_pruning_ratio)
            pruner.per_step_pruning_ratio = ratios[:last] + [min(ratios[last], pruner.max_pruning_ratio)]
            pruner.current_step = last - 1
            try:
                _step(model, pruner, spec, x)
            except Exception:  # the trial steps passed: a model that breaks only this far out may meet the target
                return []
        reached = self.base_macs / self.counter.count(model)[0]
        if reached >= target:
            return []
        return [f"{describe} cannot be pruned: its MACs speed-up stops at {reached:.2f}x, short of prune.speed_up="
                f"{target:g}x, with every layer pruned as far as prune.max_pruning_ratio={pruner.max_pruning_ratio:g} "
                f"allows; {self._kept_whole(model)}; lower prune.speed_up, or try another method or model"]

    def _kept_whole(self, model: nn.Module) -> str:
        """What holds the speed-up down: the share of the remaining MACs in layers still at their first width, and
        the layer path (block indices as *) with the most of them."""
        per_path: Dict[str, List] = {}
        whole = total = 0
        for name, m in _layers(model):
            macs = self.counter.positions.get(name, 0) * m.weight.numel()
            total += macs
            if tuple(m.weight.shape) == self.shapes.get(name):
                whole += macs
                entry = per_path.setdefault(re.sub(r"\.\d+(?=\.|$)", ".*", name), [0, type(m).__name__])
                entry[0] += macs
        if not per_path or total == 0:
            return "no layer is kept whole"
        path, (macs, kind) = max(per_path.items(), key=lambda item: item[1][0])
        return (f"layers kept at their full width hold {100 * whole / total:.0f}% of the MACs left, the most in {path} "
                f"({kind}, {100 * macs / total:.0f}%)")


def _layers(model: nn.Module):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, CONV_TYPES + (nn.Linear,))]
