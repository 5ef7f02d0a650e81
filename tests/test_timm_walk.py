"""One model of every timm family (`make test-walk`, beside the torchvision walk): pruned end to end with group_norm
and with l1, or refused before training with one line; none fails.

The walk is scripts/timm_walk.py (which also writes its table into docs/how-to/models.md): per family, the smallest
architecture at the smallest input side it runs at; support.py's table or the pre-flight check refuses it, or it
is pruned to 1.5x MACs, runs in eval and in training mode, and the model rebuilt from its checkpoint gives the
same outputs. A table entry must still be refused by the pre-flight check itself (the walk checks it).
"""

from __future__ import annotations

import sys

import pytest

timm = pytest.importorskip("timm")

from conftest import script_main  # noqa: E402

script_main("timm_walk")
walk = sys.modules["script_timm_walk"]


@pytest.mark.walk
@pytest.mark.parametrize("family", timm.list_modules())
def test_timm_family_is_pruned_or_refused_before_training(family):
    row = walk.walk_family(family)
    for method, outcome in row.outcomes.items():
        assert outcome.status in ("pruned", "refused"), (row.model, method, outcome.detail)
        if outcome.status == "refused":  # the one line a run ends with, before any epoch
            assert "\n" not in outcome.detail and outcome.detail.startswith(f"model {row.model} "), outcome.detail
        else:  # the hints name every parameter outside a prunable layer: torch-pruning has nothing to warn about
            assert not outcome.unwrapped_warning, (row.model, method)
