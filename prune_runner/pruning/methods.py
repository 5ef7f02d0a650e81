"""Method registry: name -> importance criterion + regularizer + calibration.

Every method prunes with torch-pruning's BasePruner (its dependency graph and
`_prune`); the sparse-training regularizers are our own (regularizers.py), so
the library's per-pruner `regularize()` variants are never called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch_pruning as tp

from ..registry import Registry

IMP = tp.importance


@dataclass(frozen=True)
class MethodSpec:
    name: str
    importance: Callable[..., object]  # importance(num_classes, **options) -> a tp importance criterion
    regularizer: Optional[str] = None  # key in regularizers.REGULARIZERS; None: no sparse training
    calibration: Optional[str] = None  # "grad" (Taylor) or "obdc": passes before every pruning step
    summary: str = ""


METHODS: Registry[MethodSpec] = Registry("method")


def _add(name, importance, regularizer=None, calibration=None, summary=""):
    METHODS.add(name, MethodSpec(name, importance, regularizer, calibration, summary))


# `**kw` carries the optional importance normalizer (method.normalizer); LAMP and random have their own.
_add("l1", lambda nc, **kw: IMP.GroupMagnitudeImportance(p=1, **kw), summary="group L1 magnitude")
_add("l2", lambda nc, **kw: IMP.GroupMagnitudeImportance(p=2, **kw), summary="group L2 magnitude")
_add("fpgm", lambda nc, **kw: IMP.FPGMImportance(**kw), summary="distance to the geometric median")
_add("lamp", lambda nc, **kw: IMP.LAMPImportance(), summary="layer-adaptive magnitude")
_add("random", lambda nc, **kw: IMP.RandomImportance(), summary="random channels")
_add("taylor", lambda nc, **kw: IMP.GroupTaylorImportance(**kw), calibration="grad", summary="first-order Taylor")
_add("obdc", lambda nc, **kw: IMP.OBDCImportance(num_classes=nc, **kw), calibration="obdc",
     summary="Kronecker-factored OBD")
_add("slim", lambda nc, **kw: IMP.BNScaleImportance(**kw), regularizer="slim", summary="Network Slimming (BN L1)")
_add("group_slim", lambda nc, **kw: IMP.BNScaleImportance(**kw), regularizer="group_slim",
     summary="group lasso on BN scales")
_add("group_norm", lambda nc, **kw: IMP.GroupMagnitudeImportance(p=2, **kw), regularizer="group_norm",
     summary="DepGraph group sparsity (group_sl)")
_add("growing_reg", lambda nc, **kw: IMP.GroupMagnitudeImportance(p=2, **kw), regularizer="growing_reg",
     summary="growing L2 regularization")

NORMALIZERS = ("mean", "max", "sum", "standarization", "gaussian")  # tp's per-group score normalizers


def list_methods() -> List[str]:
    return METHODS.names()


def get_method(name: str) -> MethodSpec:
    return METHODS.get(name)
