"""prune.target=latency: prune until the model is measurably `prune.speed_up` times faster than the base model,
on the run's device, at batch prune.latency_batch, in the deployed precision (eval.latency_dtype).

Every measurement is `compare_latency`'s: base and pruned forwards interleaved, the median of the per-pair
ratios. Timing is noisy and not monotone in the pruning step (a width crossing a SIMD block can make a
smaller model slower), so the rule that stops never trusts one measurement:

  1. Where one measurement costs no more than one pruning step (tiny models), it measures after every step.
     Elsewhere it predicts from MACs: the first measurement is taken where the MACs speed-up reaches the
     target (latency rarely falls faster than MACs), and each later one where a line fitted to the last few
     measurements in log(MACs speed-up), log(latency speed-up) reaches the target (the unpruned model is
     the point (1, 1)), at most MAX_JUMP further in MACs speed-up.
  2. A measurement at or above the target is confirmed by a fresh one before pruning stops, and by a third
     when the two differ by more than DISAGREE. If a confirmation falls short, pruning goes on and the
     measurements count as one point at their median.
  3. A measurement ends after DECISIVE pairs when every pair lies on one side of the target (the usual case
     far from it); only a measurement that straddles the target takes its full MEASURE_S, and so does every
     confirmation that reaches it: a stop rests on full measurements.
  4. A stop that likely pruned further than needed is bisected: the models between the last measurement
     below the target and the stop are rebuilt from the pruning history (replayed on a copy of the model as
     it entered) and measured, and pruning stops at the earliest one that three readings confirm. Further
     than needed is a confirmed speed-up OVERSHOOT x the target or more (widths that leave a kernel's fast
     path make latency fall in steps), or a long prediction: the line through the two measurements either
     side of the target reaches it at MACS_SLACK x fewer MACs speed-up than the stop's (flat, noisy
     readings send a prediction far).
  5. A target not reached when the step budget ends is one line: the best speed-up measured, the MACs
     speed-up it took, and why (prune.max_pruning_ratio, or latency bound by what pruning does not shrink).

`StoppingRule` holds the decisions, `run_to_target` the loop and `bisect_jump` the way back; all take plain
callables, so the tests drive them with a fake timer. `prune_to_latency` wires them to a torch-pruning pruner
and `compare_latency`.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch_pruning as tp

from ..errors import UserError
from ..latency.dtype import LATENCY_DTYPES, as_deployed, device_name, resolve_latency_dtype
from ..latency.meter import MAX_SPREAD, compare_latency
from .hints import sync_after_pruning
from .history import pruned_copy
from .macs import MacCounter

SAMPLE_S = 0.02  # a timed sample lasts at least this long (several scheduler slices on a shared machine)
MAX_INNER = 100  # forwards per sample at most
MEASURE_S = 0.6  # pairs of samples per measurement: as many as fit this, within [MIN_REPEATS, MAX_REPEATS]
MIN_REPEATS, MAX_REPEATS = 6, 20  # (twice as many for a noisy measurement that leaves the decision open)
DISAGREE = 0.1  # a confirmation this far from its probe (of their mean) is itself checked once more
DECISIVE = 3  # pairs after which a measurement ends if every ratio so far lies on one side of the target: a
#               median on the other side gives that with odds of 1 in 8 (if pairs were independent, which
#               they are not quite: so a confirmation ends early only below the target)
WARMUP = 2  # samples of each model before a measurement (compare_latency's warm-up); 1 for samples longer
LONG_SAMPLE_S = 0.25  # than this, and none for samples longer than
WARM_S = 1.0  # this: a new model's one-time costs (allocations, kernel choice) are milliseconds next to it
MAX_JUMP = 2.0  # a prediction moves the next measurement at most this factor further in MACs speed-up
MIN_JUMP = 1.02  # ... and at least this factor: two measurements of nearly one model teach nothing new
FLAT_JUMP = 1.1  # the next measurement's distance when latency did not fall with MACs over the fitted points
FIT_POINTS = 3  # measured models (the unpruned one included) the prediction's line is fitted to
AIM = 1.03  # predictions aim this much above the target: a measurement just below it costs one more
CHEAP = 1.0  # measure after every step where one measurement costs at most this many pruning steps
OVERSHOOT = 1.2  # a confirmed speed-up this far above the target, reached in a jump, is bisected
MACS_SLACK = 1.2  # ... and so is a stop at this factor more MACs speed-up than where latency, interpolated
#                   between the measurements either side of the target, reaches it (a stop that keeps 1/1.2,
#                   83%, of the MACs that a model just at the target keeps)
BOUND = 2.0  # a model whose MACs fell BOUND x the target while latency missed it is bound by unpruned parts


@dataclass
class Measurement:
    step: int
    macs_speed_up: float
    ratio: float  # median base / pruned latency of the interleaved pairs
    q1: float  # the ratio's interquartile range
    q3: float
    seconds: float  # what the measurement cost
    confirmation: bool = False  # the fresh measurement that checks one at or above the target
    noisy: bool = False  # its IQR stayed wider than MAX_SPREAD of the median, even measured twice as long


@dataclass
class Outcome:
    reached: bool
    steps: int
    macs_speed_up: float
    final: Optional[Measurement]  # the confirming measurement, or the best one when the target was missed
    measurements: List[Measurement] = field(default_factory=list)
    every_step: bool = False

    @property
    def best(self) -> Optional[Measurement]:
        return max(self.measurements, key=lambda m: m.ratio, default=None)


class StoppingRule:
    """When to measure and when to stop; no timing and no pruning in here."""

    def __init__(self, target: float, every_step: bool = False):
        self.target = target
        self.every_step = every_step
        self.points: List[Tuple[float, float]] = []  # (MACs speed-up, latency speed-up) of each measured model
        self.next_at = target  # the MACs speed-up of the next measurement (predict mode)

    def wants(self, macs_speed_up: float) -> bool:
        return self.every_step or macs_speed_up >= self.next_at

    def record(self, macs_speed_up: float, latency_speed_up: float) -> None:
        """A measured model that is not the stopping point: plan the next measurement from it."""
        self.points.append((macs_speed_up, latency_speed_up))
        self.next_at = self.predict(macs_speed_up)

    def predict(self, macs_now: float) -> float:
        """The MACs speed-up at which latency should reach the target, within [MIN_JUMP, MAX_JUMP] x now: a
        least-squares line in log-log through the last FIT_POINTS measured models (the unpruned one among
        them while there are fewer), which follows the curve locally and lets no single measurement steer."""
        points = ([(1.0, 1.0)] + self.points)[-FIT_POINTS:]
        xs = [math.log(m) for m, _ in points]
        ys = [math.log(max(lat, 1e-9)) for _, lat in points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
        if slope <= 0:  # latency did not fall with MACs over these points (noise, a slower width): a step on
            return macs_now * FLAT_JUMP
        needed = math.exp(mx + (math.log(AIM * self.target) - my) / slope)
        return min(max(needed, macs_now * MIN_JUMP), macs_now * MAX_JUMP)


def reading(measure: Callable[[bool], Measurement], target: float,
            confirmations: int = 1) -> Tuple[List[Measurement], bool]:
    """One model's measurements and whether they confirm the target: `measure(confirmation)` once, and where
    that reaches the target `confirmations` fresh ones, and one more when the first two differ by more than
    DISAGREE of their mean (the machine changed between them, say a neighbour's memory traffic that slows
    the larger base model more: either may be off). The target is confirmed when every one of them reaches
    it; the first that falls short ends the reading."""
    taken = [measure(False)]
    if taken[0].ratio < target:
        return taken, False
    wanted = 1 + confirmations
    while len(taken) < wanted and taken[-1].ratio >= target:
        taken.append(measure(True))
        if len(taken) == 2 and abs(taken[1].ratio - taken[0].ratio) > DISAGREE * median_ratio(taken):
            wanted = max(wanted, 3)
    return taken, all(m.ratio >= target for m in taken)


def median_ratio(readings: List[Measurement]) -> float:
    """The median of one model's readings (probe and confirmations: of three, the third breaks a
    disagreement of the first two, so one outlier does not move it)."""
    return statistics.median(m.ratio for m in readings)


def run_to_target(rule: StoppingRule, budget: int, prune_step: Callable[[int], float],
                  measure: Callable[[int, float, bool], Measurement],
                  decide_every_step: Optional[Callable[[float], bool]] = None) -> Outcome:
    """Prune step by step (`prune_step(step)` returns the MACs speed-up after it) and measure where the rule
    wants (`measure(step, macs_speed_up, confirmation)`), until a confirmed target or the end of the budget.
    `decide_every_step(seconds of the first step)` may switch the rule to measuring after every step."""
    measurements: List[Measurement] = []
    macs, measured_at = 1.0, None
    for step in range(1, budget + 1):
        started = time.perf_counter()
        macs = prune_step(step)
        if step == 1 and decide_every_step is not None:
            rule.every_step = decide_every_step(time.perf_counter() - started)
        last = step == budget
        if not (rule.wants(macs) or last) or measured_at == macs:
            continue
        taken, confirmed = reading(lambda confirmation: measure(step, macs, confirmation), rule.target)
        measurements.extend(taken)
        measured_at = macs
        if confirmed:
            return Outcome(True, step, macs, taken[-1], measurements, rule.every_step)
        rule.record(macs, median_ratio(taken))
    missed = Outcome(False, budget, macs, None, measurements, rule.every_step)
    missed.final = missed.best
    return missed


UNPRUNED = Measurement(0, 1.0, 1.0, 1.0, 1.0, 0.0)  # step 0: the model as it entered, by definition


def last_below(outcome: Outcome) -> Measurement:
    """The latest measurement of a step that did not stop pruning (UNPRUNED if none): the step before the
    stop on the other side of the target."""
    earlier = [m for m in outcome.measurements if m.step < outcome.steps and not m.confirmation]
    return max(earlier, key=lambda m: m.step, default=UNPRUNED)


def step_ratio(outcome: Outcome, step: int) -> float:
    """`median_ratio` of a step's readings; 1.0 for the unpruned model."""
    return median_ratio([m for m in outcome.measurements if m.step == step]) if step else 1.0


