"""Training-step cost of sparse-training regularizers: ours (prune_runner.pruning.regularizers) vs torch-pruning's.

One process, one model at a time; the variants (plain step, plain + each regularizer) are interleaved
step by step so that machine noise hits them alike. Prints median step time ratios vs the plain step,
the median time of the regularizer call alone, and that time as a share of the plain step ("reg %",
the steadier overhead estimate on a noisy machine). Target: ours <= 1.03x plain.
On a shared, loaded CPU pass --threads 1: under contention OpenMP-parallel small ops stall for ms.

    .venv/bin/python scripts/bench_regularizer.py --quick
    .venv/bin/python scripts/bench_regularizer.py --models resnet56,vit_b_16 --steps 20
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
import time
from pathlib import Path

import torch
import torch_pruning as tp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_runner.latency.device import cpu_name  # noqa: E402
from prune_runner.models import build_model, get_model_spec  # noqa: E402
from prune_runner.pruning.hints import pruning_hints  # noqa: E402
from prune_runner.pruning.regularizers import build_regularizer  # noqa: E402

DEFAULT_MODELS = "resnet56,resnet18,vgg19_bn,mobilenet_v2,vit_b_16"
NUM_CLASSES = 10
LIBRARY = {  # regularizer -> (pruner class, extra pruner kwargs, per-step library call)
    "group_norm": (tp.pruner.GroupNormPruner, {"reg": 1e-4}, lambda p, m: p.regularize(m)),
    "growing_reg": (tp.pruner.GrowingRegPruner, {"reg": 1e-4}, lambda p, m: p.regularize(m)),
    "slim": (tp.pruner.BNScalePruner, {"reg": 1e-5}, lambda p, m: p.regularize(m)),
}
COEF = {"group_norm": 1e-4, "growing_reg": 1.0, "slim": 1e-5}  # coef=1: growing_reg's state holds reg


def machine() -> str:
    cpu = cpu_name()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    threads = torch.get_num_threads()
    tp_version = importlib.metadata.version("torch-pruning")
    return f"CPU {cpu}{gpu}; torch {torch.__version__}, torch-pruning {tp_version}, threads {threads}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_variants(model, example, device):
    """{variant: (regularizer call or None)}; library failures become notes."""
    variants, notes = {"plain": None}, []
    for name, (cls, kwargs, lib_call) in LIBRARY.items():
        try:
            hints = pruning_hints(model, NUM_CLASSES)  # fresh dicts for every pruner
            pruner = cls(model, example_inputs=example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                         channel_groups={}, **hints, **kwargs)
            model.train()  # building a pruner leaves the model in eval mode
        except Exception as err:  # noqa: BLE001  (report and go on with the other variants)
            notes.append(f"{name}: library pruner failed ({type(err).__name__}: {err})")
            continue
        try:
            ours = build_regularizer(name, model, pruner, **({"reg": 1e-4} if name == "growing_reg" else {}))
            variants[f"ours:{name}"] = lambda ours=ours, c=COEF[name]: ours.apply(c)
        except Exception as err:  # noqa: BLE001
            notes.append(f"{name}: ours failed ({type(err).__name__}: {err})")
        variants[f"lib:{name}"] = lambda pruner=pruner, call=lib_call: call(pruner, model)
    return variants, notes


def bench_model(name: str, args, device) -> tuple[dict, dict, list]:
    spec = get_model_spec(name)
    side = spec.input_size
    batch = args.batch or (64 if spec.family == "cifar" else 8)
    if args.quick:
        batch = min(batch, 4 if spec.family == "cifar" else 1)
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES).to(device)
    example = torch.randn(1, 3, side, side, device=device)
    t0 = time.perf_counter()
    variants, notes = build_variants(model, example, device)
    notes.append(f"setup (3 pruners + ours) {time.perf_counter() - t0:.1f}s, batch {batch}, {side}x{side}")
    x = torch.randn(batch, 3, side, side, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)  # tiny lr: the weights barely move
    loss_fn = torch.nn.CrossEntropyLoss()
    step_times = {v: [] for v in variants}
    reg_times = {v: [] for v in variants}

    def step(regularize):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        sync(device)
        r0 = time.perf_counter()
        if regularize is not None:
            regularize()
        sync(device)
        r1 = time.perf_counter()
        opt.step()
        return r1 - r0

    order = list(variants)
    for i in range(args.warmup + args.steps):
        rotated = order[i % len(order):] + order[: i % len(order)]  # each variant sees every slot
        for v in rotated:
            sync(device)
            t = time.perf_counter()
            reg_t = step(variants[v])
            sync(device)
            if i >= args.warmup:
                step_times[v].append(time.perf_counter() - t)
                reg_times[v].append(reg_t)
    return ({v: statistics.median(ts) for v, ts in step_times.items()},
            {v: statistics.median(ts) for v, ts in reg_times.items()}, notes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated registry names")
    parser.add_argument("--batch", type=int, default=0, help="batch size (default 64 CIFAR, 8 ImageNet)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny batches, 2 steps: checks that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(machine())
    print(f"device {device}; {args.steps} timed steps (+{args.warmup} warm-up) per variant, interleaved")
    # "x plain" compares whole-step medians (noisy, about +-2% on a shared CPU); "overhead" is
    # 1 + (directly timed regularizer ms) / (plain step ms): the same steps, the regularizer alone timed
    header = f"{'model':<14}{'variant':<18}{'step ms':>10}{'x plain':>9}{'reg ms':>9}{'overhead':>10}"
    rows, all_notes, worst = [header, "-" * len(header)], [], {}
    for name in args.models.split(","):
        name = name.strip()
        try:
            steps, regs, notes = bench_model(name, args, device)
        except Exception as err:  # noqa: BLE001  (one broken model must not hide the others)
            all_notes.append(f"{name}: skipped ({type(err).__name__}: {err})")
            continue
        all_notes += [f"{name}: {n}" for n in notes]
        plain = steps["plain"]
        for v, t in steps.items():
            overhead = 1 + regs[v] / plain
            worst[v.split(":")[0]] = max(worst.get(v.split(":")[0], 1.0), overhead)
            rows.append(f"{name:<14}{v:<18}{t * 1e3:>10.1f}{t / plain:>9.3f}{regs[v] * 1e3:>9.2f}{overhead:>10.3f}")
        print("\n".join(rows[-len(steps):]), flush=True)
    print("\n" + "\n".join(rows))
    for who in ("ours", "lib"):
        if who in worst:
            print(f"{who}: largest overhead {worst[who]:.3f}x plain (target for ours: <= 1.03x)")
    for note in all_notes:
        print("note:", note)


if __name__ == "__main__":
    main()
