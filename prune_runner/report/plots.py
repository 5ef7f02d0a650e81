"""Figures: accuracy vs MACs (and measured latency) speed-up trade-off, and histograms of per-channel importance.

matplotlib is imported inside the functions and drawn with the Agg canvas directly (no pyplot, no
global backend switch), so importing this module is cheap and works without a display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..names import override_key, split_overrides
from ..run.files import atomic_path
from .reference import load_reference

LOG_X_SPREAD = 1e3  # use a log x-axis when max / smallest positive value exceeds this (3 decades)
HIST_BINS = 50


def _new_figure(size: tuple[float, float] = (7.0, 4.5)):
    # matplotlib here, not at the top: it takes about a second to import, and every prune-run imports this
    # module (the prune stage draws sparsity.png) but draws one figure at most
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    """Save atomically, so a reader never sees a half-written image."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    return path


# --- accuracy vs speed-up ----------------------------------------------------------------------------

PANEL_COLUMNS = 3  # dataset/model panels per row
PANEL_SIZE = (4.6, 3.4)  # inches per panel
LEGEND_WIDTH = 1.8  # inches right of the panels for the one legend
MARKERS = "osD^v<>pPX*h"


def method_styles(methods: list[str]) -> dict[str, dict]:
    """A distinct (colour, marker) per method, the same in every panel: tab20's dark shades first, then its
    light ones (20 colours), each with its own marker."""
    import matplotlib  # not at the top: see _new_figure

    cmap = matplotlib.colormaps["tab20"]
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return {m: {"color": cmap(order[i % 20]), "marker": MARKERS[i % len(MARKERS)]}
            for i, m in enumerate(sorted(methods))}


def tradeoff_figure(rows: list[dict], reference: list[dict]):
    """The figure of plot_tradeoff: one panel per dataset/model, followed by one against the measured latency
    speed-up per batch size its runs measured; one legend for all of them (right)."""
    pairs = sorted({(r["dataset"], r["model"]) for r in rows}) or [("", "")]
    panels = []  # (dataset/model, batch size of the latency on the x axis; None: MACs)
    for pair in pairs:
        panels.append((pair, None))
        batches = {bs for r in rows if (r["dataset"], r["model"]) == pair for bs in r.get("latency") or {}}
        panels += [(pair, bs) for bs in sorted(batches)]
    cols = min(PANEL_COLUMNS, len(panels))
    n_rows = -(-len(panels) // cols)
    fig = _new_figure((PANEL_SIZE[0] * cols + LEGEND_WIDTH, PANEL_SIZE[1] * n_rows + 0.6))
    axes = fig.subplots(n_rows, cols, squeeze=False).ravel()
    styles = method_styles(sorted({r["method"] for r in rows}))
    handles: dict[str, Any] = {}
    for ax, (pair, batch) in zip(axes, panels):
        members = [r for r in rows if (r["dataset"], r["model"]) == pair]
        _draw_panel(ax, pair, members, reference if batch is None else [], styles, handles, batch)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    with_latency = len(panels) > len(pairs)
    fig.supxlabel("MACs speed-up (base MACs / pruned MACs)" + ("; panels marked 'latency bs N': measured latency "
                                                               "speed-up at batch N" if with_latency else ""))
    fig.supylabel("top-1 accuracy after fine-tuning (%)")
    fig.suptitle("Accuracy vs speed-up; a line joins runs that differ in speed-up alone" if rows else
                 "Accuracy vs speed-up (no runs)")
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=8)
    return fig


def curve_key(row: dict) -> tuple:
    """What a line's runs share: everything but the speed-up (method, allocation, the other overrides, the setup)."""
    rest = tuple(i for i in split_overrides(row.get("overrides") or "") if override_key(i) != "prune.speed_up")
    return row["method"], row.get("allocation", "uniform"), rest


def _x(row: dict, batch: int | None) -> float | None:
    """The row's speed-up on a panel's x axis: MACs (batch None), or the measured latency at `batch`."""
    stat = row["speed_up"] if batch is None else (row.get("latency") or {}).get(batch)
    return None if stat is None else stat.mean


Y_PAD = 0.08  # of a panel's accuracy span, above and below what it shows (the base line included)


