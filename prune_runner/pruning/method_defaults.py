"""The one place for the regularization defaults of each method, per schedule.

A regularizer's strength must match the length of the sparse training it runs in: the paper's
`reg=5e-4` for group_norm sparsifies over DepGraph's 100+ CIFAR epochs, but leaves almost no group near
zero in the demo's short run, so pruning then cuts live channels. The short schedules (`demo`, `tiny`)
therefore get stronger coefficients. A key left unset (None) in the config takes its value here; a value
given on the command line or by a preset (the paper presets set the paper's values) is never replaced.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict

from ..config import RunConfig
from .methods import get_method
from .regularizers import method_defaults as regularizer_defaults

# method -> {MethodConfig key: value} for the short schedules. Every other schedule takes the regularizer's
# own defaults (prune_runner/pruning/regularizers.py: the reference values, one source). The short schedules'
# values are sized by the shrinkage they cause over the demo's sparse training: 10 epochs x 22 steps at a
# mean lr of 0.01, x10 for SGD momentum 0.9, i.e. ~22 * coefficient. scripts/study_digits.py measures them
# (STUDY.md). `tiny` (1 sparse epoch, for smoke runs) uses the same values: too short to reach near zero,
# and the weak-sparsity warning says so.
SHORT_SCHEDULES = ("demo", "tiny")
_SHORT = {
    "group_norm": {"reg": 3e-2},  # per-group scaling in [1, 16]: weak groups shrink by e^-10, strong ones e^-0.7
    "growing_reg": {"reg": 1e-2, "delta_reg": 3e-2},  # the weakest channels' L2 coefficient reaches ~0.3
    "slim": {"reg": 5e-2},  # L1 on BN scales: ~1 unit of shrinkage (the paper's 1e-4 over 160 CIFAR epochs: ~3)
    "group_slim": {"reg": 5e-2},  # group lasso on BN scales: the same scale of shrinkage as slim
}
METHOD_DEFAULTS: Dict[str, Dict[str, dict]] = {
    method: {schedule: values for schedule in SHORT_SCHEDULES} for method, values in _SHORT.items()}


def method_defaults(method: str, schedule: str) -> dict:
    """The method.* values a run of `method` under `schedule` uses when the config leaves them unset."""
    regularizer = get_method(method).regularizer
    if regularizer is None:
        return {}  # nothing reads them: they stay None
    return {**regularizer_defaults(regularizer), **METHOD_DEFAULTS.get(method, {}).get(schedule, {})}


def resolve_method_defaults(cfg: RunConfig) -> RunConfig:
    """`cfg` with every unset (None) method key filled in for its method and schedule."""
    defaults = method_defaults(cfg.method.name, cfg.schedule.name)
    fill = {k: v for k, v in defaults.items() if getattr(cfg.method, k) is None}
    if not fill:
        return cfg
    return replace(cfg, method=replace(cfg.method, **fill))
