"""Sparse-training regularizers with one interface and batched per-step work.

torch-pruning's pruners walk every dependency group in Python on every training step and build index
tensors from Python lists each time. Here `refresh()` walks the groups once (per epoch, or after the
model changed) and turns them into flat index tensors; `apply(coef)` is then a fixed handful of batched
tensor ops plus ~2 ops per parameter, with no host<->device sync.

Interface (all entries of REGULARIZERS):
    reg = REGULARIZERS.get(name)(model, groups_fn, **options)   # or build_regularizer(name, model, pruner)
    reg.refresh()          # epoch start / after pruning: rebuild index tensors
    reg.apply(coef)        # after loss.backward(), before optimizer.step(): .grad += coef * d(penalty)
    reg.epoch_end()        # after every training epoch (growing_reg grows its coefficients here)
    reg.state_dict() / reg.load_state_dict(d), reg.stats(), reg.importance()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from torch_pruning.pruner import function

from ..errors import UserError
from ..registry import Registry
from .groups import dependency_groups
from .regularizer_plans import (
    CONV_OR_LINEAR,
    IN_FNS,
    OUT_FNS,
    ChannelNormPlan,
    Member,
    ScalePlan,
    walk_groups,
    weight_dims,
)

REGULARIZERS: Registry = Registry("regularizer")
SMALL_NORM = 1e-2  # stats(): a channel whose group L2 norm is below this counts as "nearly pruned"

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)  # what BNScalePruner's slimming touches

# method.<key> of the run config -> the regularizer option it sets
CONFIG_OPTIONS = {"reg": "reg", "alpha": "alpha", "delta_reg": "delta_reg", "reg_update_every": "update_every"}


class Regularizer:
    """Base: option parsing, group walking and the group-L2 importance shared by all entries.

    DEFAULTS and COEF are the one source of this regularizer's defaults: the method YAMLs leave them out,
    and a run fills the method.* values it was not given from here (see `method_defaults`)."""

    name = "?"
    DEFAULTS: ClassVar[dict[str, Any]] = {"ignored_layers": ()}
    COEF: ClassVar[float] = 1.0  # default method.reg when it is the coefficient of apply() (no "reg" option)

    def __init__(self, model: nn.Module, groups_fn: Callable[[], list], **options):
        unknown = sorted(set(options) - set(self.DEFAULTS))
        if unknown:
            raise UserError(
                f"unknown option '{unknown[0]}' for regularizer '{self.name}'; "
                f"valid options: {', '.join(sorted(self.DEFAULTS))}"
            )
        for key, value in options.items():  # numbers must be numbers >= 0 (a YAML typo otherwise slips by)
            default = self.DEFAULTS[key]
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise UserError(f"regularizer '{self.name}' option {key}={value!r}: expected a number >= 0")
        self.options = {**self.DEFAULTS, **options}
        self.model = model
        self.groups_fn = groups_fn
        self._ignored = {id(m) for m in self.options["ignored_layers"]}
        self.refresh()

    # -- structure -----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-walk the dependency groups and rebuild every index tensor (on the params' device)."""
        param = next(self.model.parameters())
        self.device = param.device
        self.items, self.group_sizes = walk_groups(self.groups_fn())
        self.n_groups, self.n_channels = len(self.group_sizes), sum(self.group_sizes)
        sizes = torch.tensor(self.group_sizes, dtype=torch.long)
        self.group_of_channel = torch.repeat_interleave(torch.arange(self.n_groups), sizes).to(self.device)
        self.group_size_t = sizes.to(self.device, torch.float32)
        # GroupMagnitudeImportance(p=2) default targets: conv/linear out+in, affine BN, affine LayerNorm.
        self.imp_plan = ChannelNormPlan(self.items, self.group_sizes, self.device, _importance_member)
        self._build()

    def _build(self) -> None:
        """Subclasses: build their own plans from self.items."""

    def _ignored_layer(self, module: nn.Module) -> bool:
        return id(module) in self._ignored

    # -- per step ------------------------------------------------------------------------------------
    def apply(self, coef: float) -> None:
        raise NotImplementedError

    def epoch_end(self) -> None:
        """After every training epoch; a regularizer whose coefficients grow once per epoch grows them here."""

    # -- from the run config -------------------------------------------------------------------------
    @classmethod
    def config_options(cls, method) -> dict[str, Any]:
        """The options that `method` (a MethodConfig) sets: the method.* keys this regularizer takes
        (CONFIG_OPTIONS entries among its DEFAULTS) that are not None."""
        return {opt: getattr(method, key) for key, opt in CONFIG_OPTIONS.items()
                if opt in cls.DEFAULTS and getattr(method, key) is not None}

    @classmethod
    def strength(cls, method) -> float:
        """What apply()'s coefficient is after warm-up: method.reg (COEF when unset)."""
        return cls.COEF if method.reg is None else method.reg

    # -- reporting -----------------------------------------------------------------------------------
    @torch.no_grad()
    def importance(self) -> torch.Tensor:
        """Per-channel group L2 norm: sqrt(mean over the group's members of the channel's squared norm)."""
        return self.imp_plan.channel_sq_norms().sqrt()

    SPARSIFIES = "group L2 norms"  # what sparsity_values() measures, for the plot's title

    @torch.no_grad()
    def sparsity_values(self) -> torch.Tensor:
        """Per-channel magnitudes of what this regularizer drives to zero (sparsity.png plots them)."""
        return self.importance()

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        imp = self.importance()
        return {
            "group_norm_mean": float(imp.mean()) if imp.numel() else 0.0,
            "frac_below_1e-2": float((imp < SMALL_NORM).float().mean()) if imp.numel() else 0.0,
            "channels": self.n_channels,
            "groups": self.n_groups,
        }

    def state_dict(self) -> dict:
        return {"name": self.name, "channels": self.n_channels}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise UserError(f"regularizer state is for '{state.get('name')}', not '{self.name}'")

    # -- helpers -------------------------------------------------------------------------------------
    def _segment_max_min(self, values: torch.Tensor):
        """Per-channel (max, min) of `values` over the channel's group; no host sync."""
        gid = self.group_of_channel
        gmax = values.new_full((self.n_groups,), float("-inf")).scatter_reduce_(0, gid, values, "amax")
        gmin = values.new_full((self.n_groups,), float("inf")).scatter_reduce_(0, gid, values, "amin")
        return gmax.index_select(0, gid), gmin.index_select(0, gid)


