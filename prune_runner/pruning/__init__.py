"""Everything that touches torch-pruning, the only package that imports it.

methods.py           the method registry: importance criterion, regularizer and calibration per method
method_defaults.py   the regularization defaults per method and schedule
progressive.py       building a pruner, calibration (Taylor, OBDC), the step loop, pruning to a MACs target
latency_target.py    pruning step by step to a measured latency speed-up (prune.target=latency)
candidates.py        prune.allocation=search: per-group ratios pruned in one shot, scaled to the MACs target
samplers.py          the sampler registry of that search (prune.search.sampler: random, tpe)
width_search.py      the search itself: default allocations first, candidates.jsonl, resume, the winner
round_to.py          the channel multiple each device's kernels run fastest on (prune.round_to=auto)
groups.py            the dependency groups of a pruner, and their per-channel norms
regularizers.py      the sparse-training regularizers (regularizer_plans.py: their batched index plans)
macs.py              MAC and parameter counting after every pruning step
hints.py             what the pruner must be told about a model (classifier, attention heads, ...)
history.py           rebuilding a pruned model from its pruning history
preflight.py         before training: a trial on a copy, under a time and memory limit (prune.preflight_s)
weight_scale.py      after pruning: live filters feeding a BatchNorm to unit norm (prune.restore_weight_scale)
library.py           imports torch-pruning (without its optional timm import)
"""

from .library import tp  # noqa: F401  first: torch-pruning without timm's start-up cost (library.py)

# isort: split
from .groups import channel_group_norms, dependency_groups
from .hints import pruning_hints, sync_after_pruning
from .history import pruned_copy, replay_pruning_history
from .latency_target import (
    LatencyTargetError,
    MachineTooBusyError,
    latency_line,
    prune_to_latency,
    prune_to_latency_in_run,
)
from .macs import MacCounter, count_params
from .method_defaults import METHOD_DEFAULTS, resolve_method_defaults
from .methods import METHODS, NORMALIZERS, MethodSpec, get_method, list_methods
from .progressive import (
    ObdcCalibration,
    PruningTargetError,
    StepLoop,
    build_pruner,
    grad_calibration,
    progressive_prune,
)
from .regularizers import REGULARIZERS, SMALL_NORM, Regularizer, build_regularizer, regularizer_from_config
from .round_to import ROUND_TO, check_round_to, resolve_round_to

__all__ = [
    "METHODS", "METHOD_DEFAULTS", "NORMALIZERS", "REGULARIZERS", "ROUND_TO", "SMALL_NORM", "LatencyTargetError",
    "MacCounter", "MachineTooBusyError", "MethodSpec", "ObdcCalibration", "PruningTargetError", "Regularizer",
    "StepLoop", "build_pruner", "build_regularizer", "channel_group_norms", "check_round_to", "count_params",
    "dependency_groups", "get_method", "grad_calibration", "latency_line", "list_methods", "progressive_prune",
    "prune_to_latency", "prune_to_latency_in_run", "pruned_copy", "pruning_hints", "regularizer_from_config",
    "replay_pruning_history", "resolve_method_defaults", "resolve_round_to", "sync_after_pruning",
]
