"""Sparse training that sparsifies: the weak-sparsity warning, and the short schedules' defaults."""

from __future__ import annotations

import pytest
from inprocess import compose, run_inprocess

from prune_runner.pruning.method_defaults import METHOD_DEFAULTS, resolve_method_defaults
from prune_runner.run.stages import weak_sparsity_warning

WEAK = "warning: sparse training left only"


def test_warning_names_the_fraction_and_a_stronger_reg():
    line = weak_sparsity_warning(0.004, 5e-4)
    assert line.startswith(WEAK) and "0.4% of channels" in line and "method.reg=0.005" in line
    assert "\n" not in line
    assert weak_sparsity_warning(0.3, 5e-4) is None


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("sparsify")


@pytest.mark.slow  # two short pipeline runs: about a minute on an idle 2-core machine
def test_warning_fires_for_a_tiny_reg_and_not_for_a_strong_one(root):
    common = {"model": "resnet20", "method": "group_norm", "dataset.train_limit": 256,  # 8 steps an epoch
              "stages": "[pretrain,sparse_train]", "schedule.sparse_train.epochs": 10}
    weak, text_weak = run_inprocess(root / "weak", **common, **{"method.reg": 1e-6})
    assert weak["sparse_train"]["metrics"]["reg_frac_below_1e-2"] < 0.05
    assert WEAK in text_weak and "method.reg=1e-05" in text_weak
    strong, text_strong = run_inprocess(root / "strong", **common, **{"method.reg": 0.1})
    assert strong["sparse_train"]["metrics"]["reg_frac_below_1e-2"] >= 0.05
    assert WEAK not in text_strong
    assert "channels have a group L2 norm below 0.01" in text_strong  # what sparse training did, every run


@pytest.mark.parametrize("schedule", ["demo", "tiny"])
def test_short_schedules_get_stronger_defaults_and_explicit_values_win(schedule):
    for method in ("group_norm", "slim", "group_slim", "growing_reg"):
        cfg = resolve_method_defaults(compose({"method": method, "schedule": schedule}))
        paper = resolve_method_defaults(compose({"method": method, "schedule": "default"}))
        assert cfg.method.reg == METHOD_DEFAULTS[method][schedule]["reg"] > paper.method.reg
    explicit = resolve_method_defaults(compose({"method": "group_norm", "schedule": schedule, "method.reg": 1e-3}))
    assert explicit.method.reg == 1e-3


def test_paper_presets_keep_the_paper_values():
    cfg = resolve_method_defaults(compose({"experiment": "resnet56_cifar10_growing_reg_2p11x"}))
    assert (cfg.method.reg, cfg.method.delta_reg) == (1e-4, 1e-5)
    cfg = resolve_method_defaults(compose({"experiment": "resnet56_cifar10_group_norm_2p11x"}))
    assert cfg.method.reg == 5e-4
