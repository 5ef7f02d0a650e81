"""A seeded study of prune.allocation=search on digits: does the proxy pick better per-layer widths than the
uniform and global allocations, does the proxy rank what fine-tuning gives, and what does the search cost?

Grid (default; every part can be reduced by an argument): models resnet20, resnet56; methods l1 (no sparse
training) and group_norm; MACs speed-ups 3x and 5x; seeds 0, 1, 2. Per cell, four runs: prune.allocation=uniform,
global, search with sampler random, search with sampler tpe (prune.search.* defaults: 32 candidates). Each run's
accuracy right after pruning (BN recalibrated) and after fine-tuning is read from its records: both on the TEST
split, which the search itself never reads. The runs share the setup of scripts/study_digits.py (digits at 8 px,
schedule=demo, pretraining at lr 0.05) and one out_root, so the stage cache pretrains (and sparse-trains) each
(model, method, seed) once: all four allocations prune the same model.

The proxy's worth: for the first seed of each (model, method, speed-up), every candidate of the random search (>= 16)
is pruned again from the prune stage's input model, BN-recalibrated, fine-tuned for --brief-epochs epochs of
the demo fine-tuning schedule and measured on the test split; the Spearman rank correlation of its proxy with
that accuracy is reported, with the spread of those accuracies, and, to show where a weak ranking breaks, the
proxy's correlation with test accuracy right after pruning and that accuracy's with the fine-tuned one. Cost: the
search's seconds in fine-tuning epochs of the pruned model (timed in the same brief fine-tuning), and candidates
per minute.

Writes its section into STUDY.md between the markers BEGIN and END below (appended when they are missing).

Run: PYTHONPATH=. .venv/bin/python scripts/study_search.py [--models resnet20] [--methods l1] [--speed-ups 5]
     [--seeds 0] [--candidates 32] [--brief-epochs 2] [--jobs 2] [--out study_search_out]
     [--report STUDY.md] [--demo-timing]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from study_digits import machine, mean_std, run  # noqa: E402  the same runs, setup and machine line

MODELS, METHODS, SPEED_UPS, SEEDS = ["resnet20", "resnet56"], ["l1", "group_norm"], [3.0, 5.0], [0, 1, 2]
ALLOCATIONS = {"uniform": {"prune.allocation": "uniform"}, "global": {"prune.allocation": "global"},
               "search/random": {"prune.allocation": "search", "prune.search.sampler": "random"},
               "search/tpe": {"prune.allocation": "search", "prune.search.sampler": "tpe"}}
BEGIN, END = "<!-- study_search:begin -->", "<!-- study_search:end -->"
SPREAD_PP = 2.0  # the Spearman goal applies where the fine-tuned accuracies spread by more than this (pp)
MIN_CANDIDATES = 16  # the Spearman goal is measured over at least this many fine-tuned candidates


def run_group(out: Path, model: str, seed: int, args) -> list:
    """Every run of one (model, seed): they share its pretrained model (and, per method, its sparse model)
    through the stage cache, so a group is the unit that study workers take."""
    rows = []
    for method in args.methods:
        for speed_up in args.speed_ups:
            for name, overrides in ALLOCATIONS.items():
                extra = {"prune.search.candidates": args.candidates} if name.startswith("search") else {}
                run_name = f"{model}/{method}/x{speed_up:g}/seed{seed}/{name.replace('/', '-')}"
                rec = run(out, run_name, {"model": model, "method": method, "seed": seed,
                                          "prune.speed_up": speed_up, **overrides, **extra})
                prune = rec["prune"]["metrics"]
                rows.append({"model": model, "method": method, "target": speed_up, "seed": seed, "allocation": name,
                             "speed_up": prune["speed_up"], "pruned": prune["acc"],
                             "final": rec["finetune"]["metrics"]["acc"],
                             "search": prune.get("search"), "run_dir": str(out / run_name),
                             "prune_input": rec["sparse_train"]["checkpoint"]})
                print(f"{run_name}: after pruning {prune['acc']:.3f}, fine-tuned {rows[-1]['final']:.3f}", flush=True)
    return rows


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def pool(args):
    """--jobs worker processes, each single-threaded as the runs are (digits at 8 px gains nothing from more
    threads, and one process per core measures what a core does)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_set_threads, initargs=(args.threads,))


