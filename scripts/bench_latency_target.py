"""Pruning to a measured latency speed-up (prune.target=latency) against pruning to the same MACs speed-up, on an
idle machine and, with --load N, again beside N CPU-burning processes.

For each model (random init, fixed seed: pruning's speed-ups need no trained weights), L1 magnitude importance,
the runner's default pruner (100 iterative steps, max_pruning_ratio 0.9):
  latency runs:  prune_to_latency (the prune stage's code) to each target at each batch size, on the CPU, fp32
  MACs runs:     progressive_prune to the same numbers as MACs speed-ups (batch-independent: one run per target)
Afterwards every pruned model is measured again, independently, with compare_latency (base and pruned forwards
interleaved; median of the per-pair ratios and its interquartile range) at the batch sizes of the table, with
as many pairs as fit about CHECK_SECONDS; under --load, after the load has stopped.

Printed per row: target, MACs speed-up reached, independently measured speed-up (median [IQR]), pruning time,
for latency runs the seconds spent reading latency and the readings taken, the fine-tuning epoch of the pruned
model on this device, the reading time as a fraction of that epoch, and how the stop was decided.
The epoch is measured in this process: EPOCH_BATCHES training steps (SGD with momentum, cross-entropy, train
mode) of batch FINETUNE_BATCH at the model's input size (32x32 for the CIFAR models), after one warm-up step,
scaled to EPOCH_IMAGES images (CIFAR-10's training set).

Goals:
  accuracy: every latency row measures >= 0.95x its target independently
  cost:     every latency row's reading time is <= 1.0 fine-tuning epoch of its model on this device
  load:     (--load N) every latency row's MACs speed-up stays within LOAD_SPREAD of the same row's idle one, or
            the row ends as "too busy" with the prune stage's one line

Run: .venv/bin/python scripts/bench_latency_target.py [--models resnet56 mobilenet_v2] [--batches 1 64]
     [--targets 1.5 2] [--threads 1] [--round-to auto] [--load 2] [--verbose]
"""

from __future__ import annotations

import argparse
import copy
import math
import multiprocessing as mp
import time
from functools import partial

import torch
import torch.nn.functional as F

from prune_runner.latency.device import cpu_name
from prune_runner.latency.meter import LatencyMeter, compare_latency
from prune_runner.models import build_model, get_model_spec
from prune_runner.pruning import (
    LatencyTargetError,
    MacCounter,
    MachineTooBusyError,
    build_pruner,
    get_method,
    progressive_prune,
    prune_to_latency,
    pruned_copy,
    resolve_round_to,
)
from prune_runner.pruning.latency_target import MISSED, TOO_BUSY

CHECK_SECONDS = 20.0  # an independent measurement lasts about this long (at least 6, at most 100 pairs)
FINETUNE_BATCH = 128  # schedule.finetune.batch_size's default
EPOCH_BATCHES = 3  # training steps timed for the epoch estimate (after one warm-up step)
EPOCH_IMAGES = 50_000  # one fine-tuning epoch: CIFAR-10's training set
LOAD_SPREAD = 1.5  # --load: a latency row's MACs speed-up stays within this factor of its idle one
LOAD_LIMIT_S = 3600.0  # a burning process ends by itself after this long, whatever happens to the benchmark


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
           "side": side, "classes": classes, "measurements": 0, "measure_s": 0.0, "error": None, "decided": ""}
    try:
        if kind == "latency":
            meter = LatencyMeter(model, (3, side, side), torch.device("cpu"), "fp32", batch)
            # as the prune stage does: the unpruned model, pruned by a prefix of the history
            rebuild = partial(pruned_copy, base, num_classes=classes, input_size=side)
            result = prune_to_latency(model, pruner, counter, target, meter, rebuild=rebuild, say=say)
            lat = result["latency"]
            row.update(measurements=lat["measurements"], reached=lat["speed_up"], decided=lat["decided"],
                       measure_s=lat["measure_s"], pruned=result["model"])
        else:
            result = progressive_prune(model, pruner, counter, target)
        row.update(macs_speed_up=result["speed_up"], steps=result["steps"])
    except (LatencyTargetError, MachineTooBusyError) as err:
        row["error"] = str(err)
        row["decided"] = TOO_BUSY if isinstance(err, MachineTooBusyError) else MISSED
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
    return compare_latency(row["base"], row["pruned"], shape, "cpu", (batch,), repeats=repeats)[batch]


