"""Building a torch-pruning pruner safely and pruning progressively to a MACs target."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from ..errors import UserError
from .groups import dependency_groups
from .hints import pruning_hints, sync_after_pruning
from .macs import MacCounter
from .methods import MethodSpec


class PruningTargetError(UserError):
    """The method could not reach the requested speed-up within the step budget."""


def build_pruner(model: nn.Module, example_inputs: torch.Tensor, spec: MethodSpec, num_classes: int, *,
                 steps: int = 100, max_pruning_ratio: float = 0.9, global_pruning: bool = False,
                 round_to: Optional[int] = None, normalizer: Optional[str] = None) -> tp.pruner.BasePruner:
    """A BasePruner whose schedule removes 1/steps of each layer's channels per step.

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
        pruning_ratio=1.0,  # the schedule's end point; the MACs target stops us long before
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
        pruning_ratio_dict=None,
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


def progressive_prune(model: nn.Module, pruner: tp.pruner.BasePruner, counter: MacCounter, target: float, *,
                      calibrate: Optional[Callable[[], None]] = None, describe: str = "model",
                      on_step: Optional[Callable[[int, int, float], None]] = None) -> dict:
    """Small pruning steps until base MACs / current MACs >= target, or the step budget ends.
    `on_step(step, budget, speed_up)` is called after every step (progress lines)."""
    base_macs, base_params = counter.count(model)
    speed_up, step = 1.0, 0
    if target <= 1.0:  # nothing to remove: the unpruned model already meets the target
        return {"steps": 0, "speed_up": 1.0, "base_macs": base_macs, "macs": base_macs,
                "base_params": base_params, "params": base_params}
    for step in range(1, pruner.iterative_steps + 1):
        if calibrate is not None:
            calibrate()
        pruner.step()
        sync_after_pruning(model)  # widths a model caches (ViT hidden_dim) before the next forward
        macs, _ = counter.count(model)
        speed_up = base_macs / macs
        if on_step is not None:
            on_step(step, pruner.iterative_steps, speed_up)
        if speed_up >= target:
            break
    model.zero_grad(set_to_none=True)
    if speed_up < target:
        raise PruningTargetError(
            f"{describe} reached only {speed_up:.3f}x of the {target}x MACs speed-up after {step} pruning steps; "
            "raise prune.max_pruning_ratio or prune.iterative_steps, or lower prune.speed_up")
    macs, params = counter.count(model)
    return {"steps": step, "speed_up": speed_up, "base_macs": base_macs, "macs": macs,
            "base_params": base_params, "params": params}
