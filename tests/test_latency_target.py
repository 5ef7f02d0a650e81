"""prune.target=latency: the stopping rule under a fake, noisy and non-monotone timer, the one-line error of an
unreachable target, round_to=auto, and the options' checks and stage hash. No real timing is asserted."""

from __future__ import annotations

import copy
import json
import random
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from conftest import results_of

from prune_runner.config import RunConfig
from prune_runner.errors import UnknownChoiceError, UserError
from prune_runner.pruning import (
    ROUND_TO,
    LatencyTargetError,
    MacCounter,
    build_pruner,
    check_round_to,
    get_method,
    progressive_prune,
    prune_to_latency,
    resolve_round_to,
)
from prune_runner.pruning.latency_target import Measurement, StoppingRule, run_to_target
from prune_runner.run.records import StageInputs, own_config


def fake_timer(ratios):
    """measure(step, macs, confirmation) returning the next of `ratios`; the calls are kept."""
    calls = []
    values = iter(ratios)

    def measure(step, macs, confirmation):
        r = next(values)
        calls.append((step, r, confirmation))
        return Measurement(step, macs, r, r * 0.97, r * 1.03, 0.0, confirmation)

    return measure, calls


def test_a_lucky_measurement_is_confirmed_before_pruning_stops():
    """Measuring after every step: a noisy sequence that touches the target once by luck (1.52, then 1.38 on
    the fresh measurement), falls back, and only later holds it twice in a row."""
    measure, calls = fake_timer([1.05, 1.12, 1.08, 1.52, 1.38, 1.30, 1.47, 1.44, 1.56, 1.53, 9.9])
    outcome = run_to_target(StoppingRule(1.5, every_step=True), 50, lambda step: 1 + 0.1 * step, measure)
    assert outcome.reached and outcome.final.confirmation and outcome.final.ratio == 1.53
    assert [(step, r) for step, r, confirm in calls if confirm] == [(4, 1.38), (8, 1.53)]
    assert outcome.steps == 8 and len(outcome.measurements) == 10  # the lucky 1.52 alone did not stop it


def test_a_confirmation_far_from_its_probe_is_checked_once_more():
    """1.55x, then a confirming 1.76x: 13% apart, so the machine changed in between; the third reading, 1.30x,
    falls short and pruning goes on. At the next step 1.60x and 1.62x agree: two readings stop it."""
    measure, calls = fake_timer([1.0, 1.55, 1.76, 1.30, 1.60, 1.62])
    outcome = run_to_target(StoppingRule(1.5, every_step=True), 10, lambda step: 1 + 0.5 * step, measure)
    assert outcome.reached and outcome.steps == 3 and outcome.final.ratio == 1.62
    assert [(step, r) for step, r, confirm in calls if confirm] == [(2, 1.76), (2, 1.30), (3, 1.62)]


def test_predicting_from_macs_measures_a_few_times_near_the_target():
    """Latency ~ MACs^0.55 with +-4% noise and a slower width every fifth step; the first measurement waits
    for the MACs target, the stop is confirmed, and the true speed-up there is within 5% of the target."""
    rng = random.Random(0)

    def truth(macs):
        return macs ** 0.55

    def measure(step, macs, confirmation):
        r = truth(macs) * (1 + rng.uniform(-0.04, 0.04)) * (0.9 if step % 5 == 0 else 1.0)
        return Measurement(step, macs, r, r, r, 0.0, confirmation)

    for target in (1.5, 2.0):
        outcome = run_to_target(StoppingRule(target), 200, lambda step: 1.02 ** step, measure)
        assert outcome.reached and outcome.final.confirmation
        assert outcome.measurements[0].macs_speed_up >= target  # nothing measured before the MACs target
        assert len(outcome.measurements) <= 8
        assert truth(outcome.macs_speed_up) >= 0.95 * target


def test_the_rule_measures_every_step_only_where_that_is_cheap():
    measure, calls = fake_timer([1.0] * 100)
    run_to_target(StoppingRule(3.0), 40, lambda step: 1 + 0.01 * step, measure, lambda step_s: False)
    assert len(calls) == 1  # only at the end of the budget: the MACs target was never reached
    measure, calls = fake_timer([1.0] * 100)
    run_to_target(StoppingRule(3.0), 40, lambda step: 1 + 0.01 * step, measure, lambda step_s: True)
    assert len(calls) == 40


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