def _draw_panel(ax, pair, rows, reference, styles, handles, batch: int | None = None) -> None:
    """One dataset/model: a line per set of runs that differ in speed-up alone, coloured by method (error bars: std
    over seeds), the base accuracy, published points. `batch`: None for MACs on the x axis, else the latency
    speed-up measured at that batch size. The y axis covers what is drawn and the base line, within 0-100%."""
    curves: dict[tuple, list[dict]] = {}
    for row in rows:
        if _x(row, batch) is not None:
            curves.setdefault(curve_key(row), []).append(row)
    ys_shown = []
    for key in sorted(curves):
        members = sorted(curves[key], key=lambda r: _x(r, batch))
        method = key[0]
        xs = [_x(r, batch) for r in members]
        ys = [r["final_acc"].mean for r in members]
        errs = [r["final_acc"].std or 0.0 for r in members]
        handles[method] = ax.errorbar(xs, ys, yerr=errs, capsize=3, linestyle="-", **styles[method])
        ys_shown += [y + e for y, e in zip(ys, errs)] + [y - e for y, e in zip(ys, errs)]
    if rows:
        base = float(np.mean([r["base_acc"].mean for r in rows]))
        handles["base (unpruned)"] = ax.axhline(base, linestyle=":", color="gray", linewidth=1)
        ys_shown.append(base)
    matching = [ref for ref in reference if (ref["dataset"], ref["model"]) == pair]
    for i, ref in enumerate(matching):
        handles["published reference"] = ax.scatter(
            [ref["speed_up"]], [ref["pruned_acc"]], s=60, facecolors="none", edgecolors="black", marker="D", zorder=3)
        ax.annotate(f"{ref['label']} {ref['speed_up']:.2f}x", (ref["speed_up"], ref["pruned_acc"]),
                    textcoords="offset points", xytext=(6, 4 if i % 2 == 0 else -10),  # alternate: points sit close
                    fontsize=7, annotation_clip=True)
        ys_shown.append(ref["pruned_acc"])
    if ys_shown:
        low, high = min(ys_shown), max(ys_shown)
        pad = Y_PAD * max(high - low, 1.0)  # at least 1 pp of span: a flat panel still shows its points apart
        ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad))  # accuracy lies in 0-100%
    title = f"{pair[0]}/{pair[1]}" if rows else ""
    if batch is not None:
        where = sorted({r["latency_device"] for r in rows if r.get("latency_device") and _x(r, batch) is not None})
        title += f": latency bs {batch}" + (f" ({'; '.join(where)})" if where else "")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)


def plot_tradeoff(rows: list[dict], path: str | os.PathLike, reference: list[dict] | None = None) -> Path:
    """Final accuracy (%) vs MACs speed-up: a panel per dataset/model, a line per set of runs that differ in
    speed-up alone; next to it a panel against the measured latency speed-up per batch size measured.

    `rows` come from summary.aggregate. Error bars show the std over seeds. `reference` are published
    points (load_reference() when None; pass [] for none); those of a plotted dataset/model are
    drawn as hollow markers with labels. The base accuracy of each dataset/model is a dotted line. A
    method keeps its colour and marker in every panel, and the one legend sits right of the panels, so the
    figure stays readable with many models and methods.
    """
    if reference is None:
        reference = load_reference()
    return _save(tradeoff_figure(rows, reference), path)


# --- importance histograms ---------------------------------------------------------------------------


