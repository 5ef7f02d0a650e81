"""Building a torch-pruning pruner safely, the step loop both targets prune with, and pruning progressively to a
MACs target."""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from ..errors import UserError
from .groups import dependency_groups
from .hints import pruning_hints, sync_after_pruning
from .macs import MacCounter
from .methods import MethodSpec
from .timm_failures import explain_failures


class PruningTargetError(UserError):
    """The method could not reach the requested speed-up within the step budget."""


@explain_failures  # a timm model torch-pruning cannot take apart: one line naming the layer
def build_pruner(model: nn.Module, example_inputs: torch.Tensor, spec: MethodSpec, num_classes: int, *,
                 steps: int = 100, max_pruning_ratio: float = 0.9, global_pruning: bool = False,
                 round_to: Optional[int] = None, normalizer: Optional[str] = None, pruning_ratio: float = 1.0,
                 ratio_dict: Optional[dict] = None) -> tp.pruner.BasePruner:
    """A BasePruner whose schedule removes pruning_ratio/steps of each layer's channels per step (1.0: the MACs
    target stops the schedule long before its end); `ratio_dict` {layer: ratio} overrides a layer's ratio (the
    one-shot candidates of prune.allocation=search, pruning/candidates.py).

    Works around two library defects: the mutable default dicts of BasePruner are
    shared between pruners (we pass fresh ones), and building leaves the model in
    eval mode (we restore the caller's mode).
    """
    hints = pruning_hints(model, num_classes)
    was_training = model.training
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs,
        importance=spec.importance(num_classes, **({"normalizer": normalizer} if normalizer else {})),
        global_pruning=global_pruning,
        pruning_ratio=pruning_ratio,  # the schedule's end point
        iterative_steps=steps,
        max_pruning_ratio=max_pruning_ratio,
        round_to=round_to if round_to is not None else hints.get("round_to"),
        ignored_layers=hints["ignored_layers"],
        num_heads=hints["num_heads"],
        unwrapped_parameters=hints.get("unwrapped_parameters"),
        # the hints' fresh dicts: attention head counts as output groups keep every head the same width
        in_channel_groups=hints["in_channel_groups"],
        out_channel_groups=hints["out_channel_groups"],
        channel_groups={},
        head_pruning_ratio_dict=None,
        pruning_ratio_dict=ratio_dict,
    )
    model.train(was_training)
    return pruner


def grad_calibration(model: nn.Module, batches: Iterable) -> None:
    """Accumulate dL/dw over calibration batches (Taylor importance reads .grad)."""
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()


class ObdcCalibration:
    """Fisher statistics for OBDCImportance before each pruning step.

    torch-pruning 1.6.1's `OBDCImportance._prepare_model` raises TypeError on every model
    (it iterates the None that `_downstream_node_as_root_if_attention` returns for
    non-attention groups), so the hooks are registered here, and removed after each pass.
    """

    def __init__(self, pruner: tp.pruner.BasePruner, seed: int):
        self.pruner, self.imp = pruner, pruner.importance
        self.generator = torch.Generator().manual_seed(seed)

    def _layers(self) -> list:
        out_fns = (tp.pruner.function.prune_conv_out_channels, tp.pruner.function.prune_linear_out_channels)
        layers = []
        for group in dependency_groups(self.pruner):
            for dep, _ in group:
                layer = dep.target.module
                if isinstance(layer, tuple(self.imp.target_types)) and dep.handler in out_fns and layer not in layers:
                    layers.append(layer)
        return layers

    def _hook_output_grad(self, layer: nn.Module, inputs, output: torch.Tensor) -> None:
        # a tensor hook rather than a module backward hook: the latter breaks on a following
        # inplace ReLU; this one receives dL/d(output) as it was before any inplace change
        output.register_hook(lambda grad: self.imp.DS.__setitem__(layer, grad))

    def __call__(self, model: nn.Module, batches: Iterable) -> None:
        imp = self.imp
        imp._clear_buffer()
        imp.modules = self._layers()
        handles = []
        for layer in imp.modules:
            handles.append(layer.register_forward_pre_hook(imp._save_input))
            handles.append(layer.register_forward_hook(self._hook_output_grad))
        try:
            model.zero_grad(set_to_none=True)
            for x, _ in batches:
                logits = model(x)
                # the true Fisher: labels sampled from the model's own predictive distribution
                probs = F.softmax(logits.detach().float().cpu(), dim=1)
                sampled = torch.multinomial(probs, 1, generator=self.generator).squeeze(1).to(x.device)
                F.cross_entropy(logits, sampled).backward()
                imp.step()
        finally:
            for h in handles:
                h.remove()
        # the library appends a bias column to each layer's statistics but scores weights only: drop it
        for layer in imp.modules:
            if getattr(layer, "bias", None) is not None and layer in imp.Fisher:
                imp.Fisher[layer] = imp.Fisher[layer][:, :-1]
        # OBDCImportance reads Fisher[layer] for every conv/linear of a group before it checks the
        # layer's role; the ones without statistics (e.g. depthwise convs) are never scored: a placeholder
        for group in dependency_groups(self.pruner):
            for dep, _ in group:
                layer = dep.target.module
                if isinstance(layer, tuple(imp.target_types)) and layer not in imp.Fisher:
                    imp.Fisher[layer] = torch.zeros(())


