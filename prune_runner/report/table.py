"""prune-report's console table: one line per row, 120 columns wide unless the terminal says otherwise.

report.md holds every column in full (summary.py). Here a column whose value is the same in every row moves to
the title; the overrides shrink to the keys whose values differ between the rows shown (the shared ones are
listed under the table); cells are short (acc without its pruned-model column, means of MACs and params); and a
legend under the table spells out every abbreviation. Rows never wrap: a cell too long for its column ends in
"…", and headers are never narrower than their words.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..names import split_overrides
from .summary import Stat, counts_line, latency_batches, latency_where, withheld_holdout

WIDTH = 120  # characters, when the output is not a terminal and COLUMNS does not say
GAP = 2  # characters between two columns: a column's right padding and the box's blank divider
MIN_OVERRIDES = 12  # characters the overrides column keeps however wide the other columns are
CONSTANT_KEYS = ("dataset", "model", "method", "allocation")  # shown once, in the title, when every row shares them


def override_items(label: str) -> list[str]:
    """A row's overrides label (summary._setup_label: `a=1,b=2; base_checkpoint=x; without sparse_train`) as items."""
    first, *rest = (label or "").split("; ")
    return [*split_overrides(first), *(item for item in rest if item)]


def _key(item: str) -> str:
    return item.partition("=")[0] if "=" in item else item.split(" ")[0]


def differing_overrides(rows: list[dict]) -> tuple[list[str], list[str]]:
    """(the keys whose override differs between `rows`, in order; the overrides every row shares)."""
    items = [override_items(r["overrides"]) for r in rows]
    keys = list(dict.fromkeys(_key(i) for row in items for i in row))
    by_row = [{_key(i): i for i in row} for row in items]
    shared = [by_row[0][k] for k in keys if all(k in b and b[k] == by_row[0][k] for b in by_row)]
    differing = [k for k in keys if k not in {_key(i) for i in shared}]
    return differing, shared


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key by its last part where that tells it from the others (method.reg -> reg)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _acc(stat: Stat | None, signed: bool = False) -> str:
    if stat is None:
        return "-"
    text = f"{stat.mean:{'+' if signed else ''}.2f}"
    return text if stat.std is None else f"{text}±{stat.std:.2f}"


def _target(row: dict) -> str:
    target = row.get("target_speed_up") or "-"
    match = re.fullmatch(r"(.+x) latency \(bs (\d+)\)", target)
    return f"{match.group(1)} lat@{match.group(2)}" if match else target


def _latency(row: dict, batch: int) -> str:
    stat = (row.get("latency") or {}).get(batch)
    if stat is None:
        return "-"
    return f"{stat.mean:.2f}x" + ("!" if (row.get("latency_noisy") or {}).get(batch) else "")