def crossing(low: Tuple[float, float], high: Tuple[float, float], target: float) -> float:
    """The MACs speed-up at which the line through two (MACs speed-up, latency speed-up) points, in log-log,
    reaches `target`; the lower point's MACs speed-up where latency did not rise between them."""
    (m0, r0), (m1, r1) = low, high
    if r1 <= r0 or r0 >= target or m1 <= m0:
        return m0
    slope = math.log(r1 / r0) / math.log(m1 / m0)
    return m0 * math.exp(math.log(target / r0) / slope)


def jumped_from(outcome: Outcome, target: float) -> Optional[Measurement]:
    """When the confirmed stop's readings lie OVERSHOOT x the target or more above it (their median, not the
    last reading, which can be the outlier): `last_below`, the other side of the jump."""
    if not outcome.reached or outcome.final is None or step_ratio(outcome, outcome.steps) < OVERSHOOT * target:
        return None
    return last_below(outcome)


def bisect_from(outcome: Outcome, target: float) -> Optional[Tuple[Measurement, str]]:
    """When the confirmed stop probably pruned further than the target needs: `last_below` and why (a jump
    far past the target, or latency interpolated between the two reaching it MACS_SLACK x earlier)."""
    if not outcome.reached or outcome.final is None:
        return None
    low = jumped_from(outcome, target)
    if low is not None:
        return low, "far past the target"
    low = last_below(outcome)
    needed = crossing((low.macs_speed_up, step_ratio(outcome, low.step)),
                      (outcome.macs_speed_up, step_ratio(outcome, outcome.steps)), target)
    if outcome.macs_speed_up >= MACS_SLACK * needed:
        return low, f"interpolated, latency reaches {target}x near {needed:.2f}x MACs"
    return None