def _importance_member(item) -> bool:
    """Members GroupMagnitudeImportance(p=2) sums over (it skips depthwise/attention/param handlers)."""
    layer, fn = item.module, item.handler
    if fn in OUT_FNS or fn in IN_FNS:
        return isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear))
    if fn == function.prune_batchnorm_out_channels:
        return bool(layer.affine)
    if fn == function.prune_layernorm_out_channels:
        return bool(layer.elementwise_affine)
    return False


def _regularized_weight_slices(m: Member, ignored=None):
    """(attr, dim) slices that GroupNormPruner (ignored=None) / GrowingRegPruner (ignored=predicate)
    regularize() touch for one member; depthwise, attention and parameter handlers are untouched there.

    Deviations (documented): grouped (non-depthwise) conv inputs are skipped (the library's code for them
    indexes past the weight), and transposed convs use their real out/in dims."""
    layer, fn = m.module, m.handler
    out_dim, in_dim = weight_dims(layer)
    if isinstance(layer, CONV_OR_LINEAR) and fn in OUT_FNS:
        if ignored is None or not ignored(layer):  # GrowingReg skips ignored layers here
            return [("weight", out_dim), ("bias", 0)]
    elif isinstance(layer, CONV_OR_LINEAR) and fn in IN_FNS:
        if getattr(layer, "groups", 1) == 1:  # GrowingReg checks no ignored layers here
            return [("weight", in_dim)]
    elif isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.affine:
        # GroupNorm matches the BN handler, GrowingReg the type (same members in practice)
        if ignored is None and fn == function.prune_batchnorm_out_channels:
            return [("weight", 0), ("bias", 0)]
        if ignored is not None and not ignored(layer):
            return [("weight", 0), ("bias", 0)]
    return []


def _slices_to_entries(items, want_bias: bool, **kw):
    entries = []
    for item in items:
        for attr, dim in _regularized_weight_slices(item, **kw):
            param = getattr(item.module, attr, None)
            if param is None or (attr == "bias" and not want_bias):
                continue
            entries.append((param, dim, item))
    return entries


