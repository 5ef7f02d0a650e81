"""Inference latency: the one meter of this project, used by the eval stage (eval.latency*) and by the prune
stage (prune.target=latency).

`compare_latency(base, final, ...)` times two models by interleaved repetitions: base and final samples
alternate within one measurement (base-final, then final-base, ...), so load on the machine that comes and
goes hits both models alike; each pair gives one ratio base ms / final ms, and the result is the median ratio
with its interquartile range. A measurement whose IQR is wider than `MAX_SPREAD` of the median is flagged
`noisy`: the ratio is not to be trusted. On the CPU the pairs are spread over PLACEMENTS fresh copies of both
models: how fast a copy runs depends on where its tensors landed in memory, so one copy's ratio is one draw of a
spread, and the median over copies is the figure another process (or a deployment) gets. `LatencyMeter` binds
it to one base model, batch and dtype for the prune stage's repeated readings; both take their samples the same
way, so their figures agree.

A sample is `inner` back-to-back forwards, as many as last SAMPLE_MS (chosen from warm-up forwards).
CPU: time.perf_counter around a sample. CUDA: CUDA events around it, with synchronisation.
Both run under torch.inference_mode() with model.eval(); the training flags are restored.
torch.utils.benchmark is not used: importing it pulls in cpp_extension, which warns about
CUDA_HOME on machines without a CUDA runtime.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import math
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from .dtype import LATENCY_DTYPES, as_deployed

SAMPLE_MS = 20.0  # a timed sample lasts at least this long: several scheduler time slices (4 ms each on Linux),
#                   so a preemption on a shared machine is averaged into every sample instead of hitting some
MAX_INNER = 100  # forwards per sample at most (tiny models)
MAX_SPREAD = 0.2  # flag a ratio whose interquartile range exceeds 20% of its median
REPEATS = 20  # pairs per measurement by default (eval.latency_repeats' default): an IQR from 20 ratios
PLACEMENTS = 4  # CPU: the pairs are spread over this many copies of both models. Where a copy's tensors land in
#                 memory moves its speed: five copies of one pruned MobileNetV2 read 1.39x to 1.58x against copies
#                 of its base, each copy within 5% of itself, while the meter on four copies read 1.52x-1.53x
#                 (scripts/latency_drift.py). A stop confirmed on one copy's lucky draw read 1.36x for a 1.5x target
#                 when checked on another. Four copies of five pairs each keep the default's 20 pairs. Not on CUDA:
#                 copies would double the models' GPU memory, and the effect was measured on the CPU only


ALLOCATOR_KEEP_BYTES = 1 << 30  # glibc: allocations below 1 GiB come from the heap, and up to 1 GiB of freed heap is
#                                  kept for reuse (the largest value mallopt's int takes, rounded down to a power of 2)
MMAP_THRESHOLD_MAX = 32 << 20  # where a glibc refuses 1 GiB as its mmap threshold: the maximum it documents (64-bit)


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep memory that a forward frees for the next forward, instead of returning it to the
    OS and faulting it in again page by page; once per process, for the rest of it. Why: by default glibc tunes
    this by what the process freed before, so a reading depended on the process's history: in
    scripts/bench_latency_target.py, ResNet-56's batch-64 1.5x row (4 MB activations) stopped where readings
    passed 1.5x, and the check, taken after a training step had moved glibc's threshold, measured 1.30x. Kept
    memory is the steady state of a serving process, and of one that uses jemalloc or tcmalloc. False where the
    C library has no mallopt (macOS, Windows)."""
    try:
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    except (OSError, TypeError):  # Windows: no C library by that name
        return False
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    if not mallopt(m_trim_threshold, ALLOCATOR_KEEP_BYTES):
        return False
    return bool(mallopt(m_mmap_threshold, ALLOCATOR_KEEP_BYTES) or mallopt(m_mmap_threshold, MMAP_THRESHOLD_MAX))


@contextmanager
def _eval_mode(*models: nn.Module):
    keep_freed_memory()
    training = {m: m.training for model in models for m in model.modules()}
    for model in models:
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for module, flag in training.items():
            module.training = flag


def _sample_ms(model: nn.Module, x: torch.Tensor, inner: int) -> float:
    """Milliseconds per forward, averaged over `inner` back-to-back forwards."""
    if x.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            model(x)
        end.record()
        torch.cuda.synchronize(x.device)
        return start.elapsed_time(end) / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        model(x)
    return (time.perf_counter() - t0) * 1e3 / inner


def _inner_count(model: nn.Module, x: torch.Tensor, warmup: int) -> int:
    """Warm up with up to `warmup` single forwards, then choose how many forwards one sample holds so that it
    lasts SAMPLE_MS. A forward that lasts a sample by itself ends the warm-up from the second one on: the
    first paid the one-time costs (allocations, kernel choice), which are small next to it."""
    times: List[float] = []
    for _ in range(max(1, warmup)):
        times.append(_sample_ms(model, x, 1))
        if len(times) >= 2 and times[-1] >= SAMPLE_MS:
            break
    return max(1, min(MAX_INNER, math.ceil(SAMPLE_MS / max(min(times), 1e-6))))


