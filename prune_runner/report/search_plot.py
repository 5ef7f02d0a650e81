"""search.png: the candidates of prune.allocation=search, proxy accuracy against MACs speed-up, with the
uniform and global allocations, the finalists read with the latency meter (prune.target=latency) and the winner
marked. Drawn with the report's figure and atomic save (plots.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from .plots import _new_figure, _save

SEARCH_PLOT = "search.png"
MARKS = {"uniform": ("s", "tab:blue"), "global": ("D", "tab:orange")}  # marker, colour of the default allocations


def plot_search(rows: List[dict], path: str | os.PathLike, target: float, title: str = "allocation search",
                winner: Optional[int] = None) -> Path:
    """One point per scored candidate (candidates.jsonl rows); the MACs target as a vertical line; the row of
    index `winner` starred (None: no candidate won, the uniform allocation at the latency stop did)."""
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("MACs speed-up (x)")
    ax.set_ylabel("proxy: holdout top-1 after BN recalibration")
    sampled = [r for r in rows if r["kind"] == "sampled"]
    ax.scatter([r["speed_up"] for r in sampled], [r["proxy"] for r in sampled], s=18, color="0.55",
               label=f"sampled ({len(sampled)})")
    for kind, (marker, colour) in MARKS.items():
        mine = [r for r in rows if r["kind"] == kind]
        if mine:
            ax.scatter([r["speed_up"] for r in mine], [r["proxy"] for r in mine], s=60, marker=marker,
                       color=colour, label=kind, zorder=3)
    read = [r for r in rows if r.get("latency")]
    if read:  # the finalists: ringed, green where they reached the latency target
        ax.scatter([r["speed_up"] for r in read], [r["proxy"] for r in read], s=120, facecolors="none",
                   edgecolors=["tab:green" if r["latency"]["reached"] else "0.2" for r in read], linewidths=1.2,
                   label=f"finalists read ({sum(r['latency']['reached'] for r in read)} reached the latency target)",
                   zorder=4)
    best = next((r for r in rows if r["index"] == winner), None)
    if best is not None:
        ax.scatter([best["speed_up"]], [best["proxy"]], s=220, marker="*", facecolors="none",
                   edgecolors="tab:red", linewidths=1.5, label=f"winner ({best['kind']})", zorder=5)
    ax.axvline(target, color="0.3", linestyle=":", linewidth=1, label=f"MACs target {target:.3g}x")
    ax.legend(fontsize=8)
    return _save(fig, path)
