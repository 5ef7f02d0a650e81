"""How far one pruned model's latency reading moves between copies of the same two models: the question behind
the latency rule's misses in scripts/bench_latency_target.py (BENCHMARKS.md), and the reason the meter spreads
its pairs over copies (PLACEMENTS in prune_runner/latency/meter.py).

Prunes a model (random init, seed 0, l1, 100 iterative steps, as the benchmark does) until it reaches --macs
fewer MACs. Then:
  one copy each:  --copies fresh deep copies of the base and the pruned model, each pair read three times with
                  the pairs on that one copy (PLACEMENTS = 1, how the meter read before);
  the meter:      three readings with the meter as it is (each on PLACEMENTS fresh copies of both models).
Every figure is one reading: the median base/pruned ratio of the interleaved pairs and its interquartile range.

Run: .venv/bin/python scripts/latency_drift.py [--model mobilenet_v2] [--macs 2.28] [--batch 1] [--copies 5]
     [--repeats 20]
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

from prune_runner.latency import meter as latency  # noqa: E402
from prune_runner.latency.device import cpu_name  # noqa: E402
from prune_runner.pruning import MacCounter, build_pruner, get_method  # noqa: E402
from prune_runner.pruning.progressive import StepLoop  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Prints the readings; returns them: {"copies": [[ratio, ratio, ratio] per copy], "meter": [ratio, ...]}."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--macs", type=float, default=2.28, help="prune until this MACs speed-up")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--copies", type=int, default=5, help="fresh copy pairs read on their own")
    ap.add_argument("--repeats", type=int, default=latency.REPEATS, help="pairs per reading")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, classes, side = bench.fresh_model(args.model, 0)
    base = copy.deepcopy(model)
    x = torch.randn(1, 3, side, side)
    pruner = build_pruner(model, x, get_method("l1"), classes, steps=100, max_pruning_ratio=0.9, round_to=None)
    loop = StepLoop(model, pruner, MacCounter(model, x))
    while loop.speed_ups[-1] < args.macs and loop.step < loop.budget:
        loop.advance()
    print(f"CPU {cpu_name()}; torch {torch.__version__}, 1 thread; {args.model} batch {args.batch}, step "
          f"{loop.step}: {loop.speed_ups[-1]:.2f}x fewer MACs", flush=True)
    started = time.perf_counter()
    shape = (3, side, side)

    def reading(b: torch.nn.Module, p: torch.nn.Module) -> tuple:
        row = latency.compare_latency(b, p, shape, "cpu", (args.batch,), repeats=args.repeats)[args.batch]
        return row["ratio"], f"{row['ratio']:.2f}x [{row['ratio_q1']:.2f}-{row['ratio_q3']:.2f}]" + \
            (" NOISY" if row["noisy"] else "")

    found: dict = {"copies": [], "meter": []}
    placements, latency.PLACEMENTS = latency.PLACEMENTS, 1
    try:
        for i in range(args.copies):
            b, p = copy.deepcopy(base), copy.deepcopy(model)
            reads = [reading(b, p) for _ in range(3)]
            found["copies"].append([r[0] for r in reads])
            print(f"{time.perf_counter() - started:6.0f} s  copy {i}, read 3 times   " + "  ".join(r[1] for r in reads),
                  flush=True)
    finally:
        latency.PLACEMENTS = placements
    reads = [reading(base, model) for _ in range(3)]
    found["meter"] = [r[0] for r in reads]
    print(f"{time.perf_counter() - started:6.0f} s  the meter ({placements} copies) " + "  ".join(r[1] for r in reads),
          flush=True)
    within = max(max(r) / min(r) for r in found["copies"]) - 1
    between = max(r[0] for r in found["copies"]) / min(r[0] for r in found["copies"]) - 1
    print(f"one copy moves by at most {within:.0%} between its readings; copies differ by up to {between:.0%}; "
          f"the meter's readings by {max(found['meter']) / min(found['meter']) - 1:.0%}", flush=True)
    return found


if __name__ == "__main__":
    main()
