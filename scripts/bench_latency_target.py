"""Pruning to a measured latency speed-up (prune.target=latency) against pruning to the same MACs speed-up.

For each model (random init, fixed seed: pruning's speed-ups need no trained weights), L1 magnitude importance,
the runner's default pruner (100 iterative steps, max_pruning_ratio 0.9):
  latency runs:  prune_to_latency (the prune stage's code) to each target at each batch size, on the CPU, fp32
  MACs runs:     progressive_prune to the same numbers as MACs speed-ups (batch-independent: one run per target)
Afterwards every pruned model is measured again, independently, with compare_latency (base and pruned forwards
interleaved; median of the per-pair ratios and its interquartile range) at the batch sizes of the table.
Printed per row: target, MACs speed-up reached, independently measured speed-up (median [IQR]), pruning time
(the loop: pruner steps, MAC counts and, for latency runs, the measurements), its ratio to the MACs run's, and
for latency runs the seconds spent measuring and the number of measurements.
Goals: latency runs measure >= 0.95x their target independently; a latency run takes <= 3x the time of the
MACs run to the same number. The last line also gives that ratio without the measurements (the pruning
steps, further where latency lags MACs; the meter's set-up; the models rebuilt to bisect a stop past the need).

Run: .venv/bin/python scripts/bench_latency_target.py [--models resnet56 mobilenet_v2] [--batches 1 64]
     [--targets 1.5 2] [--threads 1] [--round-to auto] [--verbose]
"""

from __future__ import annotations

import argparse
import copy
import time
from functools import partial

import torch

from prune_runner.latency.device import cpu_name
from prune_runner.latency.meter import compare_latency
from prune_runner.models import build_model, get_model_spec
from prune_runner.pruning import (
    LatencyTargetError,
    MacCounter,
    build_pruner,
    get_method,
    progressive_prune,
    prune_to_latency,
    pruned_copy,
    resolve_round_to,
)
from prune_runner.pruning.latency_target import LatencyMeter

NUM_CLASSES = {"cifar": 10, "torchvision": 1000}
CHECK_SECONDS = 20.0  # an independent measurement lasts about this long (at least 6, at most 100 pairs)


def fresh_model(name: str, seed: int):
    torch.manual_seed(seed)
    spec = get_model_spec(name)
    classes = 1000 if spec.family == "torchvision" else 10
    return build_model(name, classes, False, input_size=spec.input_size).eval(), classes, spec.input_size


def prune_run(name: str, target: float, kind: str, batch: int, seed: int, round_to=None,
              say=lambda text: None) -> dict:
    """One pruning run from the same initial model; returns the models, what it reached and what it cost."""
    model, classes, side = fresh_model(name, seed)
    base = copy.deepcopy(model)
    x = torch.randn(1, 3, side, side)
    started = time.perf_counter()
    pruner = build_pruner(model, x, get_method("l1"), classes, steps=100, max_pruning_ratio=0.9,
                          round_to=resolve_round_to(round_to, torch.device("cpu"), "fp32"))
    counter = MacCounter(model, x)
    row = {"model": name, "kind": kind, "target": target, "batch": batch, "base": base, "pruned": model,
           "side": side, "measurements": 0, "error": None}
    try:
        if kind == "latency":
            meter = LatencyMeter(model, (3, side, side), torch.device("cpu"), "fp32", batch, target)
            # as the prune stage does: the unpruned model, pruned by a prefix of the history
            rebuild = partial(pruned_copy, base, num_classes=classes, input_size=side)
            result = prune_to_latency(model, pruner, counter, target, meter, rebuild=rebuild, say=say)
            row.update(measurements=result["latency"]["measurements"], reached=result["latency"]["speed_up"],
                       every_step=result["latency"]["every_step"], measure_s=result["latency"]["measure_s"],
                       pruned=result["model"])
        else:
            result = progressive_prune(model, pruner, counter, target)
        row.update(macs_speed_up=result["speed_up"], steps=result["steps"])
    except LatencyTargetError as err:
        row["error"] = str(err)
    row["seconds"] = time.perf_counter() - started
    return row


