"""measure_latency: structure of the result and the model's state afterwards (no timing asserts)."""

from __future__ import annotations

import torch
import torch.nn as nn

from prune_runner.latency import measure_latency


def test_measure_latency_reports_positive_medians_per_batch_size():
    layers = [nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)]
    model = nn.Sequential(*layers).train()
    result = measure_latency(model, (3, 8, 8), "cpu", batch_sizes=(1, 4), warmup=1, repeats=3)
    assert sorted(result) == [1, 4]
    for batch, row in result.items():
        assert set(row) == {"ms_per_batch", "ms_per_image"}
        assert row["ms_per_batch"] > 0
        assert abs(row["ms_per_image"] - row["ms_per_batch"] / batch) < 1e-9
    assert model.training and model[1].training  # training flags restored
    assert torch.equal(model[1].running_mean, torch.zeros(4))  # ran in eval mode: stats untouched