def epoch_seconds(model: torch.nn.Module, side: int, classes: int) -> float:
    """One fine-tuning epoch of `model` on this device, estimated: EPOCH_BATCHES timed SGD steps of FINETUNE_BATCH
    images, after one warm-up step, scaled to EPOCH_IMAGES images. The model is trained on a copy."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(FINETUNE_BATCH, 3, side, side)
    y = torch.randint(0, classes, (FINETUNE_BATCH,))

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    train_step()
    started = time.perf_counter()
    for _ in range(EPOCH_BATCHES):
        train_step()
    return (time.perf_counter() - started) / EPOCH_BATCHES * math.ceil(EPOCH_IMAGES / FINETUNE_BATCH)


def _burn(deadline: float) -> None:
    """A CPU-burning process of --load: busy until `deadline` (time.time()), or until terminated."""
    while time.time() < deadline:
        pass


class Load:
    """--load N: N burning processes while the block runs, each ending by itself after LOAD_LIMIT_S."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        deadline = time.time() + LOAD_LIMIT_S
        self.procs = [mp.Process(target=_burn, args=(deadline,), daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
            p.join()


HEADER = (f"{'model':<13}{'batch':>5}  {'target':<13}{'MACs x':>7}  {'measured x [IQR]':<22}{'prune s':>8}"
          f"{'meas s':>7}{'n':>3}{'epoch s':>8}{'/epoch':>7}  decided")


def run_rows(args, round_to, say) -> list:
    """Every row of one table: (model, batch, target) latency runs and the MACs run of each target, pruned."""
    rows = []
    for name in args.models:
        macs_runs = {t: prune_run(name, t, "macs", 0, args.seed, round_to) for t in args.targets}
        for batch in args.batches:
            for target in args.targets:
                rows.append((prune_run(name, target, "latency", batch, args.seed, round_to, say=say), batch))
                rows.append((macs_runs[target], batch))
    return rows


def print_table(title: str, rows: list) -> list:
    """Checks each row independently and prints the table; returns the accuracy and cost goals' misses."""
    print(f"\n{title}\n{HEADER}\n" + "-" * len(HEADER), flush=True)
    missed = []
    for row, batch in rows:
        name, target = row["model"], row["target"]
        label = f"{row['kind']} {target:g}x"
        if row["error"]:
            print(f"{name:<13}{batch:>5}  {label:<13}{'':>7}  {row['decided']:<22}{row['seconds']:>8.1f}"
                  f"{row['measure_s']:>7.1f}{row['measurements']:>3}  {row['error']}", flush=True)
            if row["decided"] != TOO_BUSY:
                missed.append(f"{name} batch {batch} {label}: not reached")
            continue
        m = check(row, batch)
        measured = f"{m['ratio']:.2f} [{m['ratio_q1']:.2f}-{m['ratio_q3']:.2f}]" + (" NOISY" if m["noisy"] else "")
        meas = n = epoch = frac = ""
        if row["kind"] == "latency":
            epoch_s = epoch_seconds(row["pruned"], row["side"], row["classes"])
            row["epoch_fraction"] = row["measure_s"] / epoch_s
            meas, n = f"{row['measure_s']:.1f}", f"{row['measurements']}"
            epoch, frac = f"{epoch_s:.0f}", f"{row['epoch_fraction']:.2f}"
            if m["ratio"] < 0.95 * target:
                missed.append(f"{name} batch {batch} latency {target:g}x: measured {m['ratio']:.2f}")
            if row["epoch_fraction"] > 1.0:
                missed.append(f"{name} batch {batch} latency {target:g}x: {frac} of an epoch measuring")
        print(f"{name:<13}{batch:>5}  {label:<13}{row['macs_speed_up']:>7.2f}  {measured:<22}{row['seconds']:>8.1f}"
              f"{meas:>7}{n:>3}{epoch:>8}{frac:>7}  {row['decided']}", flush=True)
    latency = [row for row, _ in rows if row["kind"] == "latency" and not row["error"]]
    print("goal, latency rows >= 0.95x target measured independently: "
          + ("all met" if not any("measured" in x for x in missed) else
             "missed: " + "; ".join(x for x in missed if "measured" in x)))
    if latency:
        fractions = [row["epoch_fraction"] for row in latency]
        print(f"goal, reading time <= 1.0 fine-tuning epoch: {sum(f <= 1.0 for f in fractions)}/{len(fractions)} met "
              f"({min(fractions):.3f} .. {max(fractions):.3f} of an epoch)")
    return missed


def compare_load(idle: list, loaded: list) -> None:
    """The load goal: each latency row's MACs speed-up within LOAD_SPREAD of its idle one, or "too busy"."""
    lines, met, total = [], 0, 0
    for (a, batch), (b, _) in zip(idle, loaded):
        if a["kind"] != "latency":
            continue
        total += 1
        where = f"{a['model']} batch {batch} {a['target']:g}x"
        if b["decided"] == TOO_BUSY:
            met += 1
            lines.append(f"{where}: too busy ({b['error']})")
        elif a["error"] or b["error"]:
            lines.append(f"{where}: idle {a['decided']}, loaded {b['decided']}")
        else:
            factor = max(a["macs_speed_up"], b["macs_speed_up"]) / min(a["macs_speed_up"], b["macs_speed_up"])
            met += factor <= LOAD_SPREAD
            lines.append(f"{where}: MACs x {a['macs_speed_up']:.2f} idle, {b['macs_speed_up']:.2f} loaded "
                         f"({factor:.2f}x apart, {b['decided']})")
    print(f"goal, loaded MACs speed-up within {LOAD_SPREAD}x of idle or too busy: {met}/{total} met")
    for line in lines:
        print("  " + line)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet56", "mobilenet_v2"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--targets", nargs="+", type=float, default=[1.5, 2.0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--load", type=int, default=0, help="then run again beside this many CPU-burning processes")
    ap.add_argument("--verbose", action="store_true", help="print every latency reading while pruning")
    ap.add_argument("--round-to", default=None, help="prune.round_to for every run: an integer or auto")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    round_to = int(args.round_to) if args.round_to not in (None, "auto") else args.round_to
    say = (lambda text: print("  " + text, flush=True)) if args.verbose else (lambda text: None)
    t0 = time.perf_counter()
    print(f"CPU {cpu_name()}, {mp.cpu_count()} cores; torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"fp32, random init (seed {args.seed}), l1 importance, 100 iterative steps, max_pruning_ratio 0.9, "
          f"round_to {round_to} ({resolve_round_to(round_to, torch.device('cpu'), 'fp32')})")
    idle = run_rows(args, round_to, say)
    missed = print_table("idle", idle)
    if args.load:
        with Load(args.load):
            loaded = run_rows(args, round_to, say)
        print_table(f"beside {args.load} CPU-burning processes (the independent checks after they stopped)", loaded)
        compare_load(idle, loaded)
    print(f"total {time.perf_counter() - t0:.0f} s" + (f"; idle goals missed: {len(missed)}" if missed else ""))


if __name__ == "__main__":
    main()
