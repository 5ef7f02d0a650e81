"""Which channel multiple makes convolutions fastest per MAC on this device? The evidence behind
prune.round_to=auto (the table in prune_runner/round_to.py).

Pruned layers end up with any width. A kernel that works on blocks of channels (SIMD lanes on a CPU, tensor
core tiles on a GPU) pads a width that is not a multiple of its block, so an odd width costs about as much
as the next multiple: time steps up just after each multiple of the block. For each width w in a window,
this script times a layer with w input and w output channels (a 3x3 convolution, and a 1x1 one) and fits,
for each candidate block m, the model "time = a * ceil_m(w)^b" (a power law of the padded width; m = 1 is
the smooth model). It prints each fit's residual spread (std of log time) and chooses the block that explains
the timings best; a coarser block must beat every finer one by `--gain` (10%) to be chosen, since rounding
to it costs channels. The device's multiple is the coarser of the two layer kinds' blocks.

All widths of one layer kind are timed round-robin in one process (a load that comes and goes hits every
width alike); each width's time is its fastest of `--repeats` samples (a load only ever adds time).
Run: .venv/bin/python scripts/bench_round_to.py [--device cpu] [--dtype fp32] [--batch 8] [--repeats 15]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn as nn

from prune_runner.latency.device import cpu_name
from prune_runner.latency.dtype import LATENCY_DTYPES
from prune_runner.latency.meter import _inner_count, _sample_ms

MULTIPLES = (1, 2, 4, 8, 16, 32)


def largest_multiple(width: int) -> int:
    return max(m for m in MULTIPLES if width % m == 0)


def time_widths(kind: str, widths, batch: int, size: int, device: torch.device, dtype: torch.dtype,
                repeats: int) -> dict:
    """{width: MACs per microsecond} of one layer kind, widths timed round-robin."""
    kernel = {"conv3x3": 3, "conv1x1": 1}[kind]
    layers, inputs, inner = {}, {}, {}
    for w in widths:
        layers[w] = nn.Conv2d(w, w, kernel, padding=kernel // 2, bias=False).to(device, dtype).eval()
        inputs[w] = torch.randn(batch, w, size, size, device=device, dtype=dtype)
    samples = {w: [] for w in widths}
    with torch.inference_mode():
        for w in widths:
            inner[w] = _inner_count(layers[w], inputs[w], warmup=3)
        for _ in range(repeats):
            for w in widths:
                samples[w].append(_sample_ms(layers[w], inputs[w], inner[w]))
    out = {}
    for w in widths:
        macs = batch * size * size * w * w * kernel * kernel
        out[w] = macs / (min(samples[w]) * 1e3)  # MACs per microsecond, at the fastest sample (load only adds)
    return out


def padded_fit(throughput: dict, block: int) -> float:
    """How well "a width costs as much as the next multiple of `block`" explains the timings: the residual
    std of log(time) fitted by a power law of the padded width, a * ceil_block(w)^b (the free exponent
    absorbs the trend of larger layers running more efficiently). block=1: the smooth model, a * w^b."""
    xs, ys = [], []
    for w, t in throughput.items():
        xs.append(math.log(-(-w // block) * block))
        ys.append(math.log(w * w / t))  # time up to a constant: MACs ~ w^2 (batch and map size fixed)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0  # one padded width
    return statistics.pstdev([y - my - slope * (x - mx) for x, y in zip(xs, ys)])


def choose(throughput: dict, gain: float) -> tuple[int, dict]:
    """(chosen block, {block: spread of the padded-width model}): the block whose model explains the timings
    best; a coarser block must explain them `gain` better than every finer one to be chosen."""
    fits = {m: padded_fit(throughput, m) for m in MULTIPLES}
    chosen = 1
    for m in MULTIPLES[1:]:
        if fits[m] < fits[chosen] * (1 - gain):
            chosen = m
    return chosen, fits


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=sorted(LATENCY_DTYPES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=16, help="feature map side in pixels")
    ap.add_argument("--widths", type=int, nargs=2, default=(48, 80), help="first and last width (inclusive)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--gain", type=float, default=0.1)
    args = ap.parse_args(argv)
    device, dtype = torch.device(args.device), LATENCY_DTYPES[args.dtype]
    widths = list(range(args.widths[0], args.widths[1] + 1))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"CPU {cpu_name()}; GPU {gpu}; torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"device {device}, {args.dtype}, batch {args.batch}, {args.size}x{args.size} maps, widths "
          f"{widths[0]}..{widths[-1]}, {args.repeats} samples per width, round-robin")
    t0 = time.perf_counter()
    chosen_all = []
    for kind in ("conv3x3", "conv1x1"):
        throughput = time_widths(kind, widths, args.batch, args.size, device, dtype, args.repeats)
        chosen, fits = choose(throughput, args.gain)
        chosen_all.append(chosen)
        print(f"{kind}: spread of 'a width costs as much as the next multiple of m': "
              + ", ".join(f"m={m}: {f:.3f}" for m, f in fits.items()) + f" -> {chosen}")
        print("  MACs/us per width: " + " ".join(f"{w}:{throughput[w]:.0f}" for w in widths))
    print(f"round_to for ({device.type}, {args.dtype}): {max(chosen_all)} "
          f"(the coarser of the two layer kinds; {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
