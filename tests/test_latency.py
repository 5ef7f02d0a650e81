"""measure_latency and compare_latency: structure, the model's state afterwards, and (with a fake
clock) what a load that changes during the measurement does to each."""

from __future__ import annotations

import math
import platform
import resource

import pytest
import torch
import torch.nn as nn

from prune_runner.latency import meter as latency
from prune_runner.latency.meter import MAX_INNER, MAX_SPREAD, SAMPLE_MS, LatencyMeter, compare_latency, measure_latency


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


def _pair():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 2)).train()
    final = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).train()
    return base, final


def test_compare_latency_reports_median_ratio_with_its_spread():
    base, final = _pair()
    result = compare_latency(base, final, (3, 8, 8), "cpu", batch_sizes=(1, 4), warmup=1, repeats=5)
    assert sorted(result) == [1, 4]
    for row in result.values():
        assert row["base_ms"] > 0 and row["final_ms"] > 0
        assert row["ratio_q1"] <= row["ratio"] <= row["ratio_q3"]
        assert row["spread"] == pytest.approx((row["ratio_q3"] - row["ratio_q1"]) / row["ratio"])
        assert row["noisy"] == (row["spread"] > MAX_SPREAD)
    assert base.training and final[1].training  # training flags restored
    assert torch.equal(base[1].running_mean, torch.zeros(8))  # ran in eval mode


def _loaded_clock(monkeypatch, slow_calls: int):
    """Every forward sample takes 1 ms, except the first `slow_calls`, taken under a 3x load."""
    calls = {"n": 0}

    def sample(model, x, inner):
        calls["n"] += 1
        return 3.0 if calls["n"] <= slow_calls else 1.0

    monkeypatch.setattr(latency, "_sample_ms", sample)
    monkeypatch.setattr(latency, "_inner_count", lambda model, x, warmup, sample_ms=None: 1)


def test_a_load_that_ends_midway_is_no_speed_up_when_interleaved(monkeypatch):
    """Two equally fast models; the machine is busy for the first 20 samples, then idle."""
    base, final = _pair()
    _loaded_clock(monkeypatch, slow_calls=20)
    sequential = (measure_latency(base, (3, 8, 8), "cpu", (1,), repeats=20)[1]["ms_per_batch"]
                  / measure_latency(final, (3, 8, 8), "cpu", (1,), repeats=20)[1]["ms_per_batch"])
    assert sequential == 3.0  # what timing them one after the other reports
    _loaded_clock(monkeypatch, slow_calls=20)
    row = compare_latency(base, final, (3, 8, 8), "cpu", (1,), repeats=20)[1]
    assert row["ratio"] == 1.0 and not row["noisy"]


def test_a_load_that_flickers_is_flagged_noisy(monkeypatch):
    base, final = _pair()
    times = iter([1.0, 1.0, 3.0, 1.0, 1.0, 3.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0] * 10)
    monkeypatch.setattr(latency, "_sample_ms", lambda model, x, inner: next(times))
    monkeypatch.setattr(latency, "_inner_count", lambda model, x, warmup, sample_ms=None: 1)
    row = compare_latency(base, final, (3, 8, 8), "cpu", (1,), repeats=12)[1]
    assert row["noisy"] and row["spread"] > MAX_SPREAD


def test_results_table_and_json_show_the_spread_and_flag_noise():
    from io import StringIO

    from rich.console import Console

    from prune_runner.report.results import _latency_summary, print_results

    compare = {1: {"base_ms": 2.0, "final_ms": 1.0, "ratio": 2.0, "ratio_q1": 1.9, "ratio_q3": 2.1,
                   "spread": 0.1, "noisy": False},
               8: {"base_ms": 9.0, "final_ms": 6.0, "ratio": 1.5, "ratio_q1": 0.9, "ratio_q3": 2.4,
                   "spread": 1.0, "noisy": True}}
    lat = _latency_summary({"device": "cpu", "batch_sizes": [1, 8], "max_spread": MAX_SPREAD, "compare": compare})
    assert lat["speed_up"] == {"1": 2.0, "8": 1.5} and lat["noisy"] == {"1": False, "8": True}
    assert lat["speed_up_iqr"]["8"] == [0.9, 2.4] and lat["method"] == "interleaved"
    r = {"choices": {"model": "m", "method": "l1", "dataset": "digits"}, "seed": 0, "acc_delta": 0.0,
         "speed_up": 2.0, "target_speed_up": 2.0, "params_ratio": 0.5, "latency": lat,
         **{k: {"acc": 0.9, "macs": 1e6, "params": 1e5} for k in ("base", "pruned", "final")}}
    out = StringIO()
    print_results(Console(file=out, width=300), r)
    text = out.getvalue()
    assert "batch 1: 2.00x [1.90-2.10]," in text and "batch 8: 1.50x [0.90-2.40] NOISY" in text
    assert "rerun on an idle machine" in text


def test_report_marks_a_noisy_latency():
    from prune_runner.report import aggregate, format_row

    run = {"run_dir": "r", "choices": {"dataset": "digits", "model": "resnet20", "method": "l1"}, "seed": 0,
           "base": {"acc": 0.9, "macs": 2e6, "params": 2e5}, "final": {"acc": 0.9, "macs": 1e6, "params": 1e5},
           "speed_up": 2.0, "target_speed_up": 2.0, "params_ratio": 0.5,
           "latency": {"device": "cpu", "batch_sizes": [1, 64], "speed_up": {"1": 1.1, "64": 1.6},
                       "noisy": {"1": False, "64": True}}}
    assert "1.60x NOISY (1 run(s))" in format_row(aggregate([run])[0])  # in the column of batch 64
    run["latency"]["noisy"]["64"] = False
    assert not any("NOISY" in cell for cell in format_row(aggregate([run])[0]))


