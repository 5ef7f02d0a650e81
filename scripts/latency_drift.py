"""How far one pruned model's latency reading moves between copies of the same two models: the question behind
the latency rule's misses in scripts/bench_latency_target.py (BENCHMARKS.md), and the reason the meter spreads
its pairs over copies (PLACEMENTS in prune_runner/latency/meter.py).

Prunes a model (random init, seed 0, l1, 100 iterative steps, as the benchmark does) until it reaches --macs
fewer MACs. Then:
  one copy each:  --copies fresh deep copies of the base and the pruned model, each pair read three times with
                  the pairs on that one copy (PLACEMENTS = 1, how the meter read before);
  the meter:      three readings with the meter as it is (each on PLACEMENTS fresh copies of both models).
With --allocator, instead, the other cause (keep_freed_memory in the meter): the pair is read in a fresh process,
then after one training step, once with glibc's default allocator and once with the meter's kept memory, each in
a process of its own (resnet56 at 1.96x fewer MACs, batch 64, as the benchmark's ResNet-56 batch-64 row stops).
Every figure is one reading: the median base/pruned ratio of the interleaved pairs and its interquartile range.

Run: .venv/bin/python scripts/latency_drift.py [--model mobilenet_v2] [--macs 2.28] [--batch 1] [--copies 5]
     [--repeats 20]
     .venv/bin/python scripts/latency_drift.py --allocator [--model resnet56 --macs 1.96 --batch 64]
"""

from __future__ import annotations

import argparse
import copy
import subprocess
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

ALLOCATORS = {"glibc default": False, "kept memory": True}  # --allocator: the modes, each in a process of its own


def pruned_pair(name: str, macs: float) -> tuple:
    """(base, pruned, side, line): the model pruned until `macs` fewer MACs, and the line that names it."""
    model, classes, side = bench.fresh_model(name, 0)
    base = copy.deepcopy(model)
    x = torch.randn(1, 3, side, side)
    pruner = build_pruner(model, x, get_method("l1"), classes, steps=100, max_pruning_ratio=0.9, round_to=None)
    loop = StepLoop(model, pruner, MacCounter(model, x))
    while loop.speed_ups[-1] < macs and loop.step < loop.budget:
        loop.advance()
    return base, model, side, f"step {loop.step}: {loop.speed_ups[-1]:.2f}x fewer MACs"


def reader(side: int, batch: int, repeats: int):
    def reading(b: torch.nn.Module, p: torch.nn.Module) -> tuple:
        row = latency.compare_latency(b, p, (3, side, side), "cpu", (batch,), repeats=repeats)[batch]
        return row["ratio"], f"{row['ratio']:.2f}x [{row['ratio_q1']:.2f}-{row['ratio_q3']:.2f}]" + \
            (" NOISY" if row["noisy"] else "")
    return reading


def allocator_readings(mode: str, name: str, macs: float, batch: int, repeats: int) -> dict:
    """One mode of --allocator, in this process (which must not have read latency before): the pair read fresh,
    then after one training step of the base model (as the benchmark's fine-tuning-epoch estimate takes one);
    returns {"fresh": ratio, "after training": ratio}."""
    keep = latency.keep_freed_memory
    if not ALLOCATORS[mode]:
        latency.keep_freed_memory = lambda: False  # the meter leaves glibc as it is
    try:
        base, model, side, line = pruned_pair(name, macs)
        reading = reader(side, batch, repeats)
        fresh = reading(base, model)
        bench.epoch_seconds(base, side, 10)
        trained = reading(base, model)
    finally:
        latency.keep_freed_memory = keep
    print(f"{mode:<14} ({line}) fresh process {fresh[1]:<18} after a training step {trained[1]}", flush=True)
    return {"fresh": fresh[0], "after training": trained[0]}


def allocator(args) -> None:
    """--allocator: each mode in a fresh process of its own (this script with --mode)."""
    print(f"CPU {cpu_name()}; torch {torch.__version__}, 1 thread; {args.model} batch {args.batch}", flush=True)
    for mode in ALLOCATORS:
        subprocess.run([sys.executable, __file__, "--mode", mode, "--model", args.model, "--macs", str(args.macs),
                        "--batch", str(args.batch), "--repeats", str(args.repeats)], check=True)


def main(argv: list[str] | None = None) -> dict:
    """Prints the readings; returns them: {"copies": [[ratio, ratio, ratio] per copy], "meter": [ratio, ...]}."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: mobilenet_v2 (resnet56 with --allocator)")
    ap.add_argument("--macs", type=float, default=None, help="prune until this MACs speed-up (default 2.28; 1.96)")
    ap.add_argument("--batch", type=int, default=None, help="default 1 (64 with --allocator)")
    ap.add_argument("--copies", type=int, default=5, help="fresh copy pairs read on their own")
    ap.add_argument("--repeats", type=int, default=latency.REPEATS, help="pairs per reading")
    ap.add_argument("--allocator", action="store_true", help="the allocator's effect instead of the copies'")
    ap.add_argument("--mode", choices=list(ALLOCATORS), help=argparse.SUPPRESS)  # one --allocator process
    args = ap.parse_args(argv)
    on_allocator = args.allocator or args.mode
    args.model = args.model or ("resnet56" if on_allocator else "mobilenet_v2")
    args.macs = args.macs or (1.96 if on_allocator else 2.28)
    args.batch = args.batch or (64 if on_allocator else 1)
    torch.set_num_threads(1)
    if args.mode:
        return allocator_readings(args.mode, args.model, args.macs, args.batch, args.repeats)
    if args.allocator:
        allocator(args)
        return {}
    base, model, side, line = pruned_pair(args.model, args.macs)
    print(f"CPU {cpu_name()}; torch {torch.__version__}, 1 thread; {args.model} batch {args.batch}, {line}",
          flush=True)
    started = time.perf_counter()
    reading = reader(side, args.batch, args.repeats)

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
