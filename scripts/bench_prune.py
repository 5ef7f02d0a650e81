"""Progressive pruning of ResNet-56 to a 2.5x MAC reduction: where does the time go?

Two runs from the same randomly initialised model (fixed seed), identical pruner settings
(L2 magnitude importance, MetaPruner pruning_ratio=1.0, iterative_steps=100,
max_pruning_ratio=0.9, classifier ignored), differing only in how MACs are counted after each
step: (a) ours, MacCounter.count from weight shapes; (b) the library's
tp.utils.count_ops_and_params (deep copy + forward each call). Both must reach the same
architecture. Then our run again with fewer, bigger steps (iterative_steps 50 and 20).
Run: .venv/bin/python scripts/bench_prune.py [--threads N] [--repeats N] [--steps 50 20] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import time
from typing import Callable, Dict

import torch
import torch.nn as nn
import torch_pruning as tp

from prune_runner.models import build_model
from prune_runner.pruning.hints import pruning_hints
from prune_runner.pruning.macs import MacCounter

TARGET_SPEEDUP = 2.5  # base MACs / current MACs
NUM_CLASSES = 10


def prune_until_target(model: nn.Module, x: torch.Tensor, make_counter: Callable,
                       iterative_steps: int = 100) -> Dict[str, float]:
    """Step the pruner until the speed-up target; time pruner build, steps and counting apart."""
    t0 = time.perf_counter()
    count = make_counter(model, x)  # () -> (macs, params)
    base_macs, _ = count()
    t1 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model, x, tp.importance.MagnitudeImportance(p=2), pruning_ratio=1.0, iterative_steps=iterative_steps,
        max_pruning_ratio=0.9, **pruning_hints(model, NUM_CLASSES),
    )
    t2 = time.perf_counter()
    step_s = count_s = 0.0
    steps, macs, params = 0, base_macs, 0
    while base_macs / macs < TARGET_SPEEDUP and steps < pruner.iterative_steps:
        ts = time.perf_counter()
        pruner.step()
        tc = time.perf_counter()
        macs, params = count()
        te = time.perf_counter()
        step_s += tc - ts
        count_s += te - tc
        steps += 1
    return {"steps": steps, "speedup": base_macs / macs, "macs": macs, "params": params,
            "counter_setup_s": t1 - t0, "pruner_build_s": t2 - t1, "step_s": step_s, "count_s": count_s,
            "total_s": time.perf_counter() - t0}


def ours(model, x):
    counter = MacCounter(model, x)
    return lambda: counter.count(model)


def library(model, x):
    """tp's counter (deep copy + forward per call), reduced to our definition of MACs: its
    conv/Linear entries only (it also counts BN, activations and pooling), so that both runs stop
    at the same step. It adds bias FLOPs to those entries: 10 for the classifier of ResNet-56."""

    def count():
        _, params, layer_flops, _ = tp.utils.count_ops_and_params(model, x, layer_wise=True)
        macs = sum(f or 0 for m, f in layer_flops.items() if isinstance(m, (nn.Conv2d, nn.Linear)))
        return macs, params

    return count


def report(name: str, r: Dict[str, float]) -> None:
    per = lambda key: 1e3 * r[key] / max(r["steps"], 1)  # noqa: E731  ms per step
    print(f"{name:10s} steps={r['steps']:3d} speed-up={r['speedup']:.3f} MACs={r['macs'] / 1e6:.2f}M "
          f"params={r['params']:,} total={r['total_s']:.2f}s | pruner build {r['pruner_build_s']:.2f}s, "
          f"steps {r['step_s']:.2f}s ({per('step_s'):.1f} ms/step), counting {r['count_s']:.3f}s "
          f"({per('count_s'):.2f} ms/step), counter setup {r['counter_setup_s']:.3f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier timings)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating runs of each; the fastest is kept")
    parser.add_argument("--steps", type=int, nargs="*", default=[50, 20],
                        help="extra iterative_steps values to time with our counter (bigger steps)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile one run of ours; print the top entries")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = build_model("resnet56", NUM_CLASSES)
    x = torch.randn(1, 3, 32, 32)
    build_model("resnet20", NUM_CLASSES)(x)  # warm up the CPU kernels outside the timings

    best: Dict[str, Dict[str, float]] = {}
    for _ in range(args.repeats):  # alternate so that machine load hits both alike
        for name, make_counter in (("ours", ours), ("library", library)):
            r = prune_until_target(copy.deepcopy(base), x, make_counter)
            if name not in best or r["total_s"] < best[name]["total_s"]:
                best[name] = r
    a, b = best["ours"], best["library"]
    report("ours", a)
    report("library", b)
    assert a["params"] == b["params"] and a["steps"] == b["steps"], "the two runs pruned differently"
    print(f"same architecture: {a['params']:,} params after {a['steps']} steps")
    print(f"library / ours total time: {b['total_s'] / a['total_s']:.2f}x; "
          f"counting only: {b['count_s'] / max(a['count_s'], 1e-9):.0f}x; "
          f"pruner.step share of ours: {a['step_s'] / a['total_s']:.0%}")

    for steps in args.steps:  # the per-step cost is nearly fixed: fewer, bigger steps are faster
        r = min((prune_until_target(copy.deepcopy(base), x, ours, iterative_steps=steps)
                 for _ in range(args.repeats)), key=lambda r: r["total_s"])
        report(f"ours/{steps}", r)

    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(prune_until_target, copy.deepcopy(base), x, ours)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(20)


if __name__ == "__main__":
    main()
