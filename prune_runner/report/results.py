"""results.json (the run's summary, read by prune-report) and its console table."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Dict

import torch
from rich.console import Console
from rich.table import Table

from .. import __version__
from ..config import STAGES, RunConfig
from ..latency.device import cpu_name


def _latency_summary(latency: dict | None) -> dict | None:
    """Per batch size (string keys): medians in ms, the median base/final ratio of interleaved
    repetitions as `speed_up`, its interquartile range and whether that range is too wide to trust."""
    if not latency:
        return None
    out = {"device": latency["device"], "device_name": latency.get("device_name"), "dtype": latency.get("dtype"),
           "batch_sizes": latency["batch_sizes"], "method": "interleaved",
           "max_spread": latency["max_spread"], "base": {}, "final": {}, "speed_up": {}, "speed_up_iqr": {},
           "spread": {}, "noisy": {}}
    for bs in latency["batch_sizes"]:
        key, m = str(bs), latency["compare"][bs]
        out["base"][key] = {"ms": m["base_ms"], "ms_per_image": m["base_ms"] / bs}
        out["final"][key] = {"ms": m["final_ms"], "ms_per_image": m["final_ms"] / bs}
        out["speed_up"][key] = m["ratio"]
        out["speed_up_iqr"][key] = [m["ratio_q1"], m["ratio_q3"]]
        out["spread"][key] = m["spread"]
        out["noisy"][key] = bool(m["noisy"])
    return out


def chance_threshold(num_classes: int) -> float:
    """Top-1 accuracy below which a model has learned (next to) nothing: twice chance, and for few
    classes at most halfway from chance to perfect (2 classes: 0.75)."""
    chance = 1.0 / num_classes
    return min(2 * chance, (1 + chance) / 2)


def chance_warning(acc: float, num_classes: int, what: str, hint: str) -> str | None:
    """One line when `acc` is at chance level, else None."""
    if acc >= chance_threshold(num_classes):
        return None
    return (f"warning: {what} accuracy {100 * acc:.1f}% is at chance level ({100 / num_classes:.1f}% for "
            f"{num_classes} classes): the model did not learn; {hint}")


def _setup(cfg: RunConfig, records: Dict[str, dict]) -> dict:
    """What besides the seed makes this run's numbers what they are, for prune-report's grouping: the config
    every stage up to fine-tuning depended on (the stage hashes' inputs, seed left out), the stages that made
    the model (a skipped sparse_train counts), the base checkpoint and the run it resumed from."""
    not_run = [s for s in STAGES[:-1] if s not in records]  # not selected (stages=[...]); a skip is a record
    # each stage's own config and inputs; the seed and the link to the upstream record (whose hash and
    # checkpoint depend on the seed) left out, so that the seeds of one setup share its key
    seeded = ("seed", "upstream", "finetune.distill.teacher_sha256")
    config = {stage: {k: v for k, v in records[stage].get("config", {}).items() if k not in seeded}
              for stage in STAGES[:-1] if stage in records}
    text = json.dumps({"config": config, "not_run": not_run}, sort_keys=True, default=str)
    return {"key": hashlib.sha256(text.encode()).hexdigest()[:12], "stages_not_run": not_run,
            "base_checkpoint": cfg.base_checkpoint, "resume_from": cfg.resume_from}


def build_results(cfg: RunConfig, records: Dict[str, dict], final: dict, latency: dict | None, *, run_dir: Path,
                  overrides: str, device: torch.device, world_size: int) -> dict:
    """results.json: the stages' records (pretrain and prune metrics), the final metrics, eval's latency
    comparison (None: not measured) and where the run ran."""
    base = records["pretrain"]["metrics"]
    pruned = records["prune"]["metrics"]
    return {
        "run_dir": str(run_dir),
        "choices": {"dataset": cfg.dataset.name, "model": cfg.model.name, "method": cfg.method.name},
        "overrides": overrides,
        "seed": cfg.seed,
        "setup": _setup(cfg, records),
        "base": {k: base[k] for k in ("acc", "macs", "params")},
        "pruned": {k: pruned[k] for k in ("acc", "acc_before_bn_recal", "macs", "params") if k in pruned},
        "final": {k: final[k] for k in ("acc", "macs", "params")},
        "acc_delta": final["acc"] - base["acc"],
        "target_speed_up": cfg.prune.speed_up,
        "target": target_summary(cfg, pruned),  # what the target measured: MACs, or latency at a batch
        "speed_up": base["macs"] / final["macs"],
        "params_ratio": final["params"] / base["params"],
        "prune_steps": pruned.get("steps"),
        "round_to": pruned.get("round_to"),  # the channel multiple pruned to, prune.round_to=auto resolved
        "latency": _latency_summary(latency),
        # prune.allocation=search only: candidate count, the winner's proxy and the default allocations'
        **({"search": pruned["search"]} if "search" in pruned else {}),
        "provenance": {"torch": torch.__version__, "torch_pruning": importlib.metadata.version("torch-pruning"),
                       "prune_runner": __version__, "python": platform.python_version(),
                       "device": str(device), "cpu": cpu_name(), "world_size": world_size,
                       "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                       **({"timm": importlib.metadata.version("timm")} if cfg.model.name.startswith("timm/") else {})},
    }


def print_results(console: Console, r: dict) -> None:
    c = r["choices"]
    table = Table(title=f"{c['model']} / {c['method']} on {c['dataset']} (seed {r['seed']})")
    for col in ("", "top-1 acc", "MACs (M)", "params (M)"):
        table.add_column(col, justify="right")
    for name in ("base", "pruned", "final"):
        m = r[name]
        label = {"pruned": "pruned, before fine-tuning"}.get(name, name)
        if name == "pruned" and "acc_before_bn_recal" in m:  # the stale-BN accuracy shows what recalibration did
            table.add_row("pruned, stale BN statistics", f"{100 * m['acc_before_bn_recal']:.2f}%",
                          f"{m['macs'] / 1e6:.2f}", f"{m['params'] / 1e6:.3f}")
            label = "pruned, BN recalibrated"
        table.add_row(label, f"{100 * m['acc']:.2f}%", f"{m['macs'] / 1e6:.2f}", f"{m['params'] / 1e6:.3f}")
    console.print(table)
    target = r.get("target") or {"kind": "macs"}
    line = (f"accuracy delta {100 * r['acc_delta']:+.2f} pp, MACs speed-up {r['speed_up']:.2f}x"
            + (f" (target {r['target_speed_up']}x)" if target["kind"] == "macs" else "")
            + f", params x{r['params_ratio']:.3f}")
    lat = r.get("latency")
    if lat:
        parts = [_latency_part(lat, str(bs)) for bs in lat["batch_sizes"]]
        where = ", ".join(x for x in (lat["device"], lat.get("dtype")) if x)
        line += f"; measured latency speed-up ({where}, median, IQR) " + ", ".join(parts)
    if target["kind"] == "latency":
        line += f"; {target_line(target)}"
    console.print(line)
    if lat and any(lat.get("noisy", {}).values()):
        console.print(f"[yellow]latency: a spread marked NOISY is wider than {100 * lat['max_spread']:.0f}% of its "
                      "median: the machine was busy; rerun on an idle machine or raise eval.latency_repeats[/yellow]")


def target_summary(cfg: RunConfig, pruned: dict) -> dict:
    """The prune target: MACs, or latency at a batch, with what the prune stage measured when it stopped and how
    the stop was decided ("confirmed clean", or "fallback to prediction": readings too noisy to confirm)."""
    if cfg.prune.target != "latency":
        return {"kind": "macs", "speed_up": cfg.prune.speed_up}
    lat = pruned.get("latency") or {}
    return {"kind": "latency", "speed_up": cfg.prune.speed_up, "batch": cfg.prune.latency_batch,
            **{k: lat.get(k) for k in ("device", "device_name", "dtype", "speed_up_iqr", "noisy", "measurements",
                                       "measure_s", "prune_s", "predicted_macs_speed_up")},
            "decided": lat.get("decided", "confirmed clean"),  # records from before the field: confirmed stops
            "reached": lat.get("speed_up")}


def target_line(t: dict) -> str:
    """One line on a latency target: what the prune stage measured when it stopped, and how it decided."""
    where = f"latency target {t['speed_up']}x at batch {t['batch']} ({t.get('device')}, {t.get('dtype')}): "
    cost = f"({t.get('measurements')} measurements, {t.get('measure_s') or 0:.1f} s)"
    if t.get("reached") is None:  # a fallback: no clean reading confirmed the stop
        predicted = t.get("predicted_macs_speed_up") or float("nan")
        return (where + f"{t.get('decided')}, at the {predicted:.2f}x MACs speed-up the clean readings predict "
                + cost + " NOISY")
    iqr = t.get("speed_up_iqr") or [float("nan")] * 2
    return (where + f"{t['reached']:.2f}x [{iqr[0]:.2f}-{iqr[1]:.2f}] when pruning stopped, "
            f"{t.get('decided', 'confirmed clean')} {cost}" + (" NOISY" if t.get("noisy") else ""))


def _latency_part(lat: dict, key: str) -> str:
    text = f"batch {key}: {lat['speed_up'][key]:.2f}x"
    iqr = lat.get("speed_up_iqr", {}).get(key)
    if iqr:  # results.json of older runs have no spread
        text += f" [{iqr[0]:.2f}-{iqr[1]:.2f}]"
    if lat.get("noisy", {}).get(key):
        text += " NOISY"
    return text