def bisect_jump(outcome: Outcome, target: float, measure_at: Callable[[int, bool], Measurement],
                changed: Optional[List[int]] = None) -> Outcome:
    """Where a stop pruned further than needed (`bisect_from`): bisect the steps between the last measurement
    below the target and the stop for the earliest one whose speed-up reaches the target, confirmed by two
    fresh readings (one more than a stop on the way up).
    `measure_at(step, confirmation)` measures the model as it was after `step`; `changed` lists the steps
    after which the model differs from the step before (a step that pruned nothing, or rounded a width
    back to where it was, is not measured twice)."""
    why = bisect_from(outcome, target)
    if why is None:
        return outcome
    low = why[0]
    steps = [s for s in (changed if changed is not None else range(low.step + 1, outcome.steps))
             if low.step < s < outcome.steps]
    if not steps:  # no other model in between
        return outcome
    below, above, final = -1, len(steps), outcome.final  # indices into steps; above == len: the stop itself
    measurements = list(outcome.measurements)
    while above - below > 1:
        mid = (below + above) // 2
        # two confirmations: the earliest of several models near the target that passes is the one whose
        # readings ran high (the winner's curse), so passing takes one reading more than on the way up
        taken, confirmed = reading(lambda confirmation: measure_at(steps[mid], confirmation), target, 2)
        measurements.extend(taken)
        if confirmed:
            above, final = mid, taken[-1]
        else:
            below = mid
    stop = steps[above] if above < len(steps) else outcome.steps
    return Outcome(True, stop, final.macs_speed_up, final, measurements, outcome.every_step)