def _to_numpy(values: Any) -> np.ndarray:
    """1-D float array from a tensor (any device) or array-like; non-finite values dropped."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch here
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def plot_importance(
    values: Mapping[str, Any] | Any, path: str | os.PathLike, title: str = "Per-channel group importance"
) -> Path:
    """Histogram of per-channel importance (e.g. group norms) before pruning.

    `values` is one 1-D tensor/array or {name: 1-D tensor/array} (e.g. per layer or per stage, drawn as
    overlaid outlines). After successful sparse training most channels sit near zero, so the x axis turns
    logarithmic when values span more than three decades; values <= 0 are then drawn in the lowest bin
    and counted in the legend.
    """
    named = dict(values) if isinstance(values, Mapping) else {"importance": values}
    arrays = {name: _to_numpy(v) for name, v in named.items()}
    arrays = {name: a for name, a in arrays.items() if a.size}
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_ylabel("channels")
    if not arrays:
        ax.text(0.5, 0.5, "no importance values", ha="center", va="center", transform=ax.transAxes)
        return _save(fig, path)

    everything = np.concatenate(list(arrays.values()))
    positive = everything[everything > 0]
    log_x = positive.size > 0 and positive.max() / positive.min() > LOG_X_SPREAD
    if log_x:
        floor = positive.min()
        bins = np.geomspace(floor, positive.max(), HIST_BINS + 1)
        ax.set_xscale("log")
    else:
        bins = np.linspace(
            everything.min(), everything.max() if np.ptp(everything) else everything.min() + 1, HIST_BINS + 1
        )
    single = len(arrays) == 1
    for name, array in arrays.items():
        label = f"{name} (n={array.size})"
        if log_x:
            n_nonpositive = int((array <= 0).sum())
            if n_nonpositive:
                label += f", {n_nonpositive} <= 0 in lowest bin"
            array = np.clip(array, floor, None)
        ax.hist(
            array,
            bins=bins,
            histtype="stepfilled" if single else "step",
            alpha=0.7 if single else 1.0,
            label=label,
        )
    ax.set_xlabel("importance (log scale)" if log_x else "importance")
    ax.legend(fontsize=8)
    return _save(fig, path)


# --- a search: objective against each searched parameter ----------------------------------------------

def plot_study(trials: list[dict], keys: list[str], objective: str, best: dict | None, path: Path,
               log_keys: list[str] = ()) -> Path:
    """study.png of a search (search.write_study): one panel per searched parameter, each finished trial's
    objective against its value (a log axis for a parameter searched on a log scale, `log_keys`, or whose values
    span a decade or more); the best trial a red star."""
    return _save(study_figure(trials, keys, objective, best, log_keys), path)


def study_figure(trials: list[dict], keys: list[str], objective: str, best: dict | None, log_keys=()):
    """The figure of plot_study."""
    keys = keys or ["trial"]
    fig = _new_figure((4.0 * len(keys) + 1.0, 3.6))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    done = [t for t in trials if t.get("value") is not None and math.isfinite(t["value"])]
    for ax, key in zip(axes, keys):
        xs = [t["number"] if key == "trial" else t["params"].get(key) for t in done]
        ys = [t["value"] for t in done]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        if not numeric:  # categorical values: one position each, in order of appearance
            labels = list(dict.fromkeys(str(x) for x in xs))
            xs = [labels.index(str(x)) for x in xs]
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.scatter(xs, ys, color="tab:blue", label="trial")
        if best is not None and best in done:
            i = done.index(best)
            ax.scatter([xs[i]], [ys[i]], color="tab:red", s=80, marker="*", label=f"best (trial {best['number']})")
        positive = [x for x in xs if x > 0] if numeric else []
        if numeric and positive and len(positive) == len(xs) and (key in log_keys or max(positive) / min(positive)
                                                                  >= 10):
            ax.set_xscale("log")  # e.g. a regularization strength searched on a log scale
        ax.set_xlabel(key)
        ax.set_ylabel(objective)
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    fig.suptitle(f"{len(done)} of {len(trials)} trials finished")
    return fig


# --- a multi-objective search: the first objective against the second, the Pareto front joined --------

def plot_front(trials: list[dict], objectives: list[str], front: list[int], path: Path) -> Path:
    """study.png of a multi-objective search (search.write_study): each finished trial (its "values" by
    objective) as a point, objectives[1] on x and objectives[0] on y (e.g. accuracy against speed-up), the
    front's trials in red, joined in order of x; a third objective and more are in study.json only."""
    x_name, y_name = objectives[1], objectives[0]
    fig = _new_figure((6.5, 4.5))
    ax = fig.subplots()
    on_front = [t for t in trials if t["number"] in set(front)]
    ax.scatter([t["values"][x_name] for t in trials], [t["values"][y_name] for t in trials], color="tab:blue",
               alpha=0.6, label=f"trial ({len(trials)})")
    line = sorted(on_front, key=lambda t: t["values"][x_name])
    ax.plot([t["values"][x_name] for t in line], [t["values"][y_name] for t in line], "-o", color="tab:red",
            label=f"Pareto front ({len(line)})")
    for t in line:
        ax.annotate(str(t["number"]), (t["values"][x_name], t["values"][y_name]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    extra = f"; {', '.join(objectives[2:])} in study.json" if len(objectives) > 2 else ""
    ax.set_title(f"{len(trials)} finished trials{extra}", fontsize=10)
    return _save(fig, path)
