"""results.json (the run's summary, read by prune-report) and its console table."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform

import torch
from rich.console import Console
from rich.table import Table

from . import __version__
from .config import STAGES
from .provenance import cpu_name


def _latency_summary(latency: dict | None) -> dict | None:
    if not latency:
        return None
    out = {"device": latency["device"], "batch_sizes": latency["batch_sizes"], "base": {}, "final": {},
           "speed_up": {}}
    for bs in latency["batch_sizes"]:
        key = str(bs)
        base, final = (latency[which][bs] for which in ("base", "final"))
        out["base"][key] = {"ms": base["ms_per_batch"], "ms_per_image": base["ms_per_image"]}
        out["final"][key] = final = {"ms": final["ms_per_batch"], "ms_per_image": final["ms_per_image"]}
        base = out["base"][key]
        out["speed_up"][key] = base["ms"] / final["ms"] if final["ms"] > 0 else None
    return out


def _setup(state) -> dict:
    """What besides the seed makes this run's numbers what they are, for prune-report's grouping: the config
    every stage up to fine-tuning depended on (the stage hashes' inputs, seed left out), the stages that made
    the model (a skipped sparse_train counts), the base checkpoint and the run it resumed from."""
    cfg, records = state.cfg, state.records
    not_run = [s for s in STAGES[:-1] if s not in records]  # not selected (stages=[...]); a skip is a record
    # each stage's own config and inputs; the seed and the link to the upstream record (whose hash and
    # checkpoint depend on the seed) left out, so that the seeds of one setup share its key
    config = {stage: {k: v for k, v in records[stage].get("config", {}).items() if k not in ("seed", "upstream")}
              for stage in STAGES[:-1] if stage in records}
    text = json.dumps({"config": config, "not_run": not_run}, sort_keys=True, default=str)
    return {"key": hashlib.sha256(text.encode()).hexdigest()[:12], "stages_not_run": not_run,
            "base_checkpoint": cfg.base_checkpoint, "resume_from": cfg.resume_from}


def build_results(state, final: dict, latency: dict | None) -> dict:
    cfg, records = state.cfg, state.records
    base = records["pretrain"]["metrics"]
    pruned = records["prune"]["metrics"]
    return {
        "run_dir": str(state.run_dir),
        "choices": {"dataset": cfg.dataset.name, "model": cfg.model.name, "method": cfg.method.name},
        "overrides": state.overrides,
        "seed": cfg.seed,
        "setup": _setup(state),
        "base": {k: base[k] for k in ("acc", "macs", "params")},
        "pruned": {k: pruned[k] for k in ("acc", "macs", "params")},
        "final": {k: final[k] for k in ("acc", "macs", "params")},
        "acc_delta": final["acc"] - base["acc"],
        "target_speed_up": cfg.prune.speed_up,
        "speed_up": base["macs"] / final["macs"],
        "params_ratio": final["params"] / base["params"],
        "prune_steps": pruned.get("steps"),
        "latency": _latency_summary(latency),
        "provenance": {"torch": torch.__version__, "torch_pruning": importlib.metadata.version("torch-pruning"),
                       "prune_runner": __version__, "python": platform.python_version(),
                       "device": str(state.device), "cpu": cpu_name(), "world_size": state.dist.world_size,
                       "gpu": torch.cuda.get_device_name(state.device) if state.device.type == "cuda" else None},
    }


def print_results(console: Console, r: dict) -> None:
    c = r["choices"]
    table = Table(title=f"{c['model']} / {c['method']} on {c['dataset']} (seed {r['seed']})")
    for col in ("", "top-1 acc", "MACs (M)", "params (M)"):
        table.add_column(col, justify="right")
    for name in ("base", "pruned", "final"):
        m = r[name]
        label = {"pruned": "pruned, before fine-tuning"}.get(name, name)
        table.add_row(label, f"{100 * m['acc']:.2f}%", f"{m['macs'] / 1e6:.2f}", f"{m['params'] / 1e6:.3f}")
    console.print(table)
    line = (f"accuracy delta {100 * r['acc_delta']:+.2f} pp, MACs speed-up {r['speed_up']:.2f}x "
            f"(target {r['target_speed_up']}x), params x{r['params_ratio']:.3f}")
    lat = r.get("latency")
    if lat:
        parts = [f"batch {bs}: {lat['speed_up'][str(bs)]:.2f}x" for bs in lat["batch_sizes"]]
        line += f"; measured latency speed-up ({lat['device']}) " + ", ".join(parts)
    console.print(line)
