"""Inference latency of a model on random inputs, per batch size.

CPU: torch.utils.benchmark.Timer (it handles thread settings and warm-up; we take the median).
CUDA: CUDA events around each forward, with synchronisation, median over the repeats.
Both run under torch.inference_mode() with model.eval(); the training flags are restored.
"""

from __future__ import annotations

import statistics
from typing import Dict, Sequence, Tuple

import torch
import torch.nn as nn


def _median_ms_cuda(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        torch.cuda.synchronize(x.device)
        times.append(start.elapsed_time(end))  # milliseconds
    return statistics.median(times)


def _median_ms_cpu(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> float:
    import torch.utils.benchmark as benchmark  # imported here: it pulls in cpp_extension (slow, noisy)

    for _ in range(warmup):
        model(x)
    timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": x},
                            num_threads=torch.get_num_threads())
    return timer.timeit(repeats).median * 1e3  # seconds -> ms


def measure_latency(
    model: nn.Module,
    input_shape: Tuple[int, int, int],
    device: torch.device | str,
    batch_sizes: Sequence[int] = (1, 64),
    warmup: int = 5,
    repeats: int = 20,
) -> Dict[int, Dict[str, float]]:
    """{batch_size: {"ms_per_batch": median ms, "ms_per_image": that / batch_size}} for inputs of
    shape (batch, *input_shape) on `device` (the model is expected to be there already)."""
    device = torch.device(device)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    training = {m: m.training for m in model.modules()}
    model.eval()
    results: Dict[int, Dict[str, float]] = {}
    try:
        with torch.inference_mode():
            for batch in batch_sizes:
                x = torch.randn(batch, *input_shape, device=device, dtype=dtype)
                if device.type == "cuda":
                    ms = _median_ms_cuda(model, x, warmup, repeats)
                else:
                    ms = _median_ms_cpu(model, x, warmup, repeats)
                results[batch] = {"ms_per_batch": ms, "ms_per_image": ms / batch}
    finally:
        for module, flag in training.items():
            module.training = flag
    return results