def _forward(model: nn.Module, x: torch.Tensor) -> None:
    """One eval-mode forward without gradients; the model's mode is restored."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(x)
    model.train(was_training)


class StepLoop:
    """The pruner's schedule one small step at a time, for both targets: `progressive_prune` (a MACs speed-up)
    and `prune_to_latency` (a measured one). A step calibrates the importance (where the method needs it),
    prunes, syncs the widths a model caches (ViT hidden_dim) and counts MACs; `on_step(step, budget, speed_up)`
    is told after every step (progress lines). The loop keeps each step's MACs speed-up and where the pruning
    history stood, so a model of an earlier step can be rebuilt (`history(step)`)."""

    def __init__(self, model: nn.Module, pruner: tp.pruner.BasePruner, counter: MacCounter, *,
                 calibrate: Optional[Callable[[], None]] = None,
                 on_step: Optional[Callable[[int, int, float], None]] = None):
        self.model, self.pruner, self.counter = model, pruner, counter
        self.calibrate, self.on_step = calibrate, on_step
        self.base_macs, self.base_params = counter.count(model)
        self.speed_ups: List[float] = [1.0]  # the MACs speed-up after each step; [0]: the model as it entered
        self.history_lengths: List[int] = [0]  # len(pruner.pruning_history()) after each step

    @property
    def step(self) -> int:
        return len(self.speed_ups) - 1

    @property
    def budget(self) -> int:
        return self.pruner.iterative_steps

    def advance(self) -> float:
        """One pruning step; the MACs speed-up after it."""
        if self.calibrate is not None:
            self.calibrate()
        self.pruner.step()
        sync_after_pruning(self.model)  # widths a model caches (ViT hidden_dim) before the next forward
        self.speed_ups.append(self.base_macs / self.counter.count(self.model)[0])
        self.history_lengths.append(len(self.pruner.pruning_history()))
        if self.on_step is not None:
            self.on_step(self.step, self.budget, self.speed_ups[-1])
        return self.speed_ups[-1]

    def history(self, step: int) -> list:
        """The pruning history that gives the model after `step` from the model as it entered."""
        return self.pruner.pruning_history()[:self.history_lengths[step]]

    def changed(self) -> List[int]:
        """The steps after which the model differs from the step before (a step that pruned nothing, or
        rounded a width back to where it was, leaves the same model)."""
        return [s for s in range(1, self.step + 1) if self.history_lengths[s] != self.history_lengths[s - 1]]

    def finish(self, model: Optional[nn.Module] = None, steps: Optional[int] = None) -> dict:
        """The result for `model` (default: the pruned model) after `steps` (default: all taken): it runs (else
        the failure is named here), and its MACs and parameters."""
        model = self.model if model is None else model
        self.model.zero_grad(set_to_none=True)
        _forward(model, self.counter.example_inputs)
        macs, params = self.counter.count(model)
        return {"steps": self.step if steps is None else steps, "speed_up": self.base_macs / macs,
                "base_macs": self.base_macs, "macs": macs, "base_params": self.base_params, "params": params}


@explain_failures
def progressive_prune(model: nn.Module, pruner: tp.pruner.BasePruner, counter: MacCounter, target: float, *,
                      calibrate: Optional[Callable[[], None]] = None, describe: str = "model",
                      on_step: Optional[Callable[[int, int, float], None]] = None) -> dict:
    """Small pruning steps until base MACs / current MACs >= target, or the step budget ends.
    `on_step(step, budget, speed_up)` is called after every step (progress lines)."""
    loop = StepLoop(model, pruner, counter, calibrate=calibrate, on_step=on_step)
    # target <= 1: nothing to remove, the unpruned model already meets it
    while loop.speed_ups[-1] < target and loop.step < loop.budget:
        loop.advance()
    result = loop.finish()
    if result["speed_up"] < target:
        raise PruningTargetError(
            f"{describe} reached only {result['speed_up']:.3f}x of the {target}x MACs speed-up after {loop.step} "
            "pruning steps; raise prune.max_pruning_ratio or prune.iterative_steps, or lower prune.speed_up")
    return result