@REGULARIZERS.register("group_norm")
class GroupNormRegularizer(Regularizer):
    """DepGraph group regularization (GroupNormPruner.regularize): grad += coef * gamma[root] * w with
    gamma = (2**alpha) ** ((max - imp) / (max - min)) per group, so gamma in [1, 2**alpha].
    Deviation: a group whose importances are all equal gets gamma = 1 (the library yields NaN)."""

    name = "group_norm"
    DEFAULTS: ClassVar[dict[str, Any]] = {**Regularizer.DEFAULTS, "alpha": 4.0, "bias": False}
    COEF = 5e-4  # reproduce/main.py's --reg default for group_sl

    def _build(self):
        self.base = 2.0 ** float(self.options["alpha"])
        entries = _slices_to_entries(self.items, bool(self.options["bias"]))
        self.scale_plan = ScalePlan(entries, self.group_sizes, self.device)

    @torch.no_grad()
    def gamma(self) -> torch.Tensor:
        imp = self.imp_plan.channel_sq_norms().sqrt()
        mx, mn = self._segment_max_min(imp)
        span = mx - mn
        ratio = torch.where(span > 0, (mx - imp) / span, torch.zeros_like(imp))
        return torch.pow(self.base, ratio)

    @torch.no_grad()
    def apply(self, coef: float) -> None:
        self.scale_plan.add_scaled(self.gamma(), coef)


@REGULARIZERS.register("growing_reg")
class GrowingRegRegularizer(Regularizer):
    """Growing regularization (GrowingRegPruner): per-channel penalty state starting at `reg`;
    update_reg() adds delta_reg * standardized importance (weak channels grow fastest).
    apply(coef): grad += coef * reg[root] * w on conv/linear out+in and affine BatchNorm weights.
    coef = 1 reproduces the library (whose BatchNorm part is a no-op; ours acts)."""

    name = "growing_reg"
    # reproduce/main.py's --reg and --delta_reg defaults; update_every 0 = once per epoch, as that script
    DEFAULTS: ClassVar[dict[str, Any]] = {
        **Regularizer.DEFAULTS, "reg": 5e-4, "delta_reg": 1e-4, "update_every": 0, "bias": False,
    }

    def __init__(self, model, groups_fn, **options):
        self.reg = None
        self._layout = None
        self.calls = 0
        super().__init__(model, groups_fn, **options)

    def _build(self):
        entries = _slices_to_entries(self.items, bool(self.options["bias"]), ignored=self._ignored_layer)
        self.scale_plan = ScalePlan(entries, self.group_sizes, self.device)
        layout = tuple(self.group_sizes)
        if self.reg is None or layout != self._layout:  # new structure (e.g. pruned): restart like the library
            self.reg = torch.full((self.n_channels,), float(self.options["reg"]), device=self.device)
        self.reg = self.reg.to(self.device)
        self._layout = layout

    @torch.no_grad()
    def update_reg(self) -> None:
        """reg += delta_reg * (max - x) / (max - min) per group, x = mean-normalized group L2^2 (as the
        library with GroupMagnitudeImportance's default normalizer='mean', its 1e-8 eps included)."""
        x = self.imp_plan.channel_sq_norms()
        gid = self.group_of_channel
        gmean = torch.zeros(self.n_groups, device=x.device).index_add_(0, gid, x) / self.group_size_t
        mx, mn = self._segment_max_min(x)
        den = (mx - mn) + 1e-8 * gmean.index_select(0, gid)
        standardized = torch.where(den > 0, (mx - x) / den, torch.zeros_like(x))
        self.reg.add_(standardized, alpha=float(self.options["delta_reg"]))

    def epoch_end(self) -> None:
        if int(self.options["update_every"]) == 0:  # 0: once per epoch, as the reference script does
            self.update_reg()

    @classmethod
    def strength(cls, method) -> float:
        """1: method.reg is the initial per-channel coefficient (the "reg" option), not apply()'s."""
        return 1.0

    @torch.no_grad()
    def apply(self, coef: float) -> None:
        self.calls += 1
        every = int(self.options["update_every"])
        if every > 0 and self.calls % every == 0:
            self.update_reg()
        self.scale_plan.add_scaled(self.reg, coef)

    def stats(self):
        out = super().stats()
        out.update(reg_mean=float(self.reg.mean()), reg_max=float(self.reg.max()))
        return out

    def state_dict(self):
        return {**super().state_dict(), "reg": self.reg.detach().cpu().clone(), "calls": self.calls}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        reg = state["reg"]
        if reg.shape != (self.n_channels,):
            raise UserError(
                f"growing_reg state has {reg.shape[0]} channels but the model has {self.n_channels}; "
                "was the model pruned after the state was saved?"
            )
        self.reg = reg.to(self.device, torch.float32).clone()
        self.calls = int(state.get("calls", 0))


