"""prune.allocation=search: candidates of per-group ratios, each pruned in one shot and scored by a proxy (the
caller's `score`: top-1 on the holdout after BatchNorm re-estimation), the best one kept (EagleEye's recipe).

The default allocations are scored first, uniform then global, so by the proxy the search never loses to them
(a tie goes to the earlier candidate). Every scored candidate is a line of candidates.jsonl, the file rewritten
whole through the one atomic write after each, so a killed search resumes from it: the lines of this stage's
config (its hash) are read back, told to the sampler, and only the rest is scored.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch.nn as nn

from ..run.files import atomic_write_text
from .candidates import OneShot, Pruned
from .latency_target import passes
from .progressive import PruningTargetError
from .samplers import LOWEST, build_sampler

CANDIDATES_FILE = "candidates.jsonl"
DEFAULTS = ("uniform", "global")  # scored first, in this order
# draws per candidate at most: a draw whose ratios cannot meet the target (cap, coarse widths) is drawn again
DRAWS_PER_CANDIDATE = 4
# prune.target=latency: the candidates best by the proxy that the latency meter reads. The proxy is one holdout's
# top-1, so neighbours in its ranking are close to a tie; a few are read, since two allocations of equal MACs can
# differ in latency (widths off a kernel's fast path). Each costs the latency rule's test (`passes`): two
# meter readings, more where one is NOISY
FINALISTS = 4


@dataclass
class SearchOutcome:
    winner: Pruned
    rows: List[dict]  # the scored candidates, in order (candidates.jsonl)
    summary: dict  # results.json's `search` section


def read_rows(path: Path, stage_hash: str) -> List[dict]:
    """The candidates of this config already scored (a killed search's); a line that does not parse ends it."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                break
            if row.get("hash") == stage_hash:
                rows.append(row)
    return rows


def _direction(ratios: Dict[str, float]) -> Dict[str, float]:
    """A default allocation's realized ratios as a sampler's raw ratios (a direction in [LOWEST, 1])."""
    top = max(ratios.values()) or 1.0
    return {g: min(1.0, max(LOWEST, r / top)) for g, r in ratios.items()}


def search_widths(one_shot: OneShot, target: float, max_ratio: float, settings, seed: int,
                  score: Callable[[nn.Module], float], path: Path, stage_hash: str,
                  say: Callable[[str], None] = print) -> SearchOutcome:
    """Score `settings.candidates` allocations (prune.search) at the MACs speed-up `target`; return the best."""
    rows = read_rows(path, stage_hash)
    if rows:
        say(f"prune search: resuming after {len(rows)} scored candidates ({path})")
    sampler = build_sampler(settings.sampler, one_shot.groups, seed)
    for row in rows:
        sampler.tell(row["raw"], row["proxy"])
    best: Optional[Pruned] = None
    best_row: Optional[dict] = max(rows, key=lambda r: r["proxy"], default=None)
    draw = max((r["draw"] for r in rows if r["kind"] == "sampled"), default=-1) + 1
    misses = 0

    def record(kind: str, pruned: Pruned, raw: Dict[str, float], started: float, draw_index=None) -> None:
        nonlocal best, best_row
        proxy = float(score(pruned.model))
        row = {"index": len(rows), "kind": kind, "draw": draw_index, "hash": stage_hash, "proxy": proxy,
               "macs": pruned.macs, "speed_up": pruned.speed_up, "latency": None,
               "asked": pruned.asked, "ratios": pruned.ratios, "raw": raw,
               "seconds": round(time.perf_counter() - started, 3)}
        rows.append(row)
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        sampler.tell(raw, proxy)
        if best_row is None or proxy > best_row["proxy"]:
            best, best_row = pruned, row
        say(f"prune search: candidate {len(rows)}/{settings.candidates} ({kind}) MACs speed-up "
            f"{pruned.speed_up:.3f}x, proxy {proxy:.4f} (best {best_row['proxy']:.4f})")

    for kind in DEFAULTS:
        if any(r["kind"] == kind for r in rows):
            continue
        started = time.perf_counter()
        raw = {g: 1.0 for g in one_shot.groups} if kind == "uniform" else None
        pruned = one_shot.to_target(target, raw, max_ratio)
        if pruned is None:
            say(f"prune search: the {kind} allocation cannot meet {target}x within 1% under "
                f"prune.max_pruning_ratio={max_ratio}; it is not a candidate")
            continue
        record(kind, pruned, _direction(pruned.ratios), started)
    while len(rows) < settings.candidates and misses < DRAWS_PER_CANDIDATE * settings.candidates:
        started = time.perf_counter()
        raw = sampler.ask(draw)
        pruned = one_shot.to_target(target, raw, max_ratio)
        if pruned is None:
            sampler.fail()
            misses += 1
        else:
            record("sampled", pruned, raw, started, draw)
        draw += 1
    if best_row is None:
        raise PruningTargetError(f"no allocation met the {target}x MACs speed-up within 1% under "
                                 f"prune.max_pruning_ratio={max_ratio}; raise it or lower prune.speed_up")
    if best is None:  # the winner was scored before a kill: pruned again from its recorded ratios
        best = pruned_again(one_shot, best_row)
    by_kind = {r["kind"]: r["proxy"] for r in rows if r["kind"] in DEFAULTS}
    summary = {"candidates": len(rows), "sampler": settings.sampler, "winner": best_row["index"],
               "winner_kind": best_row["kind"], "winner_proxy": best_row["proxy"],
               "uniform_proxy": by_kind.get("uniform"), "global_proxy": by_kind.get("global"),
               "holdout": settings.holdout, "seconds": round(sum(r["seconds"] for r in rows), 3)}
    return SearchOutcome(best, rows, summary)


def pruned_again(one_shot: OneShot, row: dict) -> Pruned:
    """A scored candidate pruned again from what its row asked (the same ratios give the same model)."""
    asked = row["asked"]
    return one_shot.prune(global_ratio=asked) if isinstance(asked, float) else one_shot.prune(asked)


def read_finalists(rows: List[dict], prune: Callable[[dict], Pruned], read: Callable[[nn.Module], object],
                   target: float, path: Path, say: Callable[[str], None] = print,
                   wait: Callable[[float], None] = time.sleep) -> Optional[Pruned]:
    """prune.target=latency: the FINALISTS rows best by the proxy (a tie: the earlier), each pruned again
    (`prune(row)`) and read with the latency meter (`read(model)`: a Reading, latency/meter.py) by the latency
    rule's test (`passes`: PASS_READINGS clean readings at or above the latency speed-up `target`, a NOISY one
    taken again after a wait). Each finalist's readings go into its row ("latency") and
    candidates.jsonl. Returns the passing finalist best by the proxy, or None when none passed."""
    for row in rows:  # a killed search's readings are not carried over: its finalists may not be these
        row["latency"] = None
    finalists = sorted(rows, key=lambda r: (-r["proxy"], r["index"]))[:FINALISTS]
    winner: Optional[Pruned] = None
    for row in finalists:
        pruned = prune(row)
        taken: list = []
        passed = passes(lambda net=pruned.model: read(net), target, wait, taken) is True
        readings = [{"ratio": r.ratio, "q1": r.q1, "q3": r.q3, "noisy": r.noisy, "seconds": round(r.seconds, 3)}
                    for r in taken]
        row["latency"] = {"target": target, "speed_up": readings[-1]["ratio"], "reached": passed,
                          "readings": readings}
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        say(f"prune search: finalist #{row['index'] + 1} ({row['kind']}, proxy {row['proxy']:.4f}) measured latency "
            f"speed-up {readings[-1]['ratio']:.3f}x" + (" NOISY" if readings[-1]["noisy"] else "")
            + (f", reaches {target}x" if passed else f", short of {target}x" if not readings[-1]["noisy"] else ""))
        if passed and winner is None:
            winner = pruned
        del pruned
    return winner
