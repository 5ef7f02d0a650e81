"""Collect finished runs (their results.json), combine seeds, and write report.md + tradeoff.png.

A run directory is finished when it holds `results.json` (written last by the pipeline). A directory
with `.hydra/` or stage folders but no results.json is an incomplete run: listed, never aggregated.
Accuracies in results.json are fractions; the report shows percent and percentage points (pp).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..config import STAGES
from ..errors import UserError
from ..run.files import atomic_write_text
from .plots import plot_tradeoff
from .reference import load_reference

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
# Sub-folders that mark a run directory even before results.json exists (Hydra's own, and the stages).
RUN_MARKERS = (".hydra", *STAGES)
# overrides: with the setup's label; allocation: prune.allocation from the run's config.json
GROUP_KEYS = ("dataset", "model", "method", "overrides", "setup", "allocation")


@dataclass(frozen=True)
class Stat:
    """Mean over seeds; `std` is the sample std (n - 1) and None for a single seed."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat | None:
        values = [float(v) for v in values]
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values))

    def format(self, digits: int = 2, unit: str = "", signed: bool = False) -> str:
        sign = "+" if signed else ""
        text = f"{self.mean:{sign}.{digits}f}{unit}"
        return text if self.std is None else f"{text} ± {self.std:.{digits}f}"


# --- scanning ----------------------------------------------------------------------------------------


