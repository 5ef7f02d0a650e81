"""prune.target=latency: the stopping rule under a fake, noisy and non-monotone timer (and one that turns NOISY
part-way, or is NOISY from the start), the one-line errors, round_to=auto, and the options' checks and stage
hash. No real timing is asserted."""

from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from conftest import results_of

from prune_runner.config import RunConfig
from prune_runner.errors import UnknownChoiceError, UserError
from prune_runner.latency.meter import Reading
from prune_runner.pruning import (
    ROUND_TO,
    LatencyTargetError,
    MacCounter,
    MachineTooBusyError,
    build_pruner,
    check_round_to,
    get_method,
    progressive_prune,
    prune_to_latency,
    resolve_round_to,
)
from prune_runner.pruning.latency_target import (
    CAP,
    CONFIRMED,
    FALLBACK,
    PASS_READINGS,
    QUIET_WAIT_S,
    RETRIES,
    Measurement,
    decide,
    predict,
)
from prune_runner.run.records import StageInputs, own_config


class FakeMachine:
    """`decide`'s callables without a model or a clock: step s has the MACs speed-up `macs(s)`; the n-th reading
    (n from 0, the unpruned model's first) of step s reads `ratio(s, n)`, NOISY where `noisy(n)`. Readings,
    waits and what was said are kept; reading a step the pruning has not reached fails the test."""

    def __init__(self, ratio, macs=lambda s: 1.02 ** s, noisy=lambda n: False):
        self.ratio, self.macs, self.noisy = ratio, macs, noisy
        self.step, self.calls, self.waits, self.lines = 0, [], [], []

    def advance(self) -> float:
        self.step += 1
        return self.macs(self.step)

    def read(self, step: int) -> Measurement:
        assert step <= self.step
        n = len(self.calls)
        r, noisy = (1.0 if step == 0 else self.ratio(step, n)), self.noisy(n)
        self.calls.append((step, r, noisy))
        return Measurement(step, self.macs(step) if step else 1.0, r, r * 0.97, r * (1.5 if noisy else 1.03), 0.0,
                           noisy)

    def decide(self, target: float, budget: int = 200):
        return decide(target, budget, self.advance, self.read, lambda: list(range(1, self.step + 1)),
                      self.waits.append, self.lines.append)


def sequence(values):
    """ratio(step, n) giving the next of `values` at each reading of a pruned model."""
    it = iter(values)
    return lambda step, n: next(it)


def test_a_lucky_reading_is_confirmed_before_pruning_stops():
    """The unpruned model reads clean; nothing is read before 1.5x MACs (step 5); there a lucky 1.52x falls to
    1.38x on the second reading, so step 5 fails; the line through (1, 1) and (1.5, 1.38) reaches 1.5x near
    1.67x MACs: step 7 reads 1.56x and 1.53x and passes; bisecting step 6 (1.45x) keeps step 7."""
    fake = FakeMachine(sequence([1.52, 1.38, 1.56, 1.53, 1.45]), macs=lambda s: 1 + 0.1 * s)
    outcome = fake.decide(1.5)
    assert fake.calls == [(0, 1.0, False), (5, 1.52, False), (5, 1.38, False), (7, 1.56, False), (7, 1.53, False),
                          (6, 1.45, False)]
    assert outcome.decided == CONFIRMED and outcome.steps == 7 and outcome.final.ratio == 1.53
    assert 1.6 < predict([Measurement(5, 1.5, 1.38, 1.3, 1.4, 0.0)], 1.5) < 1.7
    assert fake.step == 7 and any("bisecting the steps in between" in line for line in fake.lines)


def test_a_target_the_unpruned_model_meets_prunes_nothing():
    fake = FakeMachine(lambda step, n: 2.0)
    outcome = fake.decide(1.0)
    assert (outcome.decided, outcome.steps, outcome.final.ratio, fake.step, fake.calls) == (CONFIRMED, 0, 1.0, 0, [])


def test_predicting_from_macs_stops_within_five_percent_of_the_target():
    """Latency ~ MACs^0.55 with +-4% noise and a slower width every fifth step: nothing is read before the MACs
    target, the stop passes clean, a handful of readings suffice, and the true speed-up where it stops is within
    5% of the target, on either side."""
    rng = random.Random(0)

    def truth(macs):
        return macs ** 0.55

    def ratio(step, n):
        return truth(1.02 ** step) * (1 + rng.uniform(-0.04, 0.04)) * (0.9 if step % 5 == 0 else 1.0)

    for target in (1.5, 2.0):
        fake = FakeMachine(ratio)
        outcome = fake.decide(target)
        assert outcome.decided == CONFIRMED
        pruned = [c for c in fake.calls if c[0] > 0]
        assert 1.02 ** pruned[0][0] >= target > 1.02 ** (pruned[0][0] - 1)  # first read where MACs reach it
        assert len(fake.calls) <= 10
        assert 0.95 * target <= truth(1.02 ** outcome.steps) <= 1.05 * target, (target, outcome.steps)


