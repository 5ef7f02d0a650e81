"""The candidates of prune.allocation=search: one pruning ratio per dependency group, applied in ONE shot to a
copy of the prune stage's input model (torch-pruning's per-layer ratios, `pruning_ratio_dict`), and scaled by
one common factor until the MACs speed-up is within MACS_TOLERANCE of the target.

A group is named by its root layer (the layer whose output channels it removes first), so a candidate is a
plain {layer name: ratio} that any copy of the model understands. No candidate changes the model the next one
starts from: each prunes its own deep copy, and its pruning history rebuilds it from the input model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn

from ..models.support import ModelNotSupportedError
from .groups import dependency_groups
from .hints import pruning_hints, sync_after_pruning
from .macs import MacCounter
from .methods import MethodSpec, get_method
from .progressive import build_pruner

MACS_TOLERANCE = 0.01  # a candidate's MACs speed-up is within +-1% of the target
# trials of one search for a scale at most: enough to shrink the interval to 2^-20 of its width even where
# interpolation does not help, which parts the thresholds of groups with different ratios
BISECTION_STEPS = 20
GUARD = 0.1  # an interpolated trial stays this share of the bracket away from its ends
# widths of a group depend only on its ratio, never on which channels go: scale trials rank by magnitude (cheap,
# needs no calibration), and only the candidate itself is pruned with the method's own importance
SHAPE_METHOD = "l1"


class NoPerGroupRatiosError(ModelNotSupportedError):
    """The model's groups cannot each carry a ratio of their own."""


def check_per_group_ratios(model: nn.Module, num_classes: int, describe: str) -> None:
    """Refuse, with one line, a model whose widths are tied to attention heads: their widths are heads x head
    dim, which torch-pruning prunes by a head ratio that one channel ratio per group cannot express."""
    hints = pruning_hints(model, num_classes)
    if hints["num_heads"] or hints["out_channel_groups"]:
        raise NoPerGroupRatiosError(
            f"{describe} cannot take prune.allocation=search: its attention layers tie the widths of their groups "
            "to the head count, so a group cannot carry a ratio of its own; use prune.allocation=uniform or global")


@dataclass
class Pruned:
    """One pruned copy: the model, the history that rebuilds it, the realized ratio per group, its MACs."""

    model: nn.Module
    history: list
    ratios: Dict[str, float]  # 1 - width after / width before of each group's root layer
    macs: int
    speed_up: float  # base MACs / these MACs
    asked: Union[Dict[str, float], float]  # what prune() was given: per-group ratios, or the global ratio