def _load_results(path: Path) -> dict | None:
    """results.json as a dict, or None (with a warning) when it is unreadable or lacks required keys."""
    try:
        run = json.loads(path.read_text())
        for key in ("dataset", "model", "method"):
            str(run["choices"][key])
        for stage in ("base", "final"):
            float(run[stage]["acc"])
        float(run["speed_up"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("skipping unreadable %s: %s", path, err)
        return None
    run["run_dir"] = str(path.parent)  # where it is now, which may differ from where it was written
    run["allocation"] = allocation_of(path.parent / "config.json")
    return run


def allocation_of(config_path: Path) -> str:
    """How the run spread its pruning over the layers, from its config.json: prune.allocation (uniform, global or
    search); a run from before that option reads method.global_pruning (true: global); no readable config:
    uniform, the default then and now."""
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return "uniform"
    prune = config.get("prune") if isinstance(config, dict) else None
    allocation = prune.get("allocation") if isinstance(prune, dict) else None
    if isinstance(allocation, str) and allocation:
        return allocation
    method = config.get("method") if isinstance(config, dict) else None
    return "global" if isinstance(method, dict) and method.get("global_pruning") is True else "uniform"


def scan_runs(root: str | os.PathLike) -> tuple[list[dict], list[Path]]:
    """Walk `root`; return (finished runs as dicts, incomplete or unreadable run dirs), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"results directory not found: {root}")
    runs: list[dict] = []
    finished_dirs: list[Path] = []
    candidates: list[Path] = []
    front: set[Path] = set()  # the runs of a search's Pareto front (or best trial), from its study.json
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if "study.json" in filenames:
            front.update(Path(d).resolve() for d in front_run_dirs(here))
        markers = set(dirnames) & set(RUN_MARKERS)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if RESULTS_FILE in filenames:
            run = _load_results(here / RESULTS_FILE)
            if run is None:
                candidates.append(here)
            else:
                runs.append(run)
                finished_dirs.append(here)
            dirnames[:] = []  # a finished run's sub-folders are its own stages
        elif markers:
            candidates.append(here)
    # A folder holding finished runs below it is a container (e.g. a shared cache next to runs), not a run.
    incomplete = [d for d in candidates if not any(d in f.parents for f in finished_dirs)]
    for run in runs:
        run["front"] = Path(run["run_dir"]).resolve() in front
    return runs, sorted(incomplete)


# --- aggregation -------------------------------------------------------------------------------------


def _latencies(run: dict) -> dict[int, tuple[float, str, bool]]:
    """{batch size: (latency speed-up, device and precision, noisy)} of every batch the run measured."""
    latency = run.get("latency") or {}
    where = ", ".join(str(x) for x in (latency.get("device", "?"), latency.get("dtype")) if x)
    noisy = latency.get("noisy") or {}  # a spread too wide to trust (interleaved runs)
    return {int(bs): (float(v), where, bool(noisy.get(str(bs)))) for bs, v in (latency.get("speed_up") or {}).items()
            if v is not None}


def _target_label(run: dict) -> str | None:
    """"2x" for a MACs target, "1.5x latency (bs 1)" for a latency target; None without a target."""
    if run.get("target_speed_up") is None:
        return None
    target = run.get("target") or {}
    text = f"{float(run['target_speed_up']):g}x"
    return f"{text} latency (bs {target.get('batch')})" if target.get("kind") == "latency" else text


def _setup_label(run: dict) -> str:
    """The overrides, plus what changes the result without showing in them (results.json's "setup")."""
    setup = run.get("setup") or {}
    parts = [run.get("overrides") or ""]
    if setup.get("base_checkpoint"):
        parts.append(f"base_checkpoint={setup['base_checkpoint']}")
    if setup.get("resume_from"):
        parts.append(f"resume_from={setup['resume_from']}")
    if setup.get("stages_not_run"):
        parts.append("without " + ", ".join(setup["stages_not_run"]))
    return "; ".join(p for p in parts if p)


def _group_key(run: dict) -> tuple[str, ...]:
    """Runs whose results may be combined: same choices, overrides, setup and allocation (results.json files
    written before "setup" existed group by their overrides alone)."""
    choices = run["choices"]
    setup_key = (run.get("setup") or {}).get("key", "")
    return (str(choices["dataset"]), str(choices["model"]), str(choices["method"]), _setup_label(run), setup_key,
            str(run.get("allocation", "uniform")))


def _one_run_per_seed(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(one run per seed, the other runs of a seed already counted): a rerun of a seed is not another seed."""
    kept, reruns, seen = [], [], set()
    for run in sorted(runs, key=lambda r: r["run_dir"]):
        (reruns if run.get("seed") in seen else kept).append(run)
        seen.add(run.get("seed"))
    return kept, reruns


def _aggregate_group(key: tuple[str, ...], runs: list[dict]) -> dict:
    pct = 100.0  # fractions -> percent (and accuracy deltas -> percentage points)
    runs, reruns = _one_run_per_seed(runs)
    latencies = [_latencies(r) for r in runs]
    batches = sorted({bs for lat in latencies for bs in lat})
    params = [r["params_ratio"] for r in runs if r.get("params_ratio") is not None]
    targets = {_target_label(r) for r in runs}
    pruned_accs = [(r.get("pruned") or {}).get("acc") for r in runs]
    pruned_accs = [acc for acc in pruned_accs if acc is not None]
    return {
        **dict(zip(GROUP_KEYS, key)),
        "seeds": sorted((r.get("seed") for r in runs), key=lambda s: (s is None, s or 0)),
        "n": len(runs),
        "base_acc": Stat.of(r["base"]["acc"] * pct for r in runs),
        "pruned_acc": Stat.of(acc * pct for acc in pruned_accs),
        "final_acc": Stat.of(r["final"]["acc"] * pct for r in runs),
        # dataset.holdout: the final model's top-1 on training images no stage trained on (what a search selects by)
        "holdout_acc": Stat.of(r["holdout"]["acc"] * pct for r in runs
                               if (r.get("holdout") or {}).get("acc") is not None),
        "acc_delta": Stat.of(r.get("acc_delta", r["final"]["acc"] - r["base"]["acc"]) * pct for r in runs),
        "speed_up": Stat.of(r["speed_up"] for r in runs),
        "target_speed_up": targets.pop() if len(targets) == 1 else None,
        # per batch size: the runs that measured it combined; noisy: how many of them had too wide a spread
        "latency": {bs: Stat.of(lat[bs][0] for lat in latencies if bs in lat) for bs in batches},
        "latency_noisy": {bs: sum(lat[bs][2] for lat in latencies if bs in lat) for bs in batches},
        "latency_device": "; ".join(sorted({lat[bs][1] for lat in latencies for bs in lat})) or None,
        "params_ratio": Stat.of(params),
        "run_dirs": [r["run_dir"] for r in runs],
        "reruns": [r["run_dir"] for r in reruns],
        "front": any(r.get("front") for r in runs),  # a run of a search's Pareto front (study.json)
    }


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (dataset, model, method, overrides, setup and allocation): seeds combined, a seed counted once;
    sorted by dataset, model, method, then speed-up."""
    groups: dict[tuple[str, ...], list[dict]] = {}
    for run in runs:
        groups.setdefault(_group_key(run), []).append(run)
    rows = [_aggregate_group(key, group) for key, group in groups.items()]
    rows = sorted(rows, key=lambda r: (*[r[k] for k in GROUP_KEYS[:3]], r["speed_up"].mean, r["overrides"]))
    labels = [tuple(r[k] for k in ("dataset", "model", "method", "overrides", "allocation")) for r in rows]
    for row, label in zip(rows, labels):  # rows that would read the same: tell them apart by setup key
        if labels.count(label) > 1 and row["setup"]:
            row["overrides"] = f"{row['overrides']}; setup {row['setup']}".lstrip("; ")
    return rows


def counts_line(rows: list[dict], incomplete: list[Path]) -> str:
    """How many runs the table holds, the same sentence in report.md and on the console: every finished run, of
    which reruns of a seed (the same setup and seed as a run in a row) are listed but not counted again."""
    counted = sum(r["n"] for r in rows)
    reruns = sum(len(r["reruns"]) for r in rows)
    text = f"{counted + reruns} finished run(s) in {len(rows)} row(s)"
    if reruns:
        text += (f": {counted} counted, {reruns} rerun(s) of a seed already counted (the same setup and seed as a "
                 "run in its row, so not another seed; listed in report.md)")
    if incomplete:
        text += f"; {len(incomplete)} incomplete run(s) skipped (no results.json)"
    return text


# --- formatting --------------------------------------------------------------------------------------


def _fmt(stat: Stat | None, **kwargs) -> str:
    return "-" if stat is None else stat.format(**kwargs)


def _fmt_seeds(row: dict) -> str:
    return f"{row['n']} ({', '.join(str(s) for s in row['seeds'])})"


def withheld_holdout(rows: list[dict]) -> bool:
    """Whether a row's runs withheld a holdout (dataset.holdout: a search's trials): only then the holdout column."""
    return any(r.get("holdout_acc") for r in rows)


def latency_batches(rows: list[dict]) -> list[int]:
    """The batch sizes any row measured latency at: a column each."""
    return sorted({bs for r in rows for bs in r.get("latency") or {}})


def latency_where(rows: list[dict]) -> str | None:
    """The device and precision of every latency figure in `rows` when they share one, else None (then each cell
    names its own)."""
    wheres = {r["latency_device"] for r in rows if r.get("latency_device")}
    return wheres.pop() if len(wheres) == 1 and ";" not in next(iter(wheres)) else None


def fmt_latency(row: dict, batch: int, where: str | None) -> str:
    """The row's latency speed-up at `batch` ("-": not measured), NOISY with the count of runs too noisy to trust;
    the device when the column's header does not name it."""
    stat = (row.get("latency") or {}).get(batch)
    if stat is None:
        return "-"
    text = stat.format(unit="x") + ("" if where else f" ({row['latency_device']})")
    noisy = (row.get("latency_noisy") or {}).get(batch)
    return text + (f" NOISY ({noisy} run(s))" if noisy else "")


def columns(rows: list[dict]) -> list[tuple[str, Callable[[dict], str]]]:
    """(header, cell formatter) of report.md's table over `rows`: a latency column per batch size measured."""
    where = latency_where(rows)
    latency = [(f"latency speed-up, bs {bs}" + (f" ({where})" if where else ""),
                lambda r, bs=bs: fmt_latency(r, bs, where)) for bs in latency_batches(rows)]
    holdout = [("holdout acc %", lambda r: _fmt(r.get("holdout_acc")))] if withheld_holdout(rows) else []
    return [
        ("dataset", lambda r: r["dataset"]),
        ("model", lambda r: r["model"]),
        ("method", lambda r: r["method"]),
        ("allocation", lambda r: r.get("allocation", "uniform")),
        ("overrides", lambda r: (r["overrides"] or "-") + (" [front]" if r.get("front") else "")),
        ("seeds (n)", _fmt_seeds),
        ("base acc %", lambda r: _fmt(r["base_acc"])),
        ("pruned acc %", lambda r: _fmt(r["pruned_acc"])),
        ("final acc %", lambda r: _fmt(r["final_acc"])),
        *holdout,
        ("Δ acc (pp)", lambda r: _fmt(r["acc_delta"], signed=True)),
        ("target speed-up", lambda r: r["target_speed_up"] or "-"),
        ("MACs speed-up", lambda r: _fmt(r["speed_up"], unit="x")),
        *latency,
        ("params ratio", lambda r: _fmt(r["params_ratio"], digits=3)),
    ]


def format_row(row: dict, rows: list[dict] | None = None) -> list[str]:
    """The row's cells in report.md's columns (those of `rows`, the whole table; default: this row alone)."""
    return [cell(row) for _, cell in columns(rows or [row])]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(headers: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in cells]
    return "\n".join(lines)


def _reference_section(rows: list[dict], reference: list[dict]) -> list[str]:
    pairs = {(r["dataset"], r["model"]) for r in rows}
    matching = [ref for ref in reference if (ref["dataset"], ref["model"]) in pairs]
    if not matching:
        return []
    headers = ["dataset", "model", "reference", "base acc %", "pruned acc %", "Δ acc (pp)", "MACs speed-up"]
    cells = [
        [
            ref["dataset"],
            ref["model"],
            ref["label"],
            f"{ref['base_acc']:.2f}",
            f"{ref['pruned_acc']:.2f}",
            f"{ref['pruned_acc'] - ref['base_acc']:+.2f}",
            f"{ref['speed_up']:.2f}x",
        ]
        for ref in matching
    ]
    papers = ", ".join(sorted({ref["paper"] for ref in matching}))
    return [
        "## Published reference points",
        "",
        f"From {papers}; sources in reference_results.yaml.",
        "",
        markdown_table(headers, cells),
        "",
    ]


def render_markdown(
    root: Path, rows: list[dict], incomplete: list[Path], reference: list[dict], plot_name: str | None
) -> str:
    table = columns(rows)
    lines = [
        "# Pruning results",
        "",
        f"`{root}`: {counts_line(rows, incomplete)}.",
        "",
        markdown_table([h for h, _ in table], [[cell(r) for _, cell in table] for r in rows]),
        "",
        (
            "Accuracy: top-1 on the test split, mean ± sample std over seeds (std only with several seeds). "
            "Pruned acc: right after pruning, before fine-tuning. Holdout acc (where runs withheld one, "
            "dataset.holdout): the final model on training images that no stage trained on, what a search selects "
            "by. Δ acc = final − base in percentage points. "
            "Target speed-up: prune.speed_up, of MACs or (marked latency) of the measured latency at a batch "
            "size (prune.target). MACs speed-up = base MACs / final MACs (reached). "
            "A row holds runs of one setup: the same overrides, base checkpoint, resumed-from stage, stages run and "
            "allocation (prune.allocation: uniform, global or search; runs from before it: method.global_pruning). "
            "Seeds (n): how many seeds the row combines, and which; a rerun of a seed (the same setup and seed "
            "again, e.g. in another folder) is listed below, not counted twice. "
            "Latency speed-up, bs N: median base / final latency ratio of interleaved repetitions at batch size N, "
            "with the device and precision; NOISY marks a ratio whose "
            "interquartile range is too wide to trust (a busy machine). "
            "Params ratio = final params / base params."
        ),
        "",
    ]
    if any(r.get("front") for r in rows):
        lines += ["[front]: a run on the Pareto front (one objective: the best trial) of the search whose study.json "
                  "lies above it.", ""]
    if plot_name:
        lines += [f"![accuracy vs MACs and measured latency speed-up]({plot_name})", ""]
    lines += _reference_section(rows, reference)
    reruns = [d for r in rows for d in r["reruns"]]
    if reruns:
        lines += [f"## {len(reruns)} rerun(s) of a seed already counted", "",
                  "Same setup and seed as a run in the table, so not counted as another seed:", ""]
        lines += [f"- `{_relative(Path(d), root)}`" for d in reruns] + [""]
    if incomplete:
        lines += [
            f"## Skipped {len(incomplete)} incomplete run(s)",
            "",
            "No readable results.json (still running, failed, or interrupted):",
            "",
        ]
        lines += [f"- `{_relative(d, root)}`" for d in incomplete] + [""]
    return "\n".join(lines)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def write_report(root: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Scan `root`, write `report.md` and `tradeoff.png` to `out_dir` (default: `root`).

    Returns {"report": path, "plot": path}. Raises UserError when `root` is missing or has no finished run.
    """
    root = Path(root)
    runs, incomplete = scan_runs(root)
    if not runs:
        raise NoFinishedRunsError(root, len(incomplete))
    out = Path(out_dir) if out_dir is not None else root
    rows = aggregate(runs)
    reference = load_reference()
    plot_path = plot_tradeoff(rows, out / "tradeoff.png", reference=reference)
    report_path = out / "report.md"
    atomic_write_text(report_path, render_markdown(root, rows, incomplete, reference, plot_path.name))
    return {"report": report_path, "plot": plot_path}


class NoFinishedRunsError(UserError):
    def __init__(self, root: Path, n_incomplete: int):
        self.root, self.n_incomplete = root, n_incomplete
        super().__init__(
            f"no finished runs (no {RESULTS_FILE}) under {root}; {n_incomplete} incomplete run(s)"
        )


def front_run_dirs(sweep_dir: Path) -> list[str]:
    """The run dirs of the Pareto front (or best trial) of the study summarized in <sweep_dir>/study.json, under
    `sweep_dir` where the study's sweep dir has moved since."""
    path = Path(sweep_dir) / "study.json"
    if not path.is_file():
        return []
    try:
        summary = json.loads(path.read_text())
        front = set(summary.get("front") or [])
        dirs = [Path(t["run_dir"]) for t in summary.get("trials", []) if t.get("number") in front and t.get("run_dir")]
        then = Path(summary.get("sweep_dir") or sweep_dir)
        return [str(Path(sweep_dir) / d.relative_to(then)) if d.is_relative_to(then) else str(d) for d in dirs]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