def test_a_prediction_never_reaches_further_than_the_cap_past_a_clean_reading():
    """Latency that does not fall at all: each reading lies at most CAP (one step's rounding aside) further in
    MACs speed-up than the one before, and the budget ends in a miss, not a stop."""
    fake = FakeMachine(lambda step, n: 1.0)
    outcome = fake.decide(2.0, budget=100)
    read_at = [1.02 ** step for step, _, _ in fake.calls[1:]]
    assert read_at[0] >= 2.0 and all(b <= CAP * a * 1.02 for a, b in zip(read_at, read_at[1:]))
    assert outcome.decided == "missed" and outcome.final.ratio == 1.0 and fake.calls[-1][0] == 100


def test_a_noisy_reading_never_confirms_a_stop_and_is_taken_again_after_a_wait():
    """Step 21 (1.52x MACs) reads 1.6x twice, but NOISY both times, then clean: 1.45x; the two NOISY ones neither
    passed nor failed it. Step 23 passes clean."""
    ratios = {21: [1.6, 1.6, 1.45], 23: [1.55, 1.56], 22: [1.48]}
    fake = FakeMachine(lambda step, n: ratios[step].pop(0), noisy=lambda n: n in (1, 2))
    outcome = fake.decide(1.5)
    assert fake.calls[1:4] == [(21, 1.6, True), (21, 1.6, True), (21, 1.45, False)]
    assert fake.waits == [QUIET_WAIT_S, 2 * QUIET_WAIT_S]  # doubled each time
    assert outcome.decided == CONFIRMED and outcome.steps == 23 and not outcome.final.noisy


def test_readings_that_turn_noisy_part_way_fall_back_to_the_prediction_within_the_cap():
    """Latency ~ MACs^0.5, clean for the first three readings, NOISY from then on (a neighbour's job starts):
    no reading confirms, pruning stops at the first step where the clean readings place the target, never more
    than CAP past the latest clean reading, after RETRIES retries, and says it fell back."""
    truth = lambda step, n: (1.02 ** step) ** 0.5  # noqa: E731
    fake = FakeMachine(truth, noisy=lambda n: n >= 3)
    outcome = fake.decide(2.0)
    clean = [c for c in fake.calls if not c[2]]
    assert len(clean) == 3 and all(r < 2.0 for _, r, _ in clean)  # nothing clean ever reached the target
    assert outcome.decided == FALLBACK and outcome.final is None
    last_clean = 1.02 ** clean[-1][0]
    stop = 1.02 ** outcome.steps
    assert outcome.predicted <= stop < outcome.predicted * 1.02 and stop <= CAP * last_clean * 1.02
    assert fake.step == outcome.steps  # pruning went no further than the stop
    assert len(fake.calls) == 3 + RETRIES + 1 and len(fake.waits) == RETRIES
    assert any("fallback to prediction" in line and "NOISY" in line for line in fake.lines)


def test_a_machine_too_busy_to_read_the_unpruned_model_stops_before_pruning_in_one_line():
    fake = FakeMachine(lambda step, n: 1.0, noisy=lambda n: True)
    with pytest.raises(MachineTooBusyError) as err:
        fake.decide(1.5)
    text = str(err.value)
    assert fake.step == 0 and len(fake.calls) == RETRIES + 1 and "\n" not in text
    assert text.startswith("the machine is too busy to measure latency (the unpruned model read against its copy "
                           f"{RETRIES + 1} times, the last with an IQR of ")
    assert text.endswith("); rerun on an idle machine, or use prune.target=macs with prune.speed_up=1.5")


