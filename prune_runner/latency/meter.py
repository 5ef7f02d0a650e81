"""Inference latency: one model alone, or two models compared by interleaved repetitions.

`compare_latency(base, final, ...)` is what the eval stage reports. Base and final forwards
alternate within one measurement (base-final, then final-base, ...), so load on the machine that
comes and goes hits both models alike; each repetition gives one ratio base ms / final ms, and the
result is the median ratio with its interquartile range. A measurement whose IQR is wider than
`MAX_SPREAD` of the median is flagged `noisy`: the ratio is not to be trusted.

CPU: time.perf_counter around a sample of `inner` forwards (enough to last >= MIN_SAMPLE_MS).
CUDA: CUDA events around each sample, with synchronisation.
Both run under torch.inference_mode() with model.eval(); the training flags are restored.
torch.utils.benchmark is not used: importing it pulls in cpp_extension, which warns about
CUDA_HOME on machines without a CUDA runtime.
"""

from __future__ import annotations

import math
import statistics
import time
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

MIN_SAMPLE_MS = 2.0  # a timed sample lasts at least this long (timer resolution, scheduler ticks)
MAX_INNER = 100  # forwards per sample at most (tiny models)
MAX_SPREAD = 0.2  # flag a ratio whose interquartile range exceeds 20% of its median


@contextmanager
def _eval_mode(*models: nn.Module):
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
    """Warm up, then choose how many forwards one sample holds so that it lasts MIN_SAMPLE_MS."""
    ms = min(_sample_ms(model, x, 1) for _ in range(max(1, warmup)))
    return max(1, min(MAX_INNER, math.ceil(MIN_SAMPLE_MS / max(ms, 1e-6))))


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
    repeats: int = 20,
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


def _interleaved_samples(base: nn.Module, final: nn.Module, xb: torch.Tensor, xf: torch.Tensor,
                         warmup: int, repeats: int, stop: Optional[Callable[[List[float]], bool]] = None,
                         inner: Optional[int] = None) -> Tuple[List[float], List[float]]:
    if inner is None:
        inner = min(_inner_count(base, xb, warmup), _inner_count(final, xf, warmup))
    else:  # the caller knows how long a sample is: only the warm-up asked for, none where it asks for 0
        for _ in range(warmup):
            _sample_ms(base, xb, inner)
            _sample_ms(final, xf, inner)
    base_ms, final_ms = [], []
    for i in range(repeats):
        # alternate the order: a load that rises or falls during a pair hits each model first equally often
        if i % 2 == 0:
            base_ms.append(_sample_ms(base, xb, inner))
            final_ms.append(_sample_ms(final, xf, inner))
        else:
            final_ms.append(_sample_ms(final, xf, inner))
            base_ms.append(_sample_ms(base, xb, inner))
        if stop is not None and stop([b / f for b, f in zip(base_ms, final_ms)]):
            break
    return base_ms, final_ms


def compare_latency(
    base: nn.Module,
    final: nn.Module,
    input_shape: Tuple[int, int, int],
    device: torch.device | str,
    batch_sizes: Sequence[int] = (1, 64),
    warmup: int = 5,
    repeats: int = 20,
    stop: Optional[Callable[[List[float]], bool]] = None,
    inner: Optional[int] = None,
) -> Dict[int, Dict[str, float]]:
    """Per batch size: base_ms and final_ms (medians, ms per batch), ratio (median of the per-repetition
    base / final ratios), ratio_q1 and ratio_q3 (its interquartile range), spread ((q3 - q1) / median),
    noisy (spread > MAX_SPREAD) and repeats (the pairs taken). `stop(ratios so far)`, asked after each pair,
    may end a measurement before `repeats` pairs (a sequential test that has its answer). `inner` forwards
    per sample, where given, replaces the count chosen from warm-up forwards (which take at least one of
    each model even with warmup=0)."""
    device = torch.device(device)
    results: Dict[int, Dict[str, float]] = {}
    with _eval_mode(base, final):
        for batch in batch_sizes:
            xb, xf = _input(base, batch, input_shape, device), _input(final, batch, input_shape, device)
            base_ms, final_ms = _interleaved_samples(base, final, xb, xf, warmup, repeats, stop, inner)
            q1, ratio, q3 = quartiles([b / f for b, f in zip(base_ms, final_ms)])
            spread = (q3 - q1) / ratio
            results[batch] = {"base_ms": statistics.median(base_ms), "final_ms": statistics.median(final_ms),
                              "ratio": ratio, "ratio_q1": q1, "ratio_q3": q3, "spread": spread,
                              "noisy": spread > MAX_SPREAD, "repeats": len(base_ms)}
    return results