class OneShot:
    """Prunes copies of `model` in one shot; `calibrate(model, pruner)` prepares the method's importance on the
    copy (Taylor gradients, OBDC statistics) before the step, where the method needs it. Each pruning draws
    from torch's generator seeded with `seed` (method=random), so the same ratios always give the same model."""

    def __init__(self, model: nn.Module, example: torch.Tensor, spec: MethodSpec, num_classes: int, options: dict,
                 calibrate: Optional[Callable[[nn.Module, object], None]] = None, seed: int = 0):
        self.model, self.example, self.spec, self.num_classes = model, example, spec, num_classes
        self.seed = seed
        self.options = {k: v for k, v in options.items() if k not in ("steps", "global_pruning")}
        self.calibrate = calibrate
        self.counter = MacCounter(model, example)
        self.base_macs = self.counter.count(model)[0]
        probe = copy.deepcopy(model)
        pruner = self._pruner(probe, get_method(SHAPE_METHOD), global_pruning=False)
        names = {m: n for n, m in probe.named_modules()}
        self.widths: Dict[str, int] = {}  # group name -> its root layer's output channels before pruning
        for group in dependency_groups(pruner):
            root = group[0].dep.target.module
            if isinstance(root, nn.Module) and root in names:
                self.widths[names[root]] = int(pruner.DG.get_out_channels(root))

    @property
    def groups(self) -> List[str]:
        return list(self.widths)

    def _pruner(self, twin: nn.Module, spec: MethodSpec, **kwargs):
        return build_pruner(twin, self.example, spec, self.num_classes, steps=1, **self.options, **kwargs)

    def prune(self, ratios: Optional[Dict[str, float]] = None, global_ratio: Optional[float] = None,
              shape_only: bool = False) -> Pruned:
        """A pruned copy: per-group `ratios`, or one ratio ranked across all groups (`global_ratio`: the
        global allocation). `shape_only`: the widths are all that is wanted (a scale trial)."""
        twin = copy.deepcopy(self.model)
        spec = get_method(SHAPE_METHOD) if shape_only else self.spec
        if global_ratio is not None:
            pruner = self._pruner(twin, spec, global_pruning=True, pruning_ratio=global_ratio)
        else:
            modules = dict(twin.named_modules())
            pruner = self._pruner(twin, spec, global_pruning=False, pruning_ratio=0.0,
                                  ratio_dict={modules[name]: r for name, r in ratios.items() if r > 0})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if self.calibrate is not None and not shape_only:
                self.calibrate(twin, pruner)
            pruner.step()
        sync_after_pruning(twin)
        twin.zero_grad(set_to_none=True)
        modules = dict(twin.named_modules())
        realized = {name: 1.0 - pruner.DG.get_out_channels(modules[name]) / width
                    for name, width in self.widths.items()}
        macs = self.counter.count(twin)[0]
        asked = float(global_ratio) if global_ratio is not None else dict(ratios)
        return Pruned(twin, pruner.pruning_history(), realized, int(macs), self.base_macs / macs, asked)

    def to_target(self, target: float, raw: Optional[Dict[str, float]] = None, max_ratio: float = 0.9,
                  tolerance: float = MACS_TOLERANCE) -> Optional[Pruned]:
        """The candidate whose MACs speed-up is within `tolerance` of `target`, or None where none is (the cap
        max_ratio is hit first, or one group's step of one channel jumps over the window). raw None: the global
        allocation at a ratio s. Else per-group ratios min(s * raw, max_ratio). Where several widths move at the
        same s (equal raw ratios: uniform), the groups that moved take their larger ratio one at a time."""
        if raw is None:
            s, _ = self._solve(lambda x: self.prune(global_ratio=x), max_ratio, target, tolerance)
            return None if s is None else self.prune(global_ratio=s)

        def at(x: float) -> Dict[str, float]:
            return {n: min(x * r, max_ratio) for n, r in raw.items()}

        capped = max_ratio / max(min(r for r in raw.values() if r > 0), 1e-6)  # every group at the cap
        # first guess: the scale at which the mean ratio is that of a uniform network with 1/target of the MACs
        guess = (1 - target ** -0.5) / (sum(raw.values()) / len(raw))
        s, moved = self._solve(lambda x: self.prune(at(x), shape_only=True), capped, target, tolerance,
                               start=min(guess, capped))
        if s is not None:
            return self.prune(at(s))
        if moved is None or len(moved[2]) < 2:
            return None
        below, above, names = at(moved[0]), at(moved[1]), moved[2]

        def switched(k: float) -> Dict[str, float]:
            return {**below, **{n: above[n] for n in names[:int(k)]}}

        k, _ = self._solve(lambda x: self.prune(switched(x), shape_only=True), len(names), target, tolerance,
                           integer=True)
        return None if k is None else self.prune(switched(k))

    def _solve(self, trial: Callable[[float], Pruned], high: float, target: float, tolerance: float,
               integer: bool = False, start: Optional[float] = None):
        """An x in [0, high] whose `trial(x)` (speed-up nondecreasing in x, 1x at 0) is within `tolerance` of
        `target`: (x, None); else (None, (low, high, moved)) where the groups `moved` change their widths
        between low and high and jump over the window together; (None, None) where even `high` stays below.
        Each step interpolates sqrt(1 / speed-up), the width share of a uniformly pruned network, linearly
        between the bracket's ends, at least GUARD of the bracket from either end; integer x: halving. `start`:
        a first guess, tried before `high`."""
        def close(got: Pruned) -> bool:
            return abs(got.speed_up / target - 1) <= tolerance

        low, ends = 0.0, [None, None]  # the trials at low (None: the unpruned model) and high
        if start is not None and 0 < start < high:
            first = trial(start)
            if close(first):
                return start, None
            if first.speed_up > target:
                high, ends[1] = start, first
            else:
                low, ends[0] = start, first
        if ends[1] is None:
            top = trial(high)
            if close(top):
                return high, None
            if top.speed_up < target:
                return None, None
            ends[1] = top
        goal = target ** -0.5
        for _ in range(BISECTION_STEPS):
            before = ends[0].ratios if ends[0] is not None else {n: 0.0 for n in self.widths}
            moved = [n for n in self.widths if before[n] != ends[1].ratios[n]]
            # one group one channel apart: nothing lies between the ends (several groups: the caller switches them)
            one_step = len(moved) == 1 and round((ends[1].ratios[moved[0]] - before[moved[0]])
                                                 * self.widths[moved[0]]) <= 1
            if (one_step and not integer) or (integer and high - low <= 1):
                return None, (low, high, moved)
            if integer:
                mid = (low + high) // 2
            else:
                width = [1.0 if ends[0] is None else ends[0].speed_up ** -0.5, ends[1].speed_up ** -0.5]
                share = (width[0] - goal) / max(width[0] - width[1], 1e-12)
                mid = low + (high - low) * min(max(share, GUARD), 1 - GUARD)
            got = trial(mid)
            if close(got):
                return mid, None
            if got.speed_up < target:
                low, ends[0] = mid, got
            else:
                high, ends[1] = mid, got
        return None, (low, high, moved)