def _input(model: nn.Module, batch: int, input_shape: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.randn(batch, *input_shape, device=device, dtype=dtype)


def quartiles(values: Sequence[float]) -> Tuple[float, float, float]:
    """(first quartile, median, third quartile), linearly interpolated."""
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return q1, q2, q3


def measure_latency(
    model: nn.Module,
    input_shape: Tuple[int, int, int],
    device: torch.device | str,
    batch_sizes: Sequence[int] = (1, 64),
    warmup: int = 5,
    repeats: int = REPEATS,
) -> Dict[int, Dict[str, float]]:
    """One model alone: {batch_size: {"ms_per_batch": median ms, "ms_per_image": that / batch_size}} for
    inputs of shape (batch, *input_shape) on `device` (the model is expected to be there already).
    Two such measurements taken one after the other are NOT comparable on a loaded machine: use
    `compare_latency` for a speed-up."""
    device = torch.device(device)
    results: Dict[int, Dict[str, float]] = {}
    with _eval_mode(model):
        for batch in batch_sizes:
            x = _input(model, batch, input_shape, device)
            inner = _inner_count(model, x, warmup)
            ms = statistics.median(_sample_ms(model, x, inner) for _ in range(repeats))
            results[batch] = {"ms_per_batch": ms, "ms_per_image": ms / batch}
    return results


def _placements(base: nn.Module, final: nn.Module, xb: torch.Tensor, xf: torch.Tensor, repeats: int):
    """(base, final, base input, final input, pairs) for each placement: fresh copies of the models and inputs
    (made outside inference mode, so their parameters stay ordinary tensors), each warmed up by one forward
    (first-touch costs); the pairs split evenly, the first copies taking the remainder. Fresh every measurement:
    a long-lived copy (the prune stage's base) would put one placement's draw into every reading."""
    count = min(PLACEMENTS, repeats) if xb.device.type == "cpu" else 1
    for p in range(count):
        pairs = repeats // count + (p < repeats % count)
        if count == 1:
            yield base, final, xb, xf, pairs
            continue
        with torch.inference_mode(False):
            b, f, x_b, x_f = copy.deepcopy(base), copy.deepcopy(final), xb.clone(), xf.clone()
        b(x_b), f(x_f)
        yield b, f, x_b, x_f, pairs
        del b, f, x_b, x_f


def _interleaved_samples(base: nn.Module, final: nn.Module, xb: torch.Tensor, xf: torch.Tensor,
                         warmup: int, repeats: int) -> Tuple[List[float], List[float]]:
    inner = min(_inner_count(base, xb, warmup), _inner_count(final, xf, warmup))
    base_ms, final_ms = [], []
    i = 0
    for b, f, x_b, x_f, pairs in _placements(base, final, xb, xf, repeats):
        for _ in range(pairs):
            # alternate the order: a load that rises or falls during a pair hits each model first equally often
            if i % 2 == 0:
                base_ms.append(_sample_ms(b, x_b, inner))
                final_ms.append(_sample_ms(f, x_f, inner))
            else:
                final_ms.append(_sample_ms(f, x_f, inner))
                base_ms.append(_sample_ms(b, x_b, inner))
            i += 1
    return base_ms, final_ms


def compare_latency(
    base: nn.Module,
    final: nn.Module,
    input_shape: Tuple[int, int, int],
    device: torch.device | str,
    batch_sizes: Sequence[int] = (1, 64),
    warmup: int = 5,
    repeats: int = REPEATS,
) -> Dict[int, Dict[str, float]]:
    """Per batch size: base_ms and final_ms (medians, ms per batch), ratio (median of the per-repetition
    base / final ratios), ratio_q1 and ratio_q3 (its interquartile range), spread ((q3 - q1) / median),
    noisy (spread > MAX_SPREAD) and repeats (the pairs taken)."""
    device = torch.device(device)
    results: Dict[int, Dict[str, float]] = {}
    with _eval_mode(base, final):
        for batch in batch_sizes:
            xb, xf = _input(base, batch, input_shape, device), _input(final, batch, input_shape, device)
            base_ms, final_ms = _interleaved_samples(base, final, xb, xf, warmup, repeats)
            q1, ratio, q3 = quartiles([b / f for b, f in zip(base_ms, final_ms)])
            spread = (q3 - q1) / ratio
            results[batch] = {"base_ms": statistics.median(base_ms), "final_ms": statistics.median(final_ms),
                              "ratio": ratio, "ratio_q1": q1, "ratio_q3": q3, "spread": spread,
                              "noisy": spread > MAX_SPREAD, "repeats": len(base_ms)}
    return results


@dataclass
class Reading:
    """One `LatencyMeter` reading of a model against the base model."""

    ratio: float  # median base / model latency of the interleaved pairs
    q1: float  # the ratio's interquartile range
    q3: float
    noisy: bool  # the IQR is wider than MAX_SPREAD of the median: not to be trusted
    seconds: float  # what the reading cost (wall clock)
    base_ms: float  # the base model's median ms per batch in this reading


class LatencyMeter:
    """`compare_latency` of a frozen copy of one base model, in the deployed dtype, against other models at
    one batch size: the prune stage's readings, taken as the eval stage takes its figure."""

    def __init__(self, base: nn.Module, input_shape: Tuple[int, ...], device: torch.device | str, dtype: str,
                 batch: int, repeats: int = REPEATS):
        self.base = copy.deepcopy(base).to(LATENCY_DTYPES[dtype]).eval()
        self.input_shape, self.device, self.dtype = input_shape, torch.device(device), dtype
        self.batch, self.repeats = batch, repeats

    def __call__(self, model: nn.Module) -> Reading:
        """`model` (converted to the dtype on a copy where it is in another) against the base model."""
        started = time.perf_counter()
        row = compare_latency(self.base, as_deployed(model, self.dtype), self.input_shape, self.device, (self.batch,),
                              repeats=self.repeats)[self.batch]
        return Reading(row["ratio"], row["ratio_q1"], row["ratio_q3"], bool(row["noisy"]),
                       time.perf_counter() - started, row["base_ms"])