class SlowMeter:
    """Stands in for LatencyMeter: latency barely follows MACs (bound by what pruning does not shrink)."""

    batch, dtype, device = 1, "fp32", torch.device("cpu")

    def measurement_seconds(self):
        return 1.0

    def __call__(self, model, step, macs_speed_up, confirmation):
        r = min(1.2, 1 + 0.05 * (macs_speed_up - 1))
        return Measurement(step, macs_speed_up, r, r, r, 0.0, confirmation)


def test_an_unreachable_latency_target_is_one_line_with_the_best_speed_up_and_why():
    model = _tiny_net()
    x = torch.randn(1, 3, 8, 8)
    pruner = build_pruner(model, x, get_method("l1"), 10, steps=20, max_pruning_ratio=0.9)
    with pytest.raises(LatencyTargetError) as err:
        prune_to_latency(model, pruner, MacCounter(model, x), 2.0, SlowMeter(), describe="model tiny")
    text = str(err.value)
    assert "\n" not in text and isinstance(err.value, UserError)
    assert "model tiny reached a measured latency speed-up of only 1.20x (batch 1, cpu fp32" in text
    assert "prune.max_pruning_ratio=0.9" in text and "latency is bound by what pruning does not shrink" in text


def test_round_to_auto_keeps_pruned_widths_at_the_devices_multiple():
    multiple = resolve_round_to("auto", torch.device("cpu"), "fp32")
    assert multiple == ROUND_TO[("cpu", "fp32")].value > 1
    model = _tiny_net()
    x = torch.randn(1, 3, 8, 8)
    pruner = build_pruner(model, x, get_method("l1"), 10, steps=20, round_to=multiple)
    result = progressive_prune(model, pruner, MacCounter(model, x), 2.5)
    assert result["speed_up"] >= 2.5
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths != [32, 64] and all(w % multiple == 0 for w in widths), widths


def test_round_to_table_and_checks():
    for (device, dtype), entry in ROUND_TO.items():
        assert device in ("cpu", "cuda") and dtype in ("fp32", "bf16", "fp16") and entry.value >= 1
        assert len(entry.evidence) > 40  # the measurement (or source) that justifies it
    assert {(d, t) for d in ("cpu", "cuda") for t in ("fp32", "bf16", "fp16")} == set(ROUND_TO)
    assert resolve_round_to(12, torch.device("cpu"), "fp32") == 12 and resolve_round_to(None, "cpu", "fp32") is None
    for bad in ("fast", 0, True, 2.5):
        with pytest.raises(UserError, match="prune.round_to=.* is invalid; it is an integer >= 1, auto"):
            check_round_to(bad)


def test_bad_target_and_dtype_name_the_choices():
    from prune_runner.validate import validate

    cfg = RunConfig()
    cfg.model.name = "resnet20"
    cfg.prune.target = "speed"
    with pytest.raises(UnknownChoiceError, match="unknown prune.target 'speed'; choose one of: latency, macs"):
        validate(cfg)
    cfg.prune.target = "latency"
    cfg.eval.latency_dtype = "int8"
    with pytest.raises(UnknownChoiceError, match="eval.latency_dtype 'int8'; choose one of: bf16, fp16, fp32"):
        validate(cfg)


def test_the_prune_stage_hash_holds_the_device_only_where_it_matters():
    inputs = StageInputs(dataset="d", base_checkpoint=None, world_size=1, amp=False, device="CPU X, 2 thread(s)",
                         latency_dtype="fp32")
    cfg = RunConfig()
    macs = own_config(cfg, "prune", True, inputs)
    assert "prune.target" not in macs and "prune.latency_batch" not in macs and "env.device" not in macs
    cfg.prune.target = "latency"
    latency = own_config(cfg, "prune", True, inputs)
    assert latency["prune.target"] == "latency" and latency["prune.latency_batch"] == 1
    assert latency["env.device"] == "CPU X, 2 thread(s)" and latency["env.latency_dtype"] == "fp32"
    other = own_config(cfg, "prune", True, replace(inputs, device="GPU Y"))
    assert other != latency
    cfg.prune.target, cfg.prune.round_to = "macs", "auto"
    assert own_config(cfg, "prune", True, inputs)["env.device"] == "CPU X, 2 thread(s)"
    assert "eval.latency_dtype" not in own_config(cfg, "eval", True, inputs)  # the default: as before it existed
    cfg.eval.latency_dtype = "bf16"
    assert own_config(cfg, "eval", True, inputs)["eval.latency_dtype"] == "bf16"