def run_cells(out: Path, args, workers) -> list:
    """The grid's rows, in grid order (model, method, target, seed, allocation); the (model, seed) groups run
    on `workers`, the slowest model first."""
    groups = [(m, s) for m in sorted(args.models, key=lambda m: m != "resnet56") for s in args.seeds]
    futures = [workers.submit(run_group, out, m, s, args) for m, s in groups]
    rows = [row for f in futures for row in f.result()]
    order = {k: i for i, k in enumerate(ALLOCATIONS)}
    return sorted(rows, key=lambda r: (args.models.index(r["model"]), args.methods.index(r["method"]),
                                       r["target"], r["seed"], order[r["allocation"]]))


def spearman(xs: list, ys: list) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties get their mean rank)."""
    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else float("nan")


def fine_tune_candidates(row: dict, epochs: int) -> dict:
    """Every candidate of one random search pruned again, recalibrated and fine-tuned briefly: Spearman of its
    proxy with its test accuracy after fine-tuning, the accuracies' spread, and seconds per fine-tuning epoch.
    Where the ranking breaks: Spearman of the proxy with the test accuracy right after pruning (the same quantity
    on other images: how much of the ranking is the holdout's noise), and of that accuracy with the fine-tuned one
    (how well accuracy after pruning foretells what fine-tuning recovers)."""
    from prune_runner.config import STAGES, StageSchedule
    from prune_runner.data import build_data
    from prune_runner.data.base import stream_seed
    from prune_runner.pruning import get_method
    from prune_runner.pruning.candidates import OneShot
    from prune_runner.pruning.weight_scale import restore_weight_scale
    from prune_runner.run.checkpoint import load_checkpoint, rebuild_model
    from prune_runner.train.batchnorm import reestimate_batchnorms, training_batches
    from prune_runner.train.loop import Fast, evaluate, make_optimizer, make_scheduler, train_epoch

    config = json.loads((Path(row["run_dir"]) / "config.json").read_text())
    finetune = config["schedule"]["finetune"]  # the run's fine-tuning schedule, shortened to `epochs`
    sched = StageSchedule(**{k: v for k, v in finetune.items() if k in StageSchedule.__dataclass_fields__})
    sched.epochs = epochs
    data = build_data("digits", root="data", input_size=8, device="cpu")
    fast = Fast(amp=False, channels_last=False)
    base, _ = rebuild_model(load_checkpoint(Path(row["prune_input"])))
    options = dict(steps=1, max_pruning_ratio=config["prune"]["max_pruning_ratio"], global_pruning=False,
                   round_to=None, normalizer=config["method"]["normalizer"])
    one_shot = OneShot(base, data.example_input(1), get_method(row["method"]), 10, options, seed=row["seed"])
    candidates = [json.loads(line) for line in (Path(row["run_dir"]) / "prune" / "candidates.jsonl").open()]
    proxies, pruned, accs, epoch_s = [], [], [], []
    for cand in candidates:
        asked = cand["asked"]
        model = (one_shot.prune(global_ratio=asked) if isinstance(asked, float) else one_shot.prune(asked)).model
        recal = training_batches(data, sched.batch_size, config["prune"]["bn_stats_batches"],
                                 seed=stream_seed(row["seed"], len(STAGES)))  # the prune stage's stream
        reestimate_batchnorms(model, recal, "cpu", fast)
        restore_weight_scale(model, data.example_input(1))
        pruned.append(evaluate(model, data.eval_batches(256), "cpu", fast)["acc"])
        opt = make_optimizer(model, sched)
        scheduler = make_scheduler(opt, sched, data.steps_per_epoch(sched.batch_size))
        for epoch in range(epochs):
            started = time.perf_counter()
            train_epoch(model, data.train_batches(sched.batch_size, epoch, row["seed"]), opt, scheduler, "cpu", fast)
            epoch_s.append(time.perf_counter() - started)
        proxies.append(cand["proxy"])
        accs.append(evaluate(model, data.eval_batches(256), "cpu", fast)["acc"])
    return {"n": len(candidates), "rho": spearman(proxies, accs), "spread_pp": 100 * (max(accs) - min(accs)),
            "rho_pruned": spearman(proxies, pruned), "rho_pruned_final": spearman(pruned, accs),
            "epoch_s": statistics.median(epoch_s), "proxies": proxies, "pruned": pruned, "accs": accs}


DEMO = {"model": "resnet20", "dataset": "digits", "method": "group_norm", "schedule": "demo", "prune.speed_up": 2,
        "progress": "false"}  # `make demo` (Makefile), run twice: as it is and with prune.allocation=search


def demo_timing(out: Path) -> dict:
    """Wall seconds of `make demo`'s run and of the same with prune.allocation=search, each in a fresh out_root
    (no stage shared), and the search's own seconds."""
    import contextlib
    import io

    from rich.console import Console
    from study_digits import compose

    from prune_runner.run.pipeline import run_pipeline

    seconds = {}
    for name, extra in (("uniform", {}), ("search", {"prune.allocation": "search"})):
        root = out / f"demo-{name}"
        shutil.rmtree(root, ignore_errors=True)  # a rerun of the study must not resume the last one's demo runs
        cfg = compose({**DEMO, **extra, "out_root": str(root), "run_dir": str(root / "run")})
        buffer = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(buffer):
            records = run_pipeline(cfg, root / "run", console=Console(file=buffer, width=200))
        seconds[name] = time.perf_counter() - started
        if name == "search":
            seconds["search_only"] = records["prune"]["metrics"]["search"]["seconds"]
    return seconds


def _group(rows, *keys):
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def write_section(rows: list, proxies: dict, demo: dict | None, wall_s: float, args) -> str:
    command = " ".join(["scripts/study_search.py", "--models", *args.models, "--methods", *args.methods,
                        "--speed-ups", *(f"{x:g}" for x in args.speed_ups), "--seeds", *map(str, args.seeds),
                        "--candidates", str(args.candidates), "--brief-epochs", str(args.brief_epochs),
                        "--jobs", str(args.jobs)]
                       + (["--demo-timing"] if args.demo_timing else []))
    lines = [BEGIN, "## Per-layer widths: the allocation search (prune.allocation=search)", "",
             f"Produced by `{command}` on {machine()}, in {wall_s / 60:.1f} min with {args.jobs} "
             "single-threaded worker processes (the stage cache included; the cost columns are measured with "
             "every worker busy). "
             "Accuracies in % on the TEST split (mean ± std over the seeds): right after pruning, BN recalibrated, "
             "and after the demo fine-tuning. uniform and global are today's allocations (progressive pruning); "
             "search/* keeps the best of the candidates by the proxy (holdout top-1 after BN re-estimation).", "",
             "| model | method | target | allocation | MACs speed-up | after pruning | fine-tuned | search s "
             "| winners |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (model, method, target, alloc), group in _group(rows, "model", "method", "target", "allocation").items():
        secs = [r["search"]["seconds"] for r in group if r["search"]]
        kinds = [r["search"]["winner_kind"] for r in group if r["search"]]  # which kind of candidate won, per seed
        winners = ", ".join(f"{k} {kinds.count(k)}/{len(kinds)}" for k in sorted(set(kinds))) or "–"
        lines.append(f"| {model} | {method} | {target:g}x | {alloc} | "
                     f"{statistics.mean(r['speed_up'] for r in group):.2f}x | {mean_std(r['pruned'] for r in group)} | "
                     f"{mean_std(r['final'] for r in group)} | {f'{statistics.mean(secs):.0f}' if secs else '–'} | "
                     f"{winners} |")
    lines += ["", f"The proxy's worth (seed {args.seeds[0]}, the random search's candidates, each fine-tuned "
              f"{args.brief_epochs} epochs of the demo fine-tuning schedule) and the search's cost:", "",
              "| model | method | target | candidates | Spearman (proxy, fine-tuned) | fine-tuned spread (pp) | "
              "Spearman (proxy, test after pruning) | Spearman (test after pruning, fine-tuned) | "
              "search in fine-tuning epochs | candidates / min |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (model, method, target), p in proxies.items():
        first = (model, method, target, args.seeds[0], "search/random")
        search = next(r["search"] for r in rows
                      if (r["model"], r["method"], r["target"], r["seed"], r["allocation"]) == first)
        lines.append(f"| {model} | {method} | {target:g}x | {p['n']} | {p['rho']:.2f} | {p['spread_pp']:.1f} | "
                     f"{p['rho_pruned']:.2f} | {p['rho_pruned_final']:.2f} | "
                     f"{search['seconds'] / p['epoch_s']:.1f} | {60 * search['candidates'] / search['seconds']:.1f} |")
    lines += ["", "### The goals, as measured in this run", ""] + goals(rows, proxies, demo) + ["", END]
    return "\n".join(lines)


def goals(rows: list, proxies: dict, demo: dict | None) -> list:
    out = []
    cell = [r for r in rows if r["model"] == "resnet56" and r["method"] == "l1" and r["target"] == 5.0]
    if cell:
        mean = {a: (statistics.mean(r["pruned"] for r in cell if r["allocation"] == a),
                    statistics.mean(r["final"] for r in cell if r["allocation"] == a)) for a in ALLOCATIONS}
        gain = 100 * (mean["search/random"][0] - mean["uniform"][0])
        after = 100 * (mean["search/random"][1] - mean["uniform"][1])
        out.append(f"- resnet56, l1, 5x: search/random after pruning {gain:+.1f} pp over uniform (goal >= +5 pp: "
                   f"{'met' if gain >= 5 else 'MISSED'}); after fine-tuning {after:+.1f} pp (goal >= 0: "
                   f"{'met' if after >= 0 else 'MISSED'}).")
    else:
        out.append("- resnet56, l1, 5x: not in this run's grid (the goal is not measured).")
    for (model, method, target), p in proxies.items():
        if p["n"] < MIN_CANDIDATES:
            out.append(f"- Spearman at {model}, {method}, {target:g}x: over {p['n']} candidates only, fewer than the "
                       f"{MIN_CANDIDATES} the goal asks for (--candidates): not a measurement of the goal.")
        elif p["spread_pp"] > SPREAD_PP:
            out.append(f"- Spearman at {model}, {method}, {target:g}x: {p['rho']:.2f} over {p['n']} candidates "
                       f"(goal >= 0.5: {'met' if p['rho'] >= 0.5 else 'MISSED'}).")
        else:
            out.append(f"- Spearman at {model}, {method}, {target:g}x: the fine-tuned accuracies spread by only "
                       f"{p['spread_pp']:.1f} pp (<= {SPREAD_PP:g}), so the goal does not apply.")
    if demo:
        extra = 100 * (demo["search"] / demo["uniform"] - 1)
        out.append(f"- `make demo` with prune.allocation=search: {demo['search']:.0f} s against "
                   f"{demo['uniform']:.0f} s "
                   f"({extra:+.0f}%, of which the search {demo['search_only']:.0f} s; goal <= +50%: "
                   f"{'met' if extra <= 50 else 'MISSED'}).")
    else:
        out.append("- `make demo` timing: not measured in this run (--demo-timing).")
    return out


def write_into(report: Path, section: str) -> None:
    from prune_runner.run.files import atomic_write_text

    text = report.read_text() if report.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(report, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="study_search_out", help="out_root of every run (the stage cache lives here)")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--speed-ups", nargs="+", type=float, default=SPEED_UPS)
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--candidates", type=int, default=32, help="prune.search.candidates (the proxy study needs 16)")
    parser.add_argument("--brief-epochs", type=int, default=2, help="fine-tuning epochs of each candidate")
    parser.add_argument("--demo-timing", action="store_true", help="also time `make demo` with and without search")
    parser.add_argument("--report", default="STUDY.md", help="the file whose section this writes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (8x8 inputs gain nothing from more)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes, each taking one (model, seed)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    start = time.perf_counter()
    with pool(args) as workers:
        rows = run_cells(out, args, workers)
        print(f"{len(rows)} runs in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
        firsts = [r for r in rows if r["seed"] == args.seeds[0] and r["allocation"] == "search/random"]
        futures = {(r["model"], r["method"], r["target"]): workers.submit(fine_tune_candidates, r, args.brief_epochs)
                   for r in firsts}
        proxies = {key: f.result() for key, f in futures.items()}
    for key, p in proxies.items():
        print(f"proxy {key}: Spearman {p['rho']:.2f} over {p['n']} candidates, spread {p['spread_pp']:.1f} pp")
    demo = demo_timing(out) if args.demo_timing else None
    wall = time.perf_counter() - start
    (out / "study_search_rows.json").write_text(json.dumps({"rows": rows, "proxies": {str(k): v for k, v in
                                                                                       proxies.items()},
                                                            "demo": demo}, indent=1))
    section = write_section(rows, proxies, demo, wall, args)
    write_into(Path(args.report), section)
    print(section)
    print(f"wrote its section into {args.report} ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