def test_readings_that_turn_noisy_far_from_the_target_stop_as_too_busy_with_the_prediction():
    """Latency ~ MACs^0.3: the one clean pruned reading (1.23x at 2x fewer MACs) places a 2x target near 10x fewer
    MACs, beyond the CAP it lets pruning reach; the next readings stay NOISY: no fallback that far, one line."""
    fake = FakeMachine(lambda step, n: (1.02 ** step) ** 0.3, noisy=lambda n: n >= 2)
    with pytest.raises(MachineTooBusyError) as err:
        fake.decide(2.0)
    text = str(err.value)
    first = 1.02 ** fake.calls[1][0]
    assert fake.calls[2][0] == fake.step and 1.02 ** fake.step <= CAP * first * 1.02  # pruned no further
    assert "\n" not in text and text.startswith(f"the machine is too busy to measure latency (the model after step "
                                                f"{fake.step} read {RETRIES + 1} times")
    predicted = first ** (math.log(2.0) / math.log(first ** 0.3))
    assert 9 < predicted < 11 and text.endswith(f"; rerun on an idle machine, or use prune.target=macs with "
                                                f"prune.speed_up={predicted:.3g}")


def test_readings_noisy_from_the_first_pruned_model_on_stop_as_too_busy():
    """The unpruned model reads clean, every pruned one NOISY (issue 27's busy run): no clean reading of a pruned
    model places the target, so no fallback; one line with the MACs speed-up the target itself bounds."""
    fake = FakeMachine(lambda step, n: 1.3, noisy=lambda n: n >= 1)
    with pytest.raises(MachineTooBusyError) as err:
        fake.decide(1.5)
    text = str(err.value)
    assert 1.02 ** fake.step >= 1.5 > 1.02 ** (fake.step - 1) and len(fake.calls) == 1 + RETRIES + 1
    assert "no pruned model read clean below the target" in text and text.endswith("prune.speed_up=1.5")


def test_a_jump_is_bisected_back_to_the_earliest_step_that_reaches_the_target():
    """Latency 1.4x up to step 49 and 3.4x from step 50 on: the readings move towards the target at most CAP at
    a time until one passes past the jump, and bisection steps back to step 50, each step at or past it passing
    on PASS_READINGS readings, each step before it failing on one."""
    fake = FakeMachine(lambda step, n: 3.4 if step >= 50 else 1.4)
    outcome = fake.decide(1.5)
    assert outcome.decided == CONFIRMED and outcome.steps == 50 and outcome.final.step == 50
    per_step = {}
    for step, r, _ in fake.calls[1:]:
        per_step[step] = per_step.get(step, 0) + 1
    assert all(n == (PASS_READINGS if step >= 50 else 1) for step, n in per_step.items())
    assert 49 in per_step and max(per_step) > 50  # stepped back from a later step
    read_at = sorted(1.02 ** step for step in per_step if step < 50)
    assert all(b <= CAP * a * 1.02 for a, b in zip(read_at, read_at[1:]))


def test_a_stop_past_where_latency_reaches_the_target_is_bisected_back():
    """The demo's shape: latency flat near 1.44x, then rising: from 1.44x at step 35 to 1.65x at step 54, 1.5x
    from step 41; the stop found beyond it is bisected back to step 41."""
    fake = FakeMachine(lambda step, n: 1.44 + max(0, step - 35) * 0.011 if step >= 35 else 1.0 + step * 0.0125,
                       macs=lambda s: 1 + 0.08 * s)
    outcome = fake.decide(1.5)
    assert outcome.steps == 41 and outcome.final.ratio >= 1.5
    assert all(r < 1.5 for step, r, _ in fake.calls if step == 40)


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


class FakeMeter:
    """Stands in for LatencyMeter: the ratio is a function of the model's MACs speed-up over the base model's."""

    batch, dtype, device = 1, "fp32", torch.device("cpu")

    def __init__(self, model: nn.Module, size: int = 8):
        self.base = copy.deepcopy(model)
        self.counter = MacCounter(self.base, torch.randn(1, 3, size, size))
        self.base_macs = self.counter.count(self.base)[0]

    def speed_up(self, macs_speed_up: float) -> float:
        raise NotImplementedError

    def __call__(self, model: nn.Module) -> Reading:
        model(torch.randn(1, 3, 8, 8))  # the model read runs
        r = self.speed_up(self.base_macs / self.counter.count(model)[0])
        return Reading(r, r, r, False, 0.0, 1.0)


class SlowMeter(FakeMeter):
    """Latency barely follows MACs (bound by what pruning does not shrink)."""

    def speed_up(self, macs_speed_up):
        return min(1.2, 1 + 0.05 * (macs_speed_up - 1))


class StepMeter(FakeMeter):
    """Latency 1.2x below 2x fewer MACs, 2.5x from there on: one jump."""

    def speed_up(self, macs_speed_up):
        return 1.0 if macs_speed_up == 1.0 else 1.2 if macs_speed_up < 2.0 else 2.5