def _results(kind: str, speed_up: float, latency: dict) -> dict:
    target = {"kind": kind, "speed_up": speed_up}
    if kind == "latency":
        target.update(batch=1, device="cpu", dtype="fp32", speed_up_iqr=[1.5, 1.6], measurements=4, measure_s=2.0,
                      reached=1.55)
    return {"run_dir": f"r_{kind}", "choices": {"dataset": "digits", "model": "resnet20", "method": "l1"}, "seed": 0,
            "overrides": f"prune.target={kind}", "acc_delta": -0.01, "speed_up": 2.4, "target_speed_up": speed_up,
            "target": target, "params_ratio": 0.5, "latency": latency,
            **{k: {"acc": 0.9, "macs": 1e6, "params": 1e5} for k in ("base", "pruned", "final")}}


def test_results_and_report_show_macs_and_latency_speed_ups_side_by_side(tmp_path):
    from io import StringIO

    from rich.console import Console

    from prune_runner.report import aggregate, format_row
    from prune_runner.report.plots import tradeoff_figure
    from prune_runner.report.results import _latency_summary, print_results

    compare = {bs: {"base_ms": 2.0, "final_ms": 1.0, "ratio": r, "ratio_q1": r - 0.05, "ratio_q3": r + 0.05,
                    "spread": 0.07, "noisy": False} for bs, r in ((1, 1.52), (64, 1.9))}
    lat = _latency_summary({"device": "cpu", "device_name": "CPU X, 1 thread(s)", "dtype": "fp32",
                            "batch_sizes": [1, 64], "max_spread": 0.2, "compare": compare})
    assert lat["dtype"] == "fp32" and lat["device_name"] == "CPU X, 1 thread(s)"
    runs = [_results("latency", 1.5, lat), _results("macs", 2.0, lat)]
    out = StringIO()
    print_results(Console(file=out, width=300), runs[0])
    text = out.getvalue()
    assert "MACs speed-up 2.40x, params" in text and "(cpu, fp32, median, IQR) batch 1: 1.52x" in text
    assert "latency target 1.5x at batch 1 (cpu, fp32): 1.55x [1.50-1.60] when pruning stopped" in text
    rows = aggregate(runs)
    cells = {row["overrides"]: format_row(row) for row in rows}
    assert "1.5x latency (bs 1)" in cells["prune.target=latency"]
    assert "1.52x (bs 1, cpu, fp32)" in cells["prune.target=latency"]  # the target's batch, not the largest
    assert "2x" in cells["prune.target=macs"] and "1.90x (bs 64, cpu, fp32)" in cells["prune.target=macs"]
    fig = tradeoff_figure(rows, [])
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["digits/resnet20", "digits/resnet20: latency (bs 1, cpu, fp32; bs 64, cpu, fp32)"]


def test_the_meter_compares_a_frozen_copy_of_the_unpruned_model_with_the_current_one(monkeypatch):
    """With a fake clock (the base model's samples take 3 ms, any other 2 ms): the ratio is 1.5, the meter's
    copy does not follow the model as it is pruned, and the model keeps its training flag."""
    from prune_runner.latency import meter as latency
    from prune_runner.pruning.latency_target import LatencyMeter

    model = _tiny_net().train()
    meter = LatencyMeter(model, (3, 8, 8), torch.device("cpu"), "fp32", 2, 1.5)
    assert meter.base is not model and meter.inner >= 1 and 6 <= meter.repeats <= 20
    monkeypatch.setattr(latency, "_sample_ms", lambda m, x, inner: 3.0 if m.model is meter.base else 2.0)
    model[0].weight.data.zero_()  # "pruned": the copy keeps the old weights
    m = meter(model, 7, 2.0, confirmation=True)
    assert (m.step, m.macs_speed_up, m.ratio, m.confirmation, m.noisy) == (7, 2.0, 1.5, True, False)
    assert meter.base[0].weight.abs().sum() > 0 and model.training


