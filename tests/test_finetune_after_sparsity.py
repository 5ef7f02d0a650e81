"""Fine-tuning must not undo strong sparse training: after group_norm at the demo's strong coefficient
and pruning to 3x, fine-tuning keeps the accuracy the pruned model had (less 1 pp).

Before the surviving filters were rescaled and the dead ones zeroed (prune.restore_weight_scale), the
first fine-tuning epoch at lr 0.02 threw such a model from 99% to chance."""

from __future__ import annotations

import pytest
from inprocess import run_inprocess


@pytest.mark.slow  # the demo schedule at 3x: several minutes on a 2-core CPU
def test_finetune_keeps_the_accuracy_after_pruning(tmp_path):
    records, text = run_inprocess(tmp_path / "run", model="resnet20", method="group_norm", schedule="demo",
                                  **{"prune.speed_up": 3, "prune.iterative_steps": 100})
    sparse = records["sparse_train"]["metrics"]
    assert sparse["reg_frac_below_1e-2"] > 0.3, sparse  # the strong regularizer did sparsify
    pruned = records["prune"]["metrics"]
    # live filters rescaled; whether any kept channel is dead (and zeroed) depends on how far the MACs target
    # reaches into the near-zero ones (tests/test_weight_scale.py covers the zeroing itself)
    assert pruned["rescaled_filters"] > 0 and pruned["speed_up"] >= 3
    final = records["finetune"]["metrics"]["acc"]
    assert final >= pruned["acc"] - 0.01, (pruned["acc"], final)
    print(f"after pruning {pruned['acc']:.4f} (stale BN {pruned['acc_before_bn_recal']:.4f}), "
          f"after fine-tuning {final:.4f}, near zero {sparse['reg_frac_below_1e-2']:.3f}")