def check(row: dict, batch: int) -> dict:
    """The independent measurement: compare_latency with as many pairs as fit CHECK_SECONDS."""
    shape = (3, row["side"], row["side"])
    x = torch.randn(batch, *shape)
    with torch.inference_mode():
        row["base"](x)
        started = time.perf_counter()
        row["base"](x)
        forward_s = time.perf_counter() - started
    repeats = int(min(100, max(6, CHECK_SECONDS / (2 * forward_s))))
    warmup = 1 if forward_s > 0.25 else 5  # a forward that long warms itself up
    return compare_latency(row["base"], row["pruned"], shape, "cpu", (batch,), warmup=warmup, repeats=repeats)[batch]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet56", "mobilenet_v2"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--targets", nargs="+", type=float, default=[1.5, 2.0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="print every latency measurement while pruning")
    ap.add_argument("--round-to", default=None, help="prune.round_to for every run: an integer or auto")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    round_to = int(args.round_to) if args.round_to not in (None, "auto") else args.round_to
    t0 = time.perf_counter()
    print(f"CPU {cpu_name()}; torch {torch.__version__}, threads {torch.get_num_threads()}; fp32, random init "
          f"(seed {args.seed}), l1 importance, 100 iterative steps, max_pruning_ratio 0.9, round_to {round_to} "
          f"({resolve_round_to(round_to, torch.device('cpu'), 'fp32')})")
    header = (f"{'model':<13}{'batch':>5}  {'target':<13}{'MACs x':>7}  {'measured x [IQR]':<22}{'prune s':>8}"
              f"{'vs MACs':>8}{'meas s':>7}{'n':>3}  note")
    print(header)
    print("-" * len(header))
    failures, ratios, unmeasured = [], [], []
    for name in args.models:
        macs_runs = {t: prune_run(name, t, "macs", 0, args.seed, round_to) for t in args.targets}
        for batch in args.batches:
            for target in args.targets:
                run = prune_run(name, target, "latency", batch, args.seed, round_to,
                                say=(lambda text: print("  " + text, flush=True)) if args.verbose else (lambda t: None))
                pair = macs_runs[target]
                for row in (run, pair):
                    label = f"{row['kind']} {target:g}x"
                    if row["error"]:
                        print(f"{name:<13}{batch:>5}  {label:<13}{'':>7}  {'not reached':<22}{row['seconds']:>8.1f}"
                              f"{'':>8}{'':>7}{row['measurements']:>3}  {row['error']}")
                        failures.append(f"{name} batch {batch} {label}: not reached")
                        continue
                    m = check(row, batch)
                    measured = f"{m['ratio']:.2f} [{m['ratio_q1']:.2f}-{m['ratio_q3']:.2f}]"
                    note = "NOISY" if m["noisy"] else ""
                    vs = meas = ""
                    if row is run:
                        meas = f"{row['measure_s']:.1f}"
                        vs = f"{row['seconds'] / pair['seconds']:.1f}x"
                        ratios.append(row["seconds"] / pair["seconds"])
                        unmeasured.append((row["seconds"] - row["measure_s"]) / pair["seconds"])
                        note += f" stopped at {row['reached']:.2f}" + (" (every step)" if row["every_step"] else "")
                        if m["ratio"] < 0.95 * target:
                            failures.append(f"{name} batch {batch} latency {target:g}x: measured {m['ratio']:.2f}")
                    print(f"{name:<13}{batch:>5}  {label:<13}{row['macs_speed_up']:>7.2f}  {measured:<22}"
                          f"{row['seconds']:>8.1f}{vs:>8}{meas:>7}{row['measurements']:>3}  {note.strip()}", flush=True)
    print("goal, latency runs >= 0.95x target measured independently: "
          + ("all met" if not failures else "missed: " + "; ".join(failures)))
    if ratios:
        print(f"goal, latency run time <= 3x the MACs run: {sum(r <= 3 for r in ratios)}/{len(ratios)} met "
              f"(ratios {min(ratios):.1f}x .. {max(ratios):.1f}x); without the measurements (the pruning steps, "
              f"further where latency lags MACs, the meter's set-up and any rebuilds) {min(unmeasured):.1f}x .. "
              f"{max(unmeasured):.1f}x")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