class _Repeated(nn.Module):
    """`inner` forwards of a model per call: a sample of compare_latency lasts >= SAMPLE_S, long enough to
    average over the scheduler's time slices on a shared machine (a 2 ms sample is preempted or not)."""

    def __init__(self, model: nn.Module, inner: int):
        super().__init__()
        self.model, self.inner = model, inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.inner - 1):
            self.model(x)
        return self.model(x)


class LatencyMeter:
    """`compare_latency` of a frozen copy of the unpruned model against the current one, with samples of
    >= SAMPLE_S and as many pairs (MIN_REPEATS to MAX_REPEATS) as fit MEASURE_S."""

    def __init__(self, model: nn.Module, input_shape: Tuple[int, ...], device: torch.device, dtype: str,
                 batch: int, target: float):
        self.base = copy.deepcopy(model).to(LATENCY_DTYPES[dtype]).eval()
        self.target = target
        self.input_shape, self.device, self.dtype, self.batch = input_shape, torch.device(device), dtype, batch
        self.forward_s = self.forward_seconds()
        self.inner = max(1, min(MAX_INNER, math.ceil(SAMPLE_S / self.forward_s)))
        sample_s = self.inner * self.forward_s
        self.repeats = max(MIN_REPEATS, min(MAX_REPEATS, math.ceil(MEASURE_S / (2 * sample_s))))
        # a long sample warms itself up (MobileNetV2 at batch 64 on one core: about 5 s a forward)
        self.warmup = 0 if sample_s > WARM_S else 1 if sample_s > LONG_SAMPLE_S else WARMUP

    def forward_seconds(self) -> float:
        """One forward of the base model, warm (the fastest of up to three; one that long is warm enough)."""
        x = torch.randn(self.batch, *self.input_shape, device=self.device, dtype=LATENCY_DTYPES[self.dtype])
        times = []
        with torch.inference_mode():
            for _ in range(3):
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                started = time.perf_counter()
                self.base(x)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                times.append(time.perf_counter() - started)
                if times[-1] > LONG_SAMPLE_S:
                    break
        return max(min(times), 1e-6)

    def measurement_seconds(self) -> float:
        """About what one measurement away from the target costs (DECISIVE pairs), as if the pruned model were
        as slow as the unpruned one: both models, warm-up and pairs."""
        return 2 * (self.warmup + DECISIVE) * self.inner * self.forward_s

    def decided(self, ratios: List[float], confirmation: bool = False) -> bool:
        """Whether the pairs so far answer 'is the target reached?' (compare_latency's early stop). A
        confirmation ends early only on a no: pairs a fraction of a second apart share the machine's state
        (three high pairs in a row are likelier than independent odds say), and a yes stops pruning."""
        return len(ratios) >= DECISIVE and (max(ratios) < self.target
                                            or (min(ratios) >= self.target and not confirmation))

    def __call__(self, model: nn.Module, step: int, macs_speed_up: float, confirmation: bool) -> Measurement:
        started = time.perf_counter()
        deployed = as_deployed(model, self.dtype)
        row = self._compare(deployed, self.repeats, confirmation)
        if row["noisy"] and row["ratio_q1"] < self.target <= row["ratio_q3"]:
            # an IQR wider than MAX_SPREAD of the median (a busy machine) that leaves the decision open:
            # once more, twice as long
            row = self._compare(deployed, 2 * self.repeats, confirmation)
        return Measurement(step, macs_speed_up, row["ratio"], row["ratio_q1"], row["ratio_q3"],
                           time.perf_counter() - started, confirmation, bool(row["noisy"]))

    def _compare(self, model: nn.Module, repeats: int, confirmation: bool) -> dict:
        return compare_latency(_Repeated(self.base, self.inner), _Repeated(model, self.inner), self.input_shape,
                               self.device, (self.batch,), warmup=self.warmup, repeats=repeats,
                               stop=lambda ratios: self.decided(ratios, confirmation), inner=1)[self.batch]


class LatencyTargetError(UserError):
    """The measured latency speed-up stayed below the target."""


