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

from .config import RunConfig

ANY = "*"  # every schedule not listed for the method

# method -> schedule -> {MethodConfig key: value}. STUDY.md (scripts/study_digits.py) measures the
# demo values on digits; "*" holds what the methods' YAML files held before (the reference values).
METHOD_DEFAULTS: Dict[str, Dict[str, dict]] = {
    "group_norm": {ANY: {"reg": 5e-4},
                   "demo": {"reg": 2e-2},  # 77% of resnet20's channels below 1e-2 after demo sparse training
                   "tiny": {"reg": 2e-2}},
    "growing_reg": {ANY: {"reg": 5e-4, "delta_reg": 1e-4},
                    "demo": {"reg": 5e-3, "delta_reg": 2e-3},  # per epoch: weak channels' L2 grows by up to 2e-3
                    "tiny": {"reg": 5e-3, "delta_reg": 2e-3}},
    "slim": {ANY: {"reg": 1e-5},
             "demo": {"reg": 5e-3},  # L1 on BN scales: ~1 unit of shrinkage over the demo's steps at its lr
             "tiny": {"reg": 5e-3}},
    "group_slim": {ANY: {"reg": 1e-5},
                   "demo": {"reg": 5e-3},
                   "tiny": {"reg": 5e-3}},
}
FALLBACK = {"reg": 5e-4, "delta_reg": 1e-4}  # methods without a regularizer: unused, but typed numbers


def method_defaults(method: str, schedule: str) -> dict:
    table = METHOD_DEFAULTS.get(method, {})
    return {**FALLBACK, **table.get(ANY, {}), **table.get(schedule, {})}


def resolve_method_defaults(cfg: RunConfig) -> RunConfig:
    """`cfg` with every unset (None) method key filled from the table for its method and schedule."""
    defaults = method_defaults(cfg.method.name, cfg.schedule.name)
    fill = {k: v for k, v in defaults.items() if getattr(cfg.method, k) is None}
    if not fill:
        return cfg
    return replace(cfg, method=replace(cfg.method, **fill))