def _m(step, ratio, confirmation=False):
    return Measurement(step, 1 + step / 10, ratio, ratio, ratio, 0.0, confirmation)


def test_a_jump_far_past_the_target_that_bisection_cannot_undo_is_reported():
    from prune_runner.pruning.latency_target import Outcome, overshoot

    jumped = Outcome(True, 42, 5.2, _m(42, 3.4, True), [_m(18, 1.1), _m(41, 1.4), _m(42, 3.3), _m(42, 3.4, True)])
    line = overshoot(jumped, 1.5, None)
    assert "latency jumped from 1.400x at 5.100x MACs (step 41, the median" in line and "to 3.350x" in line
    assert "prune.round_to=auto" in line
    unconfirmed = Outcome(True, 42, 5.2, _m(42, 3.4, True), [_m(41, 1.6), _m(41, 1.3, True), _m(42, 3.4, True)])
    assert "from 1.450x at 5.100x MACs (step 41," in overshoot(unconfirmed, 1.5, None)  # a lucky 1.6, then 1.3
    assert "more prune.iterative_steps" in overshoot(jumped, 1.5, 8)  # rounded widths: smaller steps help
    first = Outcome(True, 1, 1.9, _m(1, 2.0, True), [_m(1, 2.1), _m(1, 2.0, True)])
    assert "from 1.000x at 1.000x MACs (the unpruned model) to 2.050x" in overshoot(first, 1.5, 8)
    close = Outcome(True, 51, 6.1, _m(51, 1.6, True), [_m(41, 1.4), _m(51, 1.6), _m(51, 1.6, True)])
    assert overshoot(close, 1.5, None) is None
    lucky_last = Outcome(True, 51, 6.1, _m(51, 2.6, True), [_m(41, 1.4), _m(51, 1.6), _m(51, 1.7, True),
                                                           _m(51, 2.6, True)])
    assert overshoot(lucky_last, 1.5, None) is None  # 2.6 is the last of three readings, not their median
    above = Outcome(True, 51, 6.1, _m(51, 2.4, True), [_m(41, 1.6), _m(41, 1.4, True), _m(51, 2.4),
                                                      _m(51, 2.4, True)])
    assert overshoot(above, 1.5, None) is None  # step 41 read a median 1.5x, unconfirmed: no jump across


def test_a_jump_is_bisected_back_to_the_earliest_step_that_reaches_the_target():
    """Latency 1.4x up to step 46 and 3.4x from step 47 on; measured at 41 (below) and at 51 (a confirmed
    3.4x, far past 1.5x): bisection measures steps 46, 48, 47 (46 below, the other two confirmed twice) and
    stops at 47. A probe above the target whose confirmation falls short counts as below."""
    from prune_runner.pruning.latency_target import Outcome, bisect_jump

    calls = []

    def measure_at(step, confirmation):
        calls.append((step, confirmation))
        return _m(step, 3.4 if step >= 47 else 1.4, confirmation)

    stop = Outcome(True, 51, 6.1, _m(51, 3.4, True), [_m(18, 1.1), _m(41, 1.4), _m(51, 3.4), _m(51, 3.4, True)])
    back = bisect_jump(stop, 1.5, measure_at)
    assert back.reached and back.steps == 47 and back.final.confirmation and back.final.step == 47
    assert calls == [(46, False), (48, False), (48, True), (48, True), (47, False), (47, True), (47, True)]
    assert len(back.measurements) == 4 + len(calls)
    adjacent = Outcome(True, 42, 5.2, _m(42, 3.4, True), [_m(41, 1.4), _m(42, 3.4, True)])
    assert bisect_jump(adjacent, 1.5, measure_at) is adjacent and len(calls) == 7  # no step in between

    calls.clear()  # steps 42-50 pruned nothing new but at 44 and 47: only those two are other models
    assert bisect_jump(stop, 1.5, measure_at, changed=[44, 47, 51]).steps == 47
    assert calls == [(44, False), (47, False), (47, True), (47, True)]

    calls.clear()
    lucky = iter([1.6, 1.55, 1.3])  # step 46: a lucky probe and confirmation; the second confirmation falls short

    def flaky_at(step, confirmation):
        calls.append((step, confirmation))
        return _m(step, next(lucky) if step == 46 else (3.4 if step >= 47 else 1.4), confirmation)

    assert bisect_jump(stop, 1.5, flaky_at).steps == 47
    assert calls[:3] == [(46, False), (46, True), (46, True)]