def test_an_unreachable_latency_target_is_one_line_with_the_best_speed_up_and_why():
    model = _tiny_net()
    x = torch.randn(1, 3, 8, 8)
    pruner = build_pruner(model, x, get_method("l1"), 10, steps=20, max_pruning_ratio=0.9)
    with pytest.raises(LatencyTargetError) as err:
        prune_to_latency(model, pruner, MacCounter(model, x), 2.0, SlowMeter(model), describe="model tiny")
    text = str(err.value)
    assert "\n" not in text and isinstance(err.value, UserError)
    assert text.startswith("model tiny reached a measured latency speed-up of only 1.20x (batch 1, cpu fp32, at ")
    assert "prune.max_pruning_ratio=0.9" in text and "latency is bound by what pruning does not shrink" in text
    assert text.endswith("; lower prune.speed_up, or measure at a larger prune.latency_batch")


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
    result = prune_to_latency(model, pruner, counter, 1.5, StepMeter(model), rebuild=rebuild, say=lines.append)
    history = result["latency"]["history"]
    stopped = max(m["step"] for m in history)  # where pruning went before bisecting
    assert result["steps"] < stopped and result["model"] is not model
    assert len(result["history"]) < len(pruner.pruning_history())
    assert result["speed_up"] >= 2.0 and result["latency"]["speed_up"] == 2.5
    assert result["latency"]["decided"] == CONFIRMED and not result["latency"]["noisy"]
    assert any(m["step"] == result["steps"] - 1 and m["macs_speed_up"] < 2.0 for m in history)
    assert any("bisecting the steps in between" in line for line in lines)
    again = rebuild(result["history"])  # the checkpoint's way: the history replayed on a fresh model
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in result["model"].state_dict().items()}
    assert counter.count(result["model"])[0] == result["macs"]


class NoisyAtFirstMeter(StepMeter):
    """StepMeter whose first two readings are NOISY."""

    def __init__(self, model):
        super().__init__(model)
        self.readings = 0

    def __call__(self, model):
        self.readings += 1
        return replace(super().__call__(model), noisy=self.readings <= 2)


def test_prune_to_latency_takes_a_noisy_reading_again_after_a_wait_and_counts_the_wait():
    model = _tiny_net()
    x = torch.randn(1, 3, 8, 8)
    pruner = build_pruner(model, x, get_method("l1"), 10, steps=40, max_pruning_ratio=0.9)
    waits = []
    result = prune_to_latency(model, pruner, MacCounter(model, x), 1.5, NoisyAtFirstMeter(model), wait=waits.append)
    assert waits == [QUIET_WAIT_S, 2 * QUIET_WAIT_S] and result["latency"]["decided"] == CONFIRMED
    assert result["latency"]["measure_s"] == 3 * QUIET_WAIT_S  # the waits count as measuring (fake readings: 0 s)
    assert [m["noisy"] for m in result["latency"]["history"]][:3] == [True, True, False]


def test_a_model_torch_pruning_cannot_take_apart_is_one_line_under_a_latency_target():
    pytest.importorskip("timm")
    from prune_runner.models import build_model
    from prune_runner.models.support import ModelNotSupportedError

    name = "timm/mixer_s16_224"  # torch-pruning's importance fails on its token-mixing Linear layers
    model = build_model(name, 10, input_size=32)
    x = torch.randn(1, 3, 32, 32)
    pruner = build_pruner(model, x, get_method("l2"), 10, steps=8)
    with pytest.raises(ModelNotSupportedError) as err:
        prune_to_latency(model, pruner, MacCounter(model, x), 1.5, _UnprunedMeter(), describe=f"model {name}")
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"model {name} cannot be pruned: torch-pruning 1.6.1 fails at layer ")


class _UnprunedMeter:
    """Reads every model clean at 1.0x: enough to let pruning start."""

    batch, dtype, device = 1, "fp32", torch.device("cpu")
    base = nn.Identity()

    def __call__(self, model):
        return Reading(1.0, 1.0, 1.0, False, 0.0, 1.0)


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
                      reached=1.55, decided=CONFIRMED)
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
    assert ("latency target 1.5x at batch 1 (cpu, fp32): 1.55x [1.50-1.60] when pruning stopped, confirmed clean "
            "(4 measurements, 2.0 s)") in text
    rows = aggregate(runs)
    cells = {row["overrides"]: format_row(row, rows) for row in rows}
    assert "1.5x latency (bs 1)" in cells["prune.target=latency"]
    assert cells["prune.target=latency"][-3:-1] == ["1.52x", "1.90x"]  # a column per batch: the target's and 64
    assert "2x" in cells["prune.target=macs"] and cells["prune.target=macs"][-3:-1] == ["1.52x", "1.90x"]
    fig = tradeoff_figure(rows, [])
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["digits/resnet20", "digits/resnet20: latency bs 1 (cpu, fp32)",
                      "digits/resnet20: latency bs 64 (cpu, fp32)"]  # one batch a panel

    fallback = _results("latency", 1.5, lat)  # readings too noisy to confirm: the line says so
    fallback["target"].update(reached=None, speed_up_iqr=None, decided=FALLBACK, predicted_macs_speed_up=3.24,
                              noisy=True)
    out = StringIO()
    print_results(Console(file=out, width=400), fallback)
    assert ("latency target 1.5x at batch 1 (cpu, fp32): fallback to prediction, at the 3.24x MACs speed-up the "
            "clean readings predict (4 measurements, 2.0 s) NOISY") in out.getvalue()


