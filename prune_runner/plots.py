"""Figures: accuracy vs MACs speed-up trade-off, and histograms of per-channel importance.

matplotlib is imported inside the functions and drawn with the Agg canvas directly (no pyplot, no
global backend switch), so importing this module is cheap and works without a display.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import open_temp

LOG_X_SPREAD = 1e3  # use a log x-axis when max / smallest positive value exceeds this (3 decades)
HIST_BINS = 50


def _new_figure(size: tuple[float, float] = (7.0, 4.5)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    """Save via a temporary file and rename, so a reader never sees a half-written image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".") or "png"
    fd, tmp = open_temp(path)
    os.close(fd)
    try:
        fig.savefig(tmp, format=fmt, dpi=120)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# --- accuracy vs speed-up ----------------------------------------------------------------------------


def _series_name(row: dict, several_pairs: bool) -> str:
    name = row["method"]
    return f"{row['dataset']}/{row['model']} {name}" if several_pairs else name


def plot_tradeoff(rows: list[dict], path: str | os.PathLike, reference: list[dict] | None = None) -> Path:
    """Final accuracy (%) vs MACs speed-up: one line per method (per dataset/model when several).

    `rows` come from report.aggregate. Error bars show the std over seeds. `reference` are published
    points (report.load_reference() when None; pass [] for none); those of a plotted dataset/model are
    drawn as hollow markers with labels. The base accuracy of each dataset/model is a dotted line.
    """
    if reference is None:
        from .report import load_reference

        reference = load_reference()
    pairs = sorted({(r["dataset"], r["model"]) for r in rows})
    several_pairs = len(pairs) > 1
    fig = _new_figure()
    ax = fig.add_subplot()
    series: dict[str, list[dict]] = {}
    for row in rows:
        series.setdefault(_series_name(row, several_pairs), []).append(row)
    for name, members in sorted(series.items()):
        members = sorted(members, key=lambda r: r["speed_up"].mean)
        xs = [r["speed_up"].mean for r in members]
        ys = [r["final_acc"].mean for r in members]
        errs = [r["final_acc"].std or 0.0 for r in members]
        ax.errorbar(xs, ys, yerr=errs, fmt="o-", capsize=3, label=name)

    for (dataset, model), style in zip(pairs, [":", "--", "-."] * len(pairs)):
        bases = [r["base_acc"].mean for r in rows if (r["dataset"], r["model"]) == (dataset, model)]
        label = f"{dataset}/{model} base" if several_pairs else "base (unpruned)"
        ax.axhline(float(np.mean(bases)), linestyle=style, color="gray", linewidth=1, label=label)

    matching = [ref for ref in reference if (ref["dataset"], ref["model"]) in set(pairs)]
    for i, ref in enumerate(matching):
        ax.scatter(
            [ref["speed_up"]],
            [ref["pruned_acc"]],
            s=60,
            facecolors="none",
            edgecolors="black",
            marker="D",
            label="published reference" if i == 0 else None,
            zorder=3,
        )
        text = f"{ref['label']} {ref['speed_up']:.2f}x"
        if several_pairs:
            text = f"{ref['dataset']}/{ref['model']} {text}"
        ax.annotate(
            text,
            (ref["speed_up"], ref["pruned_acc"]),
            textcoords="offset points",
            xytext=(6, 4 if i % 2 == 0 else -10),  # alternate above/below: reference pairs sit close together
            fontsize=7,
        )

    ax.set_xlabel("MACs speed-up (base MACs / pruned MACs)")
    ax.set_ylabel("top-1 accuracy after fine-tuning (%)")
    if len(pairs) == 1:
        ax.set_title(f"Accuracy vs speed-up: {pairs[0][0]}/{pairs[0][1]}")
    else:
        ax.set_title("Accuracy vs speed-up" if pairs else "Accuracy vs speed-up (no runs)")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


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