def test_a_long_prediction_past_where_latency_reaches_the_target_is_bisected():
    """The demo's readings: flat up to 2.5x MACs (1.44x), then a prediction that went to 5.04x MACs and
    confirmed 1.65x. The line between them reaches 1.5x near 3.1x MACs, so the steps in between are bisected;
    a stop whose MACs are close to where the line reaches the target is kept."""
    from prune_runner.pruning.latency_target import Outcome, bisect_from, bisect_jump, crossing

    def at(step, macs, ratio, confirmation=False):
        return Measurement(step, macs, ratio, ratio, ratio, 0.0, confirmation)

    long = Outcome(True, 54, 5.04, at(54, 5.04, 1.62, True),
                   [at(18, 1.51, 1.37), at(35, 2.5, 1.44), at(54, 5.04, 1.68), at(54, 5.04, 1.62, True)])
    low, why = bisect_from(long, 1.5)
    assert low.step == 35 and "near 3.08x MACs" in why
    assert 3.0 < crossing((2.5, 1.44), (5.04, 1.65), 1.5) < 3.2
    close = Outcome(True, 40, 5.0, at(40, 5.0, 1.55, True), [at(35, 4.5, 1.44), at(40, 5.0, 1.55, True)])
    assert bisect_from(close, 1.5) is None
    assert crossing((2.0, 1.6), (3.0, 1.55), 1.5) == 2.0  # latency did not rise: from the lower point on

    def measure_at(step, confirmation):  # 1.44x at step 35 rising to 1.65x at 54, and 1.5x from step 41
        return at(step, 2.5 + (step - 35) * 0.134, 1.44 + (step - 35) * 0.011, confirmation)

    back = bisect_jump(long, 1.5, measure_at)
    assert back.steps == 41 and back.final.ratio >= 1.5
    assert all(m.ratio < 1.5 for m in back.measurements if m.step == 40)


class StepMeter(SlowMeter):
    """Latency 1.2x below 2x fewer MACs, 2.5x from there on: one jump."""

    def __call__(self, model, step, macs_speed_up, confirmation):
        model(torch.randn(1, 3, 8, 8))  # the model measured runs
        r = 1.2 if macs_speed_up < 2.0 else 2.5
        return Measurement(step, macs_speed_up, r, r, r, 0.0, confirmation)


def test_prune_to_latency_steps_back_to_a_model_rebuilt_from_the_pruning_history():
    from prune_runner.pruning import pruned_copy

    model = _tiny_net()
    entered = copy.deepcopy(model)
    x = torch.randn(1, 3, 8, 8)
    pruner = build_pruner(model, x, get_method("l1"), 10, steps=40, max_pruning_ratio=0.9)
    counter = MacCounter(model, x)

    def rebuild(history):
        return pruned_copy(entered, history, 10, 8)

    lines = []
    result = prune_to_latency(model, pruner, counter, 1.5, StepMeter(), rebuild=rebuild, say=lines.append)
    history = result["latency"]["history"]
    stopped = max(m["step"] for m in history if m["confirmation"])  # where pruning went before bisecting
    assert result["steps"] < stopped and result["model"] is not model
    assert len(result["history"]) < len(pruner.pruning_history())
    assert result["speed_up"] >= 2.0 and result["latency"]["speed_up"] == 2.5
    assert any(m["step"] == result["steps"] - 1 and m["macs_speed_up"] < 2.0 for m in history)
    assert any("bisecting the steps in between" in line for line in lines)
    again = rebuild(result["history"])  # the checkpoint's way: the history replayed on a fresh model
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in result["model"].state_dict().items()}
    assert counter.count(result["model"])[0] == result["macs"]