def test_results_json_says_how_the_stop_was_decided():
    from prune_runner.report.results import target_summary

    cfg = RunConfig()
    cfg.prune.target, cfg.prune.speed_up = "latency", 1.5
    pruned = {"latency": {"decided": FALLBACK, "speed_up": None, "predicted_macs_speed_up": 3.2, "noisy": True}}
    summary = target_summary(cfg, pruned)
    assert summary["decided"] == FALLBACK and summary["reached"] is None and summary["predicted_macs_speed_up"] == 3.2
    assert target_summary(cfg, {"latency": {"speed_up": 1.6}})["decided"] == CONFIRMED  # a record from before
    cfg.prune.target = "macs"
    assert target_summary(cfg, pruned) == {"kind": "macs", "speed_up": 1.5}


def test_the_meter_compares_a_frozen_copy_of_the_unpruned_model_with_the_current_one(monkeypatch):
    """With a fake clock (the base model's samples take 3 ms, any other 2 ms): the ratio is 1.5, the meter's
    copy does not follow the model as it is pruned, and the model keeps its training flag."""
    from prune_runner.latency import meter as latency
    from prune_runner.latency.meter import LatencyMeter

    model = _tiny_net().train()
    meter = LatencyMeter(model, (3, 8, 8), torch.device("cpu"), "fp32", 2)
    assert meter.base is not model and meter.repeats == latency.REPEATS
    model[0].weight.data.zero_()  # "pruned": the copy keeps the old weights (samples run on copies of both)
    monkeypatch.setattr(latency, "_sample_ms", lambda m, x, inner: 3.0 if m[0].weight.abs().sum() > 0 else 2.0)
    r = meter(model)
    assert (r.ratio, r.q1, r.q3, r.noisy, r.base_ms) == (1.5, 1.5, 1.5, False, 3.0)
    assert meter.base[0].weight.abs().sum() > 0 and model.training


def test_the_prune_stage_keeps_the_bisected_model_and_its_history(tmp_path, monkeypatch):
    """A run whose (fake) latency jumps at 2x fewer MACs: the prune stage steps back to the earliest model
    that reaches the target, and its checkpoint (history replayed on a fresh model) is that model."""
    from inprocess import run_inprocess

    from prune_runner.latency.meter import LatencyMeter
    from prune_runner.run.checkpoint import load_checkpoint, rebuild_model

    def read(self, model):
        counter = MacCounter(self.base, torch.randn(1, 3, 8, 8))
        return Reading(StepMeter.speed_up(None, counter.count(self.base)[0] / counter.count(model)[0]),
                       2.4, 2.6, False, 0.0, 1.0)

    monkeypatch.setattr(LatencyMeter, "__call__", read)
    run_dir = tmp_path / "run"
    _, text = run_inprocess(run_dir, model="resnet20", method="l1", **{
        "model.input_size": 8, "prune.target": "latency", "prune.speed_up": 1.5, "prune.iterative_steps": 40})
    assert "bisecting the steps in between" in text and "confirmed clean" in text
    r = results_of(run_dir)
    assert r["target"]["reached"] == 2.5 and r["target"]["decided"] == CONFIRMED
    assert r["pruned"]["macs"] <= r["base"]["macs"] / 2.0
    model, history = rebuild_model(load_checkpoint(run_dir / "prune" / "checkpoint.pt"))
    assert MacCounter(model, torch.randn(1, 3, 8, 8)).count(model)[0] == r["pruned"]["macs"]
    steps = [m for m in json.loads((run_dir / "prune" / "done.json").read_text())["metrics"]["latency"]["history"]]
    assert max(m["step"] for m in steps) > r["prune_steps"]  # it stepped back