def console_columns(rows: list[dict]) -> tuple[list[tuple[str, Callable[[dict], str], str]], list[str], list[str]]:
    """([(header, cell, justify)], the title's constant parts, the legend's lines) of the console table."""
    constant = [k for k in CONSTANT_KEYS if len({r.get(k, "uniform") for r in rows}) == 1]
    differing, shared = differing_overrides(rows)
    differing = [k for k in differing if k != "prune.speed_up"]  # the target column shows it
    # the keys that tell most rows apart first, so that a cut cell still shows them (a search's `reg` before the
    # `eval.latency=false` that most rows share)
    values = [{_key(i): i for i in override_items(r["overrides"])} for r in rows]
    differing.sort(key=lambda k: -len({v.get(k) for v in values}))
    short = _short_keys(differing)

    def overrides(row: dict) -> str:
        mine = {_key(i): i for i in override_items(row["overrides"])}
        cells = [short[k] + mine[k][len(k):] for k in differing if k in mine]
        return ("*" if row.get("front") else "") + (",".join(cells) or "-")

    def seeds(row: dict) -> str:
        return str(row["n"]) + (f"+{len(row['reruns'])}r" if row["reruns"] else "")

    cols: list[tuple[str, Callable[[dict], str], str]] = [
        (k if k != "allocation" else "alloc", lambda r, k=k: str(r.get(k, "uniform")), "left")
        for k in CONSTANT_KEYS if k not in constant]
    cols += [("overrides", overrides, "left"), ("n", seeds, "right"),
             ("final%", lambda r: _acc(r["final_acc"]), "right")]
    withheld = withheld_holdout(rows)
    if withheld:
        cols += [("hold%", lambda r: _acc(r.get("holdout_acc")), "right")]
    cols += [("Δpp", lambda r: _acc(r["acc_delta"], signed=True), "right"), ("target", _target, "right"),
             ("MACs", lambda r: f"{r['speed_up'].mean:.2f}x", "right")]
    cols += [(f"lat@{bs}", lambda r, bs=bs: _latency(r, bs), "right") for bs in latency_batches(rows)]
    cols += [("params", lambda r: "-" if r["params_ratio"] is None else f"{r['params_ratio'].mean:.3f}", "right")]

    where = latency_where(rows) or "the device named in report.md"
    legend = [
        "overrides: only the keys whose values differ between these rows, by their last name (prune.speed_up: "
        "target)"
        + (f" (shared by every row: {', '.join(shared)})" if shared else "") + "; full strings in report.md"
        + ("; *: on a search's Pareto front (its best trial)" if any(r.get("front") for r in rows) else ""),
        "n: seeds combined in the row (acc: mean±std over them); +Nr: N reruns of a seed already counted (the same "
        "setup and seed again), not in the means",
        "final%: top-1 after fine-tuning; Δpp: final - base (unpruned) in percentage points; target: prune.speed_up "
        "(lat@N: of the latency at batch N); MACs, params: reached MACs speed-up and params ratio (means); base and "
        "pruned acc: report.md",
    ]
    if withheld:
        legend.append("hold%: top-1 on the training images the run withheld from training (dataset.holdout), what a "
                      "search selects by")
    if latency_batches(rows):
        legend.append(f"lat@N: measured latency speed-up at batch N ({where}); !: NOISY in a run (too wide a "
                      "spread to trust)")
    if "allocation" not in constant:
        legend.append("alloc: prune.allocation (uniform, global or search)")
    title = [f"{k} {rows[0].get(k, 'uniform')}" for k in constant]
    return cols, title, legend


def _console() -> Console:
    if sys.stdout.isatty():
        return Console()
    return Console(width=int(os.environ.get("COLUMNS") or WIDTH))  # a pipe or a file: 120 unless COLUMNS says


def print_table(rows: list[dict], incomplete: list | None = None, console: Console | None = None) -> None:
    """The report's rows on the console: one line each, within the console's width, a legend below."""
    console = console or _console()
    cols, title, legend = console_columns(rows)
    cells = [[cell(r) for _, cell, _ in cols] for r in rows]
    widths = [max([len(header), *(len(c[i]) for c in cells)]) for i, (header, _, _) in enumerate(cols)]
    heads = [h for h, _, _ in cols]
    at = heads.index("overrides")
    others = sum(w for i, w in enumerate(widths) if i != at) + GAP * (len(cols) - 1)
    widths[at] = max(MIN_OVERRIDES, min(widths[at], console.width - others))
    excess = others + widths[at] - console.width
    if excess > 0 and "model" in heads:  # long model names: they end in "…" rather than the row wrapping
        i = heads.index("model")
        widths[i] = max(len("model"), widths[i] - excess)
    table = Table(title="Pruning results" + (f": {', '.join(title)}" if title else ""), box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, padding=(0, 1, 0, 0), title_justify="left")
    for (header, _, justify), width in zip(cols, widths):
        table.add_column(header, justify=justify, no_wrap=True, overflow="ellipsis", min_width=width,
                         max_width=width)
    for row in cells:
        table.add_row(*map(Text, row))  # as text: an override such as `x=[a]` is no rich markup
    console.print(table)
    for line in [counts_line(rows, incomplete or []), *legend]:
        console.print(line, markup=False, highlight=False)