def test_a_measurement_ends_early_once_every_pair_lies_on_one_side_of_the_target(monkeypatch):
    """Three pairs at 1.5x settle 'is 1.2x reached?' for a probe, and 'is 2x reached?' for any measurement; a
    confirmation that says yes, and pairs that straddle the target, take the full measurement."""
    from prune_runner.latency import meter as latency
    from prune_runner.pruning.latency_target import DECISIVE, LatencyMeter

    model = _tiny_net()
    samples = []

    def sample_ms(m, x, inner):
        samples.append(m)
        return 3.0 if m.model is meter.base else 2.0

    meter = LatencyMeter(model, (3, 8, 8), torch.device("cpu"), "fp32", 1, 1.2)
    monkeypatch.setattr(latency, "_sample_ms", sample_ms)
    meter(model, 1, 2.0, False)
    assert len(samples) == 2 * meter.warmup + 2 * DECISIVE
    samples.clear()  # a confirmation that reaches the target stops pruning: it takes every pair
    meter(model, 1, 2.0, True)
    assert len(samples) == 2 * meter.warmup + 2 * meter.repeats > 2 * meter.warmup + 2 * DECISIVE
    samples.clear()  # ... and one that falls short ends as early as a probe
    meter.target = 2.0
    meter(model, 1, 2.0, True)
    assert len(samples) == 2 * meter.warmup + 2 * DECISIVE
    ratios = iter([1.4, 1.6] * 40)

    def straddling(m, x, inner):
        samples.append(m)
        return 1.0 if m.model is meter.base else 1.0 / next(ratios)

    samples.clear()
    meter.target = 1.5
    monkeypatch.setattr(latency, "_sample_ms", straddling)
    meter(model, 1, 2.0, False)
    assert len(samples) >= 2 * meter.warmup + 2 * meter.repeats

    monkeypatch.setattr(LatencyMeter, "forward_seconds", lambda self: 2.0)  # a forward of 2 s warms itself up
    long = LatencyMeter(model, (3, 8, 8), torch.device("cpu"), "fp32", 1, 1.2)
    samples.clear()
    monkeypatch.setattr(latency, "_sample_ms", lambda m, x, inner: samples.append(m) or (3.0 if m.model is long.base
                                                                                         else 2.0))
    long(model, 1, 2.0, False)
    assert long.warmup == 0 and len(samples) == 2 * DECISIVE


def test_the_prune_stage_keeps_the_bisected_model_and_its_history(tmp_path, monkeypatch):
    """A run whose (fake) latency jumps at 2x fewer MACs: the prune stage steps back to the earliest model
    that reaches the target, and its checkpoint (history replayed on a fresh model) is that model."""
    from inprocess import run_inprocess

    from prune_runner.pruning.latency_target import LatencyMeter
    from prune_runner.run.checkpoint import load_checkpoint, rebuild_model

    monkeypatch.setattr(LatencyMeter, "measurement_seconds", lambda self: 1e3)  # predict from MACs
    monkeypatch.setattr(LatencyMeter, "__call__", StepMeter.__call__)
    run_dir = tmp_path / "run"
    _, text = run_inprocess(run_dir, model="resnet20", method="l1", **{
        "model.input_size": 8, "prune.target": "latency", "prune.speed_up": 1.5, "prune.iterative_steps": 40})
    assert "bisecting the steps in between" in text
    r = results_of(run_dir)
    assert r["target"]["reached"] == 2.5 and r["pruned"]["macs"] <= r["base"]["macs"] / 2.0
    model, history = rebuild_model(load_checkpoint(run_dir / "prune" / "checkpoint.pt"))
    assert MacCounter(model, torch.randn(1, 3, 8, 8)).count(model)[0] == r["pruned"]["macs"]
    steps = [m for m in json.loads((run_dir / "prune" / "done.json").read_text())["metrics"]["latency"]["history"]]
    assert max(m["step"] for m in steps) > min(m["step"] for m in steps if m["confirmation"])  # it stepped back
