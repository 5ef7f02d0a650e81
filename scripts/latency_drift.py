"""How far one pruned model's latency reading moves over time and between copies: the question behind the latency
rule's misses in scripts/bench_latency_target.py (BENCHMARKS.md).

Prunes a model (random init, seed 0, l1, 100 iterative steps, as the benchmark does) until it reaches --macs
fewer MACs, then reads it against the unpruned model with the prune stage's meter (LatencyMeter) several times:
right away, after a pause, on a deep copy, on a copy rebuilt from the pruning history, and with compare_latency
against a fresh copy of the base model (the benchmark's independent check). Every line is one reading: the
median base/pruned ratio of the interleaved pairs and its interquartile range.

Run: .venv/bin/python scripts/latency_drift.py [--model mobilenet_v2] [--macs 2.28] [--batch 1] [--pause 20]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_latency_target as bench  # noqa: E402  the benchmark's model set-up, shared

from prune_runner.latency.device import cpu_name  # noqa: E402
from prune_runner.latency.meter import LatencyMeter, compare_latency  # noqa: E402
from prune_runner.pruning import MacCounter, build_pruner, get_method, pruned_copy  # noqa: E402
from prune_runner.pruning.progressive import StepLoop  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--macs", type=float, default=2.28, help="prune until this MACs speed-up")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--pause", type=float, default=20.0, help="seconds between the first readings and the next")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, classes, side = bench.fresh_model(args.model, 0)
    base = copy.deepcopy(model)
    x = torch.randn(1, 3, side, side)
    pruner = build_pruner(model, x, get_method("l1"), classes, steps=100, max_pruning_ratio=0.9, round_to=None)
    loop = StepLoop(model, pruner, MacCounter(model, x))
    while loop.speed_ups[-1] < args.macs and loop.step < loop.budget:
        loop.advance()
    meter = LatencyMeter(base, (3, side, side), "cpu", "fp32", args.batch)
    print(f"CPU {cpu_name()}; torch {torch.__version__}, 1 thread; {args.model} batch {args.batch}, step "
          f"{loop.step}: {loop.speed_ups[-1]:.2f}x fewer MACs", flush=True)
    started = time.perf_counter()

    def read(what: str, pruned: torch.nn.Module) -> None:
        r = meter(pruned)
        print(f"{time.perf_counter() - started:6.0f} s  {what:<28} {r.ratio:.2f}x [{r.q1:.2f}-{r.q3:.2f}]"
              + (" NOISY" if r.noisy else ""), flush=True)

    for _ in range(3):
        read("pruned in place", model)
    time.sleep(args.pause)
    read("pruned in place, after pause", model)
    read("deep copy", copy.deepcopy(model))
    read("rebuilt from history", pruned_copy(base, loop.history(loop.step), num_classes=classes, input_size=side))
    read("pruned in place", model)
    check = compare_latency(copy.deepcopy(base), model, (3, side, side), "cpu", (args.batch,))[args.batch]
    print(f"{time.perf_counter() - started:6.0f} s  {'check, fresh base copy':<28} {check['ratio']:.2f}x "
          f"[{check['ratio_q1']:.2f}-{check['ratio_q3']:.2f}]", flush=True)


if __name__ == "__main__":
    main()