def test_a_sample_lasts_sample_ms_and_a_forward_that_long_ends_the_warm_up_early(monkeypatch):
    """With a fake clock: 0.5 ms forwards give SAMPLE_MS / 0.5 forwards a sample after every warm-up forward;
    tiny ones MAX_INNER; a forward longer than a sample is a sample by itself, warmed up by two."""
    for ms, inner, warmups in ((0.5, math.ceil(SAMPLE_MS / 0.5), 5), (1e-4, MAX_INNER, 5), (3 * SAMPLE_MS, 1, 2)):
        calls = []
        monkeypatch.setattr(latency, "_sample_ms", lambda model, x, n: calls.append(n) or ms)
        assert latency._inner_count(None, None, warmup=5) == inner
        assert calls == [1] * warmups


def test_the_prune_stage_and_eval_read_latency_with_one_meter(monkeypatch):
    """One fake clock whose load comes and goes, through eval's compare_latency and the prune stage's
    LatencyMeter: the same samples (forwards per sample, pairs, order), so the same ratio and IQR."""
    base, final = _pair()

    def run(read):
        calls = []
        load = iter([1.0, 1.3, 1.0, 1.0, 2.0, 1.0, 1.1] * 40)

        def sample(model, x, inner):
            calls.append((model[0].out_channels, inner))
            return (3.0 if model[0].out_channels == 8 else 2.0) * next(load)

        monkeypatch.setattr(latency, "_sample_ms", sample)
        return read(), calls

    row, eval_calls = run(lambda: compare_latency(base, final, (3, 8, 8), "cpu", (1,))[1])
    meter = LatencyMeter(base, (3, 8, 8), "cpu", "fp32", 1)
    reading, prune_calls = run(lambda: meter(final))
    assert prune_calls == eval_calls and eval_calls[-1][1] == math.ceil(SAMPLE_MS / 3.0)  # the slower model
    assert (reading.ratio, reading.q1, reading.q3, reading.noisy) == \
        (row["ratio"], row["ratio_q1"], row["ratio_q3"], row["noisy"])
    assert row["ratio_q1"] < row["ratio_q3"] and row["repeats"] == latency.REPEATS  # the load spread the ratios


def test_on_the_cpu_the_pairs_spread_over_copies_of_both_models(monkeypatch):
    """Where a copy's tensors land moves its speed, so the pairs are taken on PLACEMENTS fresh copies of both
    models, REPEATS / PLACEMENTS pairs each; a copy that runs 25% slower moves the upper quartile, not the
    median."""
    base, final = _pair()
    seen = []

    def sample(model, x, inner):
        seen.append(model)
        slow = 1.25 if len({id(m) for m in seen if m[0].out_channels == 8}) == 2 else 1.0  # the second copy
        return (2.0 if model[0].out_channels == 8 else 1.0) * (slow if model[0].out_channels == 8 else 1.0)

    monkeypatch.setattr(latency, "_sample_ms", sample)
    monkeypatch.setattr(latency, "_inner_count", lambda model, x, warmup, sample_ms=None: 1)
    row = compare_latency(base, final, (3, 8, 8), "cpu", (1,), repeats=latency.REPEATS)[1]
    bases = [m for m in seen if m[0].out_channels == 8]
    finals = [m for m in seen if m[0].out_channels == 4]
    ids = list(dict.fromkeys(id(m) for m in bases))
    assert len(ids) == latency.PLACEMENTS == len({id(m) for m in finals})
    assert not any(m is base for m in bases) and not any(m is final for m in finals)  # never the models
    per_copy = latency.REPEATS // latency.PLACEMENTS
    assert [sum(id(m) == i for m in bases) for i in ids] == [per_copy] * latency.PLACEMENTS
    # 15 pairs read 2.0x, the slow copy's 5 read 2.5x: the median stays, the upper quartile shows the copy
    assert row["ratio"] == 2.0 and row["ratio_q3"] == pytest.approx(2.125)
    assert row["repeats"] == latency.REPEATS
    few = compare_latency(base, final, (3, 8, 8), "cpu", (1,), repeats=3)[1]
    assert few["repeats"] == 3  # fewer pairs than placements: one pair per copy


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_meter_keeps_freed_memory_so_forwards_do_not_fault_their_activations_in_again():
    # glibc's default returns a freed 4 MB activation to the OS and faults it in again, page by page, in the next
    # forward (thousands of page faults per forward here), by a threshold that moves with what the process freed
    # before: a reading then depends on the process's history (latency/meter.py, keep_freed_memory)
    assert latency.keep_freed_memory() is True
    net = nn.Sequential(*[nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()) for _ in range(4)]).eval()
    x = torch.randn(64, 16, 32, 32)  # 4 MB per activation: above glibc's default threshold (128 kB)
    pages = 8 * x.numel() * 4 // resource.getpagesize()  # the pages of one forward's activations
    with torch.inference_mode():
        net(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            net(x)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
    assert faults < 0.01 * pages, f"{faults:.0f} page faults per forward of {pages} activation pages"