def why_missed(outcome: Outcome, target: float, max_pruning_ratio: float, budget: int) -> str:
    """The likeliest causes of a missed target, for its one-line error."""
    best = outcome.best
    reasons = []
    if max_pruning_ratio < 1.0:
        reasons.append(f"pruning went as far as prune.max_pruning_ratio={max_pruning_ratio} allows in "
                       f"prune.iterative_steps={budget} steps")
    else:
        reasons.append(f"the step budget prune.iterative_steps={budget} ended")
    if best is not None and best.macs_speed_up >= BOUND * target:
        reasons.append(f"latency is bound by what pruning does not shrink (layers that are not pruned, per-layer "
                       f"overhead): {best.ratio:.2f}x faster at {best.macs_speed_up:.2f}x fewer MACs")
    return "; ".join(reasons)


def overshoot(outcome: Outcome, target: float, round_to: Optional[int]) -> Optional[str]:
    """A line when the confirmed speed-up lies far above the target (after `bisect_jump`) and the step before
    read below it: latency fell that far within one pruning step, and pruning stops only between steps."""
    low = jumped_from(outcome, target)
    before = step_ratio(outcome, low.step) if low is not None else None
    if before is None or before >= target:  # no jump, or one from a step that read above the target unconfirmed
        return None
    why = ("some widths leave a kernel's fast path (prune.round_to=auto keeps them on it), or load on the machine "
           "moved the readings (rerun on an idle machine)" if not round_to else
           f"widths are rounded to multiples of {round_to}, so a step removes much at once; more "
           "prune.iterative_steps make the steps smaller")
    where = f"step {low.step}, the median of its readings" if low.step else "the unpruned model"
    return (f"prune: latency jumped from {before:.3f}x at {low.macs_speed_up:.3f}x MACs ({where}) to "
            f"{step_ratio(outcome, outcome.steps):.3f}x at {outcome.macs_speed_up:.3f}x MACs (step {outcome.steps}), "
            f"past the {target}x target: " + why)


def prune_to_latency(model: nn.Module, pruner: tp.pruner.BasePruner, counter: MacCounter, target: float,
                     meter: LatencyMeter, *, calibrate: Optional[Callable[[], None]] = None,
                     rebuild: Optional[Callable[[list], nn.Module]] = None,
                     describe: str = "model", on_step: Optional[Callable[[int, int, float], None]] = None,
                     say: Callable[[str], None] = lambda text: None) -> dict:
    """Prune in the pruner's small steps until the measured latency speed-up reaches `target` (confirmed);
    the result of progressive_prune plus "latency" (what was measured, and what measuring cost), "model" (the
    pruned model) and "history" (the pruning history that gives it from the model as it entered).
    `rebuild(history)`, where given, returns the model as it entered pruned by `history`: with it a stop that
    pruned further than needed is bisected (`bisect_from`, `bisect_jump`), and "model" may be such a rebuilt
    model instead of `model`."""
    base_macs, base_params = counter.count(model)
    where = f"batch {meter.batch}, {meter.device.type} {meter.dtype}"
    started = time.perf_counter()
    rule = StoppingRule(target)
    cost = meter.measurement_seconds() if target > 1.0 else 0.0
    history_len, macs_at = {0: 0}, {0: 1.0}  # per step: the pruning history's length, the MACs speed-up

    def prune_step(step: int) -> float:
        if calibrate is not None:
            calibrate()
        pruner.step()
        sync_after_pruning(model)
        speed_up = macs_at[step] = base_macs / counter.count(model)[0]
        history_len[step] = len(pruner.pruning_history())
        if on_step is not None:
            on_step(step, pruner.iterative_steps, speed_up)
        return speed_up

    def report(m: Measurement) -> Measurement:
        say(f"prune step {m.step}: measured latency speed-up {m.ratio:.3f}x [{m.q1:.2f}-{m.q3:.2f}] ({where}) at "
            f"{m.macs_speed_up:.3f}x MACs, target {target}x" + (" (confirmation)" if m.confirmation else ""))
        return m

    def measure(step: int, macs_speed_up: float, confirmation: bool) -> Measurement:
        return report(meter(model, step, macs_speed_up, confirmation))

    rebuilt: dict = {}  # step -> the model after that step, rebuilt (only the latest is kept)

    def measure_at(step: int, confirmation: bool) -> Measurement:
        if step not in rebuilt:
            rebuilt.clear()
            rebuilt[step] = rebuild(pruner.pruning_history()[:history_len[step]])
        return report(meter(rebuilt[step], step, macs_at[step], confirmation))

    def decide(step_seconds: float) -> bool:
        every = cost <= CHEAP * step_seconds
        say(f"prune: one latency measurement takes about {cost:.2f} s, a pruning step {step_seconds:.2f} s: "
            + ("measuring after every step" if every else "predicting from MACs and measuring near the target"))
        return every

    if target <= 1.0:
        outcome = Outcome(True, 0, 1.0, None)
    else:
        outcome = run_to_target(rule, pruner.iterative_steps, prune_step, measure, decide)
    model.zero_grad(set_to_none=True)
    if not outcome.reached:
        best = outcome.best
        raise LatencyTargetError(
            f"{describe} reached a measured latency speed-up of only {best.ratio:.2f}x ({where}, at "
            f"{best.macs_speed_up:.2f}x fewer MACs) of the {target}x target: "
            f"{why_missed(outcome, target, pruner.max_pruning_ratio, pruner.iterative_steps)}; lower prune.speed_up"
            + (", or measure at a larger prune.latency_batch" if meter.batch < 64 else ""))
    stopped_at = outcome.steps  # where `model` is now
    back = bisect_from(outcome, target)
    changed = [s for s in sorted(history_len) if s > 0 and history_len[s] != history_len[s - 1]]
    if rebuild is not None and back is not None and any(back[0].step < s < outcome.steps for s in changed):
        low, why = back
        say(f"prune: {step_ratio(outcome, outcome.steps):.2f}x at step {outcome.steps} ({outcome.macs_speed_up:.2f}x "
            f"MACs) after {step_ratio(outcome, low.step):.2f}x at step {low.step} ({low.macs_speed_up:.2f}x MACs), "
            f"{why}: bisecting the steps in between for the earliest that reaches {target}x")
        outcome = bisect_jump(outcome, target, measure_at, changed)
    jump = overshoot(outcome, target, pruner.round_to)
    if jump:
        say(jump)
    history = pruner.pruning_history()[:history_len[outcome.steps]]
    if outcome.steps == stopped_at:
        kept = model
    else:  # bisected back: the rebuilt model of that step (rebuilt again if a later probe replaced it)
        kept = rebuilt[outcome.steps] if outcome.steps in rebuilt else rebuild(history)
    macs, params = counter.count(kept)
    final = outcome.final
    latency = {"target": target, "batch": meter.batch, "device": meter.device.type, "dtype": meter.dtype,
               "device_name": device_name(meter.device),
               "speed_up": final.ratio if final else 1.0, "speed_up_iqr": [final.q1, final.q3] if final else [1.0, 1.0],
               "noisy": bool(final and final.noisy),
               "measurements": len(outcome.measurements), "every_step": outcome.every_step,
               "measure_s": sum(m.seconds for m in outcome.measurements), "prune_s": time.perf_counter() - started,
               "history": [asdict(m) for m in outcome.measurements]}
    return {"steps": outcome.steps, "speed_up": base_macs / macs, "base_macs": base_macs, "macs": macs,
            "base_params": base_params, "params": params, "latency": latency, "model": kept, "history": history}