@REGULARIZERS.register("slim")
class SlimRegularizer(Regularizer):
    """Network Slimming (BNScalePruner, group_lasso=False): grad += coef * sign(w) on every affine
    BatchNorm weight outside ignored_layers."""

    name = "slim"
    COEF = 1e-5  # L1 strength on the BN scales (Network Slimming's 1e-5)

    def _build(self):
        self.bn_weights: list[nn.Parameter] = [
            m.weight for m in self.model.modules()
            if isinstance(m, _BATCHNORMS) and m.affine and not self._ignored_layer(m)
        ]

    SPARSIFIES = "BatchNorm scales |gamma|"

    @torch.no_grad()
    def sparsity_values(self) -> torch.Tensor:
        weights = [w.detach().abs().flatten() for w in self.bn_weights]
        return torch.cat(weights) if weights else torch.zeros(0)

    @torch.no_grad()
    def apply(self, coef: float) -> None:
        pairs = [(w.grad, w) for w in self.bn_weights if w.grad is not None]
        if pairs:
            grads, weights = zip(*pairs)
            torch._foreach_add_(list(grads), torch._foreach_sign(list(weights)), alpha=coef)


@REGULARIZERS.register("group_slim")
class GroupSlimRegularizer(Regularizer):
    """Group-lasso slimming (BNScalePruner, group_lasso=True): per group and channel,
    gamma = coef / sqrt(mean over the group's affine BNs of w^2 + 1e-9); grad_bn += gamma[root] * w."""

    name = "group_slim"
    COEF = 1e-5  # as slim
    EPS = 1e-9  # the library's guard against 1/0 for an all-zero channel

    def _build(self):
        def bn_member(item):
            return item.handler == function.prune_batchnorm_out_channels and bool(item.module.affine)

        self.bn_plan = ChannelNormPlan(self.items, self.group_sizes, self.device, bn_member)
        entries = [
            (item.module.weight, 0, item) for item in self.items
            if isinstance(item.module, nn.modules.batchnorm._BatchNorm) and item.module.affine
            and not self._ignored_layer(item.module)
        ]
        self.scale_plan = ScalePlan(entries, self.group_sizes, self.device)

    SPARSIFIES = "group BatchNorm-scale norms"

    @torch.no_grad()
    def sparsity_values(self) -> torch.Tensor:
        """Per channel: sqrt(mean over the group's affine BNs of gamma^2), what the group lasso shrinks."""
        return self.bn_plan.channel_sq_norms().sqrt()

    @torch.no_grad()
    def apply(self, coef: float) -> None:
        gamma = torch.rsqrt(self.bn_plan.channel_sq_norms() + self.EPS)
        self.scale_plan.add_scaled(gamma, coef)


def build_regularizer(name: str, model: nn.Module, pruner, **options) -> Regularizer:
    """Regularizer `name` over the dependency groups of a torch-pruning BasePruner (its ignored layers
    and root module types included). The groups are re-read from pruner.DG at every refresh()."""
    cls = REGULARIZERS.get(name)

    def groups_fn():
        return list(dependency_groups(pruner))

    options.setdefault("ignored_layers", list(pruner.ignored_layers))
    return cls(model, groups_fn, **options)


def method_defaults(name: str) -> dict[str, Any]:
    """The method.* defaults of regularizer `name`: its DEFAULTS under their config names, and its COEF as
    method.reg when "reg" is not one of its options."""
    cls = REGULARIZERS.get(name)
    out = {key: cls.DEFAULTS[opt] for key, opt in CONFIG_OPTIONS.items() if opt in cls.DEFAULTS}
    out.setdefault("reg", cls.COEF)
    return out


def regularizer_from_config(name: str, model: nn.Module, pruner, method) -> tuple[Regularizer, float]:
    """(regularizer, strength) for a run: the options `method` (a MethodConfig) sets, the rest defaults.
    The strength multiplies apply()'s warm-up factor: method.reg, or 1 for a regularizer that keeps its own
    per-channel coefficients (its "reg" option)."""
    cls = REGULARIZERS.get(name)
    return build_regularizer(name, model, pruner, **cls.config_options(method)), cls.strength(method)
