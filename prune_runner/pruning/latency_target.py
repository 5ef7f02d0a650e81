"""prune.target=latency: prune until the model is measurably `prune.speed_up` times faster than the base model,
on the run's device, at batch prune.latency_batch, in the deployed precision (eval.latency_dtype).

Every reading is the eval stage's meter (`LatencyMeter`, latency/meter.py): base and pruned forwards
interleaved, the median of the per-pair ratios and its IQR. The rule:

  1. Read the unpruned model against its copy; if even that reading is NOISY, the machine is too busy: stop
     before pruning, in one line. Then prune without reading until the MACs speed-up reaches the target
     (latency rarely falls faster than MACs), and read there.
  2. While readings fall short, read next where the line through the unpruned model and the closest reading
     below the target (log MACs speed-up, log latency speed-up) reaches it, at most CAP further in MACs
     speed-up. A model passes when PASS_READINGS readings reach the target.
  3. Bisect the steps between the closest reading below and the model that passed, on models rebuilt from
     the pruning history, for the earliest that passes.
  4. Only clean readings decide. A NOISY one (IQR wider than MAX_SPREAD of its median) is taken again after a
     wait, up to RETRIES times. If it stays NOISY, pruning stops where the clean readings place the target and
     says so (a fallback to prediction), where that lies within CAP of a clean reading below the target;
     elsewhere the run stops as too busy, in one line. A bisection keeps the earliest model that passed.

So no reading and no stop lies more than CAP past the MACs speed-up of a clean reading that fell short: not on
noise, not on a line extrapolated far from what was measured. `decide` holds the rule over plain callables (the
tests drive it with a fake timer); `prune_to_latency` wires it to the step loop and the meter.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional

import torch
import torch.nn as nn
import torch_pruning as tp

from ..errors import UserError
from ..latency.dtype import device_name
from ..latency.meter import MAX_SPREAD, LatencyMeter
from .history import pruned_copy
from .macs import MacCounter
from .progressive import StepLoop
from .timm_failures import explain_failures

PASS_READINGS = 2  # readings at or above the target that pass a model: one can be lucky, two in a row rarely are
RETRIES = 3  # a NOISY reading is taken again at most this many times before the rule stops trusting the machine
QUIET_WAIT_S = 2.0  # seconds to wait before taking a NOISY reading again, doubled each time (2, 4, 8 s): long
#                     enough for a burst of other work (a test, a compile step) to end, short next to an epoch
CAP = 1.5  # a prediction reaches at most this factor further in MACs speed-up than a clean reading below the target:
#            far from the readings a line is a guess, and pruning past the need costs accuracy (a busy machine
#            once sent a 1.5x target to 14.9x fewer MACs)

CONFIRMED, FALLBACK = "confirmed clean", "fallback to prediction"  # how a stop was decided (results.json)
MISSED, TOO_BUSY = "missed", "stopped as too busy"  # ... or why there was none (the errors' kinds)


@dataclass
class Measurement:
    step: int
    macs_speed_up: float
    ratio: float  # median base / pruned latency of the interleaved pairs
    q1: float  # the ratio's interquartile range
    q3: float
    seconds: float  # what the reading cost, the wait before it included
    noisy: bool = False  # its IQR is wider than MAX_SPREAD of the median: it decides nothing


@dataclass
class Outcome:
    decided: str  # CONFIRMED, FALLBACK or MISSED
    steps: int  # the step pruning stops at
    final: Optional[Measurement]  # the last reading that passed the stop (None for a fallback; MISSED: the best)
    predicted: float  # the MACs speed-up at which the clean readings place the target (`predict`)
    measurements: List[Measurement] = field(default_factory=list)


class LatencyTargetError(UserError):
    """The measured latency speed-up stayed below the target."""


class MachineTooBusyError(UserError):
    """Readings stayed NOISY where no stop can rest on clean ones: the unpruned model's, or a pruned model's
    whose target the clean readings place beyond their reach."""


def closest_below(clean: List[Measurement], target: float) -> Optional[Measurement]:
    """The highest clean reading below the target (of equal ones, the latest). A lower one further on is a slower
    width (one off a kernel's fast path), not a sign that the target lies further, nor that the models between
    them fall short."""
    return max((m for m in clean if m.ratio < target), key=lambda m: (m.ratio, m.step), default=None)


def predict(clean: List[Measurement], target: float) -> float:
    """The MACs speed-up at which the clean readings place the target: on the line, in log-log, between the
    closest reading below it and the first one at or above it further on, or without one, through the unpruned
    model and the closest below; infinite where latency did not fall along that line. The target itself when no
    pruned model read below it (latency falls at most as fast as MACs)."""
    below = closest_below(clean, target)
    if below is None:
        return target
    low = (below.macs_speed_up, below.ratio)
    above = min((m for m in clean if m.ratio >= target and m.macs_speed_up > low[0]),
                key=lambda m: m.macs_speed_up, default=None)
    a, b = (low, (above.macs_speed_up, above.ratio)) if above is not None else ((1.0, 1.0), low)
    if b[1] <= a[1] or b[0] <= a[0]:  # latency did not fall with MACs between them: no line to follow
        return math.inf
    slope = math.log(b[1] / a[1]) / math.log(b[0] / a[0])
    return a[0] * math.exp(math.log(target / a[1]) / slope)


def reach(clean: List[Measurement], target: float) -> float:
    """How far in MACs speed-up the clean readings let pruning go: CAP past the closest reading below the target
    (infinite before any: then only the MACs target bounds the first reading, and no fallback is in reach)."""
    below = closest_below(clean, target)
    return CAP * below.macs_speed_up if below is not None else math.inf


def too_busy(what: str, predicted: float, reachable: float) -> MachineTooBusyError:
    """The one line of a run whose readings stayed NOISY where no fallback is within reach."""
    speed_up = f"{predicted:.3g}" if math.isfinite(predicted) else f"<above {reachable:.3g}>"
    return MachineTooBusyError(f"the machine is too busy to measure latency ({what}); rerun on an idle machine, or "
                               f"use prune.target=macs with prune.speed_up={speed_up}")


def clean_reading(read: Callable[[], Measurement], wait: Callable[[float], None], taken: list) -> Optional[Measurement]:
    """A clean reading: `read()` again after a wait while NOISY, up to RETRIES times; None when every one stayed
    NOISY. Each reading taken is appended to `taken`. (`read` may return any reading with .ratio and .noisy.)"""
    for attempt in range(RETRIES + 1):
        if attempt:
            wait(QUIET_WAIT_S * 2 ** (attempt - 1))
        taken.append(read())
        if not taken[-1].noisy:
            return taken[-1]
    return None


def passes(read: Callable[[], Measurement], target: float, wait: Callable[[float], None],
           taken: list) -> Optional[bool]:
    """Whether a model passes: PASS_READINGS clean readings (`clean_reading`) at or above `target`; the first that
    falls short answers no; None when one stayed NOISY. The latency rule's test, and the width search's for its
    finalists."""
    for _ in range(PASS_READINGS):
        m = clean_reading(read, wait, taken)
        if m is None:
            return None
        if m.ratio < target:
            return False
    return True


def decide(target: float, budget: int, advance: Callable[[], float], read: Callable[[int], Measurement],
           changed: Callable[[], List[int]], wait: Callable[[float], None] = time.sleep,
           say: Callable[[str], None] = lambda text: None) -> Outcome:
    """The rule over plain callables: `advance()` takes the next pruning step (the first is step 1) and returns
    its MACs speed-up; `read(step)` takes one reading of the model after `step` (0: the unpruned one; an earlier
    step than the last taken: a rebuilt model); `changed()` lists the steps after which the model differed from
    the step before; `wait(seconds)` lets the machine settle. Raises MachineTooBusyError."""
    if target <= 1.0:  # the unpruned model meets it by definition: nothing to read or remove
        return Outcome(CONFIRMED, 0, Measurement(0, 1.0, 1.0, 1.0, 1.0, 0.0), 1.0)
    taken: List[Measurement] = []
    macs = [1.0]  # per step

    def passes_at(step: int) -> Optional[bool]:
        return passes(lambda: read(step), target, wait, taken)

    def clean_readings() -> List[Measurement]:
        return [m for m in taken if not m.noisy and m.step > 0]

    def noisy_text(step: int) -> str:
        last = taken[-1]
        what = "the unpruned model read against its copy" if step == 0 else f"the model after step {step} read"
        return (f"{what} {RETRIES + 1} times, the last with an IQR of {(last.q3 - last.q1) / last.ratio:.0%} of its "
                f"median, wider than {MAX_SPREAD:.0%}")

    if clean_reading(lambda: read(0), wait, taken) is None:
        raise too_busy(noisy_text(0), target, math.inf)
    low, high, verdict = 0, None, None  # the last step that fell short, the first that passed
    next_at = target  # the MACs speed-up of the next reading
    while len(macs) <= budget:
        macs.append(advance())
        step = len(macs) - 1
        if macs[step] < next_at and step < budget or macs[step] == macs[low]:
            continue
        verdict = passes_at(step)
        if verdict is None:
            break
        if verdict:
            high = step
            break
        low = step
        next_at = min(predict(clean_readings(), target), reach(clean_readings(), target))
    if verdict is None:  # stayed NOISY: stop where the clean readings place the target, if within their reach
        predicted, reachable = predict(clean_readings(), target), reach(clean_readings(), target)
        if not predicted <= reachable < math.inf:
            why = (f"the clean readings place the target at {predicted:.2f}x fewer MACs, beyond the "
                   f"{reachable:.2f}x they let pruning reach" if reachable < math.inf else
                   "no pruned model read clean below the target")
            raise too_busy(f"{noisy_text(taken[-1].step)}; {why}", predicted, reachable)
        stop = next((s for s, m in enumerate(macs) if m >= predicted), len(macs) - 1)
        while macs[stop] < predicted and len(macs) <= budget:
            macs.append(advance())
            stop = len(macs) - 1
        say(f"prune: latency readings stayed NOISY (IQR wider than {MAX_SPREAD:.0%} of the median) after {RETRIES} "
            f"retries: the machine is busy; stopping at step {stop}, {macs[stop]:.2f}x fewer MACs, where the clean "
            f"readings place the {target}x target ({predicted:.2f}x MACs): a fallback to prediction, not a "
            "confirmed speed-up")
        return Outcome(FALLBACK, stop, None, predicted, taken)
    if high is None:  # the step budget ended below the target: the best clean reading below it (one above it was
        #               not confirmed by the next, so it is no figure the run reached)
        best = closest_below(clean_readings(), target)
        return Outcome(MISSED, len(macs) - 1, best, predict(clean_readings(), target), taken)
    final = taken[-1]
    low = (closest_below(clean_readings(), target) or taken[0]).step
    between = [s for s in changed() if low < s < high]
    if between:
        say(f"prune: {final.ratio:.2f}x at step {high} ({macs[high]:.2f}x MACs), short of it at step {low}: "
            f"bisecting the steps in between for the earliest that reaches {target}x")
    while between:
        mid = between[len(between) // 2]
        verdict = passes_at(mid)
        if verdict is None:  # stayed NOISY: keep the earliest model that passed
            say(f"prune: a reading stayed NOISY while bisecting: keeping step {high}, the earliest that passed")
            break
        if verdict:
            high, final = mid, taken[-1]
            between = [s for s in between if s < mid]
        else:
            between = [s for s in between if s > mid]
    return Outcome(CONFIRMED, high, final, predict(clean_readings(), target), taken)


def missed_line(best: Optional[Measurement], target: float, where: str, budget: int,
                max_pruning_ratio: float, unconfirmed: int = 0) -> str:
    """Why the target was not reached, for its one-line error, from confirmed figures only: `best` is the highest
    clean reading below the target; `unconfirmed` counts clean readings at or above it that the next reading of
    the same model did not repeat (cited as a count, never as a figure reached)."""
    if best is None:
        text = f"no pruned model read clean below the {target}x latency target ({where}) in " \
               f"prune.iterative_steps={budget} steps, and none reached it twice in a row"
    else:
        text = (f"reached a measured latency speed-up of only {best.ratio:.2f}x ({where}, at {best.macs_speed_up:.2f}x "
                f"fewer MACs) of the {target}x target in prune.iterative_steps={budget} steps")
    if unconfirmed:
        text += (f"; {unconfirmed} clean reading(s) at or above the target were not confirmed by the next reading of "
                 "the same model (the machine's load varies)")
    if max_pruning_ratio < 1.0:
        text += f", as far as prune.max_pruning_ratio={max_pruning_ratio} allows"
    if best is not None and best.macs_speed_up >= target:  # MACs fell by the target, latency did not
        text += "; latency is bound by what pruning does not shrink (layers that are not pruned, per-layer overhead)"
    return text


@explain_failures  # a timm model torch-pruning cannot take apart: one line naming the layer
def prune_to_latency(model: nn.Module, pruner: tp.pruner.BasePruner, counter: MacCounter, target: float,
                     meter: LatencyMeter, *, calibrate: Optional[Callable[[], None]] = None,
                     rebuild: Optional[Callable[[list], nn.Module]] = None,
                     describe: str = "model", on_step: Optional[Callable[[int, int, float], None]] = None,
                     say: Callable[[str], None] = lambda text: None,
                     wait: Callable[[float], None] = time.sleep) -> dict:
    """Prune in the pruner's small steps (`StepLoop`) until `decide` stops; the result of progressive_prune plus
    "latency" (what was read, how the stop was decided, what reading cost), "model" (the pruned model) and
    "history" (the pruning history that gives it from the model as it entered). `rebuild(history)` returns the
    model as it entered pruned by `history`: a model of an earlier step, to bisect (without it, the stop is
    the first model that passed)."""
    loop = StepLoop(model, pruner, counter, calibrate=calibrate, on_step=on_step)
    where = f"batch {meter.batch}, {meter.device.type} {meter.dtype}"
    started = time.perf_counter()
    rebuilt: dict = {}  # step -> the model after that step, rebuilt (only the latest is kept)
    unpruned = copy.deepcopy(meter.base)  # read against the base: how noisy the machine is

    def model_at(step: int) -> nn.Module:
        if step == 0:
            return unpruned
        if step == loop.step:
            return model
        if step not in rebuilt:
            rebuilt.clear()
            rebuilt[step] = rebuild(loop.history(step))
        return rebuilt[step]

    def read(step: int) -> Measurement:
        r = meter(model_at(step))
        m = Measurement(step, loop.speed_ups[step], r.ratio, r.q1, r.q3, r.seconds, r.noisy)
        say(f"prune step {step}: measured latency speed-up {m.ratio:.3f}x [{m.q1:.2f}-{m.q3:.2f}] ({where}) at "
            f"{m.macs_speed_up:.3f}x MACs, target {target}x" + (" NOISY" if m.noisy else ""))
        return m

    def waited(seconds: float) -> None:
        wait(seconds)
        waits.append(seconds)

    waits: List[float] = []
    changed = loop.changed if rebuild is not None else (lambda: [])
    outcome = decide(target, loop.budget, loop.advance, read, changed, waited, say)
    if outcome.decided == MISSED:
        unconfirmed = sum(not m.noisy and m.step > 0 and m.ratio >= target for m in outcome.measurements)
        why = missed_line(outcome.final, target, where, loop.budget, pruner.max_pruning_ratio, unconfirmed)
        raise LatencyTargetError(f"{describe} {why}; lower prune.speed_up"
                                 + (", or measure at a larger prune.latency_batch" if meter.batch < 64 else ""))
    steps = outcome.steps if rebuild is not None else loop.step  # without rebuild no step back
    kept = model if steps == loop.step else model_at(steps)
    result = loop.finish(kept, steps)
    final = outcome.final
    latency = {"target": target, "batch": meter.batch, "device": meter.device.type, "dtype": meter.dtype,
               "device_name": device_name(meter.device), "decided": outcome.decided,
               "speed_up": final.ratio if final else None, "speed_up_iqr": [final.q1, final.q3] if final else None,
               "predicted_macs_speed_up": outcome.predicted, "noisy": final is None,
               "measurements": len(outcome.measurements),
               "measure_s": sum(m.seconds for m in outcome.measurements) + sum(waits),
               "prune_s": time.perf_counter() - started, "history": [asdict(m) for m in outcome.measurements]}
    return {**result, "latency": latency, "model": kept, "history": loop.history(steps)}


def latency_line(latency: dict) -> str:
    """The prune stage's one line on how its stop was decided."""
    where = f"batch {latency['batch']}, {latency['device']} {latency['dtype']}"
    cost = (f"{latency['measurements']} readings took {latency['measure_s']:.1f} s of {latency['prune_s']:.1f} s "
            "of pruning")
    if latency["decided"] == CONFIRMED:
        iqr = latency["speed_up_iqr"]
        return (f"prune: measured latency speed-up {latency['speed_up']:.2f}x [{iqr[0]:.2f}-{iqr[1]:.2f}] ({where}), "
                f"{CONFIRMED}; {cost}")
    return (f"prune: no clean reading confirmed the {latency['target']}x latency target ({where}): stopped at the "
            f"{latency['predicted_macs_speed_up']:.2f}x MACs speed-up the clean readings predict ({FALLBACK}); "
            f"{cost}; rerun on an idle machine for a measured stop")


def prune_to_latency_in_run(model: nn.Module, pruner: tp.pruner.BasePruner, example: torch.Tensor, target: float, *,
                            device: torch.device, dtype: str, batch: int, num_classes: int, input_size: int,
                            to_device: Callable[[nn.Module], nn.Module], calibrate: Optional[Callable[[], None]],
                            describe: str, on_step: Callable[[int, int, float], None],
                            say: Callable[[str], None]) -> dict:
    """The prune stage's latency target: read on `device` at `batch` in `dtype` against a copy of the model as it
    enters the stage, bisected on copies of it pruned by a prefix of the history; then the one line on how the
    stop was decided."""
    meter = LatencyMeter(model, (3, input_size, input_size), device, dtype, batch)
    entered = copy.deepcopy(model).cpu()

    def rebuild(history: list) -> nn.Module:
        return to_device(pruned_copy(entered, history, num_classes, input_size))

    result = prune_to_latency(model, pruner, MacCounter(model, example), target, meter, calibrate=calibrate,
                              rebuild=rebuild, describe=describe, on_step=on_step, say=say)
    say(latency_line(result["latency"]))
    return result