def prune_to_latency_in_run(state, model: nn.Module, pruner: tp.pruner.BasePruner,
                            calibrate: Optional[Callable[[], None]], describe: str,
                            on_step: Callable[[int, int, float], None]) -> dict:
    """The prune stage's latency target: measured on the run's device, at prune.latency_batch, in
    eval.latency_dtype, against a copy of the model as it enters the stage."""
    cfg = state.cfg
    dtype = resolve_latency_dtype(cfg.eval.latency_dtype, state.device)
    meter = LatencyMeter(model, (3, state.input_size, state.input_size), state.device, dtype,
                         cfg.prune.latency_batch, cfg.prune.speed_up)
    entered = copy.deepcopy(model).cpu()  # what a stop past the need is bisected from

    def rebuild(history: list) -> nn.Module:
        return state.to_device(pruned_copy(entered, history, state.num_classes, state.input_size))

    result = prune_to_latency(model, pruner, MacCounter(model, state.data.example_input(1)), cfg.prune.speed_up,
                              meter, calibrate=calibrate, rebuild=rebuild, describe=describe, on_step=on_step,
                              say=state.say)
    lat = result["latency"]
    state.say(f"prune: measured latency speed-up {lat['speed_up']:.2f}x (batch {lat['batch']}, {lat['device']} "
              f"{lat['dtype']}), confirmed; {lat['measurements']} measurements took {lat['measure_s']:.1f} s of "
              f"{lat['prune_s']:.1f} s of pruning")
    if lat["noisy"]:
        state.warn(f"prune: the confirming latency measurement was NOISY (its IQR is wider than {MAX_SPREAD:.0%} of "
                   "its median): the machine was busy; rerun on an idle machine")
    return result
