"""Latency speed-up of two IDENTICAL models while a background load comes and goes.

The true ratio is 1.0. Two methods, on the same pair of models, in the same process:
  sequential:  model A timed alone (its median), then model B timed alone: the old eval stage
  interleaved: prune_runner.latency.meter.compare_latency, A and B alternating within one measurement
A background process group loads every CPU core in a square wave: busy for `--period` seconds,
idle for the next `--period` seconds (a sweep job starting, another user's epochs). Each trial
starts at the beginning of a busy phase, so the sequential method times A mostly under load and B
mostly without it: the case the eval stage used to report as a "speed-up".

Run: .venv/bin/python scripts/bench_latency_noise.py [--model resnet20] [--batch 8] [--trials 3]
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import os
import time

import torch

from prune_runner.latency.device import cpu_name
from prune_runner.latency.meter import MAX_SPREAD, compare_latency, measure_latency
from prune_runner.models import build_model

BAND = (0.9, 1.1)  # an honest ratio of two identical models lies within this


def _spin(t0: float, period: float) -> None:
    """Busy during even periods since t0, asleep during odd ones (1 ms granularity)."""
    while True:
        if int((time.time() - t0) / period) % 2 == 0:
            end = time.perf_counter() + 1e-3
            while time.perf_counter() < end:
                pass
        else:
            time.sleep(1e-3)


def _wait_for_busy_phase(t0: float, period: float) -> None:
    elapsed = time.time() - t0
    time.sleep((2 * period - elapsed % (2 * period)) % (2 * period))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=40, help="timed samples per model (eval.latency_repeats)")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1), help="busy processes of the load")
    ap.add_argument("--period", type=float, default=None,
                    help="seconds per busy (and idle) phase; default: 1.2 x one loaded single-model measurement")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)  # one thread, as a busy machine leaves it; the load takes the rest
    torch.manual_seed(0)
    a = build_model(args.model, 10).eval()
    b = copy.deepcopy(a)
    shape = (3, 32, 32)
    measure_latency(a, shape, "cpu", (args.batch,), repeats=args.repeats)  # warm the kernels up
    started = time.perf_counter()
    measure_latency(a, shape, "cpu", (args.batch,), repeats=args.repeats)
    idle_s = time.perf_counter() - started
    # under load one measurement runs ~(workers + 1) / cores times slower; a phase should cover it
    period = args.period or 1.2 * idle_s * (args.workers + 1) / (os.cpu_count() or 1)

    print(f"CPU {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, threads 1")
    print(f"{args.model} vs an identical copy, batch {args.batch}, {args.repeats} repeats; "
          f"load: {args.workers} busy processes, {period:.2f} s on / {period:.2f} s off")
    print(f"{'trial':>5}  {'sequential':>10}  {'interleaved':>11}  {'IQR':>11}  flag")
    t0 = time.time()
    load = [mp.Process(target=_spin, args=(t0, period), daemon=True) for _ in range(args.workers)]
    for p in load:
        p.start()
    seq, inter = [], []
    try:
        for trial in range(1, args.trials + 1):
            _wait_for_busy_phase(t0, period)
            ms_a = measure_latency(a, shape, "cpu", (args.batch,), repeats=args.repeats)[args.batch]["ms_per_batch"]
            ms_b = measure_latency(b, shape, "cpu", (args.batch,), repeats=args.repeats)[args.batch]["ms_per_batch"]
            _wait_for_busy_phase(t0, period)
            m = compare_latency(a, b, shape, "cpu", (args.batch,), repeats=args.repeats)[args.batch]
            seq.append(ms_a / ms_b)
            inter.append(m["ratio"])
            flag = "NOISY" if m["noisy"] else ""
            print(f"{trial:>5}  {ms_a / ms_b:>9.3f}x  {m['ratio']:>10.3f}x  "
                  f"{m['ratio_q1']:.2f}-{m['ratio_q3']:.2f}  {flag}", flush=True)
    finally:
        for p in load:
            p.terminate()

    def verdict(ratios):
        inside = all(BAND[0] <= r <= BAND[1] for r in ratios)
        return f"{min(ratios):.3f}x .. {max(ratios):.3f}x, {'all within' if inside else 'NOT all within'} " \
               f"{BAND[0]}-{BAND[1]}"

    print(f"sequential (old):    {verdict(seq)}")
    print(f"interleaved (new):   {verdict(inter)}  (NOISY flag above {100 * MAX_SPREAD:.0f}% IQR / median)")


if __name__ == "__main__":
    main()
