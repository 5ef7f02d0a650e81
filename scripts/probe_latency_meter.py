"""The same pruned model read by the prune stage's LatencyMeter (REPEATS pairs) and by bench_latency_target.py's
independent check (the same meter, as many pairs as fit about 20 s), alternating, in one process: do a short
and a long reading agree, and does the model rebuilt from the pruning history read like the live one? Run it
in a fresh process and compare with the benchmark's reading of the same step: a difference between processes
is the machine's, not the meter's.

For the model (random init, seed 0, L1 importance, 100 iterative steps, max_pruning_ratio 0.9), prune
--steps steps, then --rounds times: three meter readings (as the prune stage takes them) and one check,
of the live model and of its copy rebuilt from the pruning history.

Run: .venv/bin/python scripts/probe_latency_meter.py [--model mobilenet_v2] [--steps 33] [--batch 1]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from bench_latency_target import check, fresh_model

from prune_runner.latency.device import cpu_name
from prune_runner.latency.meter import LatencyMeter
from prune_runner.pruning import MacCounter, build_pruner, get_method, pruned_copy
from prune_runner.pruning.hints import sync_after_pruning


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--steps", type=int, default=33)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, classes, side = fresh_model(args.model, 0)
    base = copy.deepcopy(model)
    x = torch.randn(1, 3, side, side)
    pruner = build_pruner(model, x, get_method("l1"), classes, steps=100, max_pruning_ratio=0.9)
    counter = MacCounter(model, x)
    base_macs = counter.count(model)[0]
    meter = LatencyMeter(model, (3, side, side), torch.device("cpu"), "fp32", args.batch)
    for _ in range(args.steps):
        pruner.step()
        sync_after_pruning(model)
    print(f"CPU {cpu_name()}; torch {torch.__version__}, threads {torch.get_num_threads()}; {args.model} batch "
          f"{args.batch}, step {args.steps}: {base_macs / counter.count(model)[0]:.3f}x fewer MACs")
    rebuilt = pruned_copy(base, pruner.pruning_history(), classes, side)
    for rnd in range(args.rounds):
        for label, pruned in (("live", model), ("rebuilt", rebuilt)):
            readings = [meter(pruned).ratio for _ in range(3)]
            started = time.perf_counter()
            c = check({"base": base, "pruned": pruned, "side": side}, args.batch)
            print(f"round {rnd} {label:<8} meter {' '.join(f'{r:.3f}' for r in readings)} | check {c['ratio']:.3f} "
                  f"[{c['ratio_q1']:.2f}-{c['ratio_q3']:.2f}] ({c['repeats']} pairs, "
                  f"{time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
