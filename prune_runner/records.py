"""Stage completion records, config hashes, epoch checkpoints and the stage cache.

A stage is finished when `<run_dir>/<stage>/done.json` exists; the record holds the
hash of the config that affects the stage and everything upstream, the checkpoint's
path and SHA-256, and the stage's metrics. The same hash keys the stage cache, so
another run whose upstream config is identical reuses the output by reference.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

from .checkpoint import atomic_write_json, load_checkpoint, read_json, save_checkpoint
from .config import STAGES, RunConfig
from .errors import CheckpointError, UserError

# Config keys each stage depends on (its own; upstream keys are chained in by the hash).
STAGE_KEYS: Dict[str, List[str]] = {
    "pretrain": ["model.name", "model.pretrained", "model.input_size", "dataset.name", "dataset.augment",
                 "dataset.train_limit", "schedule.pretrain", "seed", "base_checkpoint"],
    "sparse_train": ["method.name", "method.reg", "method.reg_warmup", "method.alpha", "method.delta_reg",
                     "method.reg_update_every", "schedule.sparse_train"],
    "prune": ["method.name", "method.global_pruning", "method.normalizer", "method.calib_batches", "prune"],
    "finetune": ["schedule.finetune"],
    "eval": ["eval", "export"],
}
NO_REGULARIZER = {"sparse_train": "skipped: the method has no regularizer"}


def _select(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = value


def stage_config(cfg: RunConfig, stage: str, has_regularizer: bool, first_stage: str = STAGES[0],
                 upstream_hash: Optional[str] = None) -> dict:
    """Flat {key: value} of what `stage` depends on, upstream stages included.

    With resume_from, the stages before `first_stage` come from another run: they
    enter as that run's stage hash (`upstream_hash`) instead of their keys.
    """
    plain = asdict(cfg)
    flat: dict = {"upstream": upstream_hash} if upstream_hash else {}
    for name in STAGES[STAGES.index(first_stage): STAGES.index(stage) + 1]:
        if name == "sparse_train" and not has_regularizer:
            flat["sparse_train"] = NO_REGULARIZER["sparse_train"]
            continue
        for key in STAGE_KEYS[name]:
            _flatten(key, _select(plain, key), flat)
    return flat


def teacher_record(records: Dict[str, dict]) -> dict:
    """The unpruned model that fine-tuning distills from: sparse_train's output, else pretrain's."""
    for stage in ("sparse_train", "pretrain"):
        if records.get(stage) is not None:
            return records[stage]
    raise UserError("distillation needs the unpruned model, but neither sparse_train nor pretrain has a "
                          "record in this run; add them to stages=[...] or use resume_from=<run_dir>/<stage>")


def teacher_key(cfg: RunConfig, records: Dict[str, dict]) -> dict:
    """The finetune stage's hash entry for its teacher when distilling: the teacher checkpoint's SHA-256
    (None while the teacher stage has not finished; the entry is filled in before fine-tuning runs)."""
    if cfg.schedule.finetune.distill.alpha <= 0:
        return {}
    known = [records.get(s) for s in ("sparse_train", "pretrain") if records.get(s) is not None]
    return {"finetune.distill.teacher_sha256": known[0]["sha256"] if known else None}


def config_hash(flat: dict) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differing_keys(old: dict, new: dict) -> List[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


class StageDir:
    """Files of one stage: epoch checkpoints (last two kept), final checkpoint, done record."""

    def __init__(self, run_dir: Path, stage: str):
        self.stage = stage
        self.path = Path(run_dir) / stage
        self.record_path = self.path / "done.json"
        self.checkpoint_path = self.path / "checkpoint.pt"

    def record(self) -> Optional[dict]:
        return read_json(self.record_path)

    def finish(self, payload: dict, flat: dict, metrics: dict, keep_epochs: bool = False) -> dict:
        sha = save_checkpoint(self.checkpoint_path, payload)
        record = {"stage": self.stage, "hash": config_hash(flat), "config": flat, "checkpoint": str(
            self.checkpoint_path.resolve()), "sha256": sha, "metrics": metrics}
        atomic_write_json(self.record_path, record)
        if not keep_epochs:
            for f in self.path.glob("epoch_*"):
                f.unlink(missing_ok=True)
        return record

    def reuse(self, source: dict, flat: dict, source_dir: str) -> dict:
        """Record a finished stage of another run as ours, by reference (its files stay read-only)."""
        record = dict(source, config=flat, reused_from=source_dir)
        atomic_write_json(self.record_path, record)
        return record

    def pass_through(self, upstream: dict, flat: dict, metrics: dict, write: bool = True) -> dict:
        """Finish a stage whose output is its input model: the record points at the upstream checkpoint."""
        record = {"stage": self.stage, "hash": config_hash(flat), "config": flat, "checkpoint": upstream["checkpoint"],
                  "sha256": upstream["sha256"], "metrics": metrics}
        if write:  # rank 0 only under DDP
            atomic_write_json(self.record_path, record)
        return record

    def clear(self) -> None:
        for f in list(self.path.glob("epoch_*")) + [self.record_path, self.checkpoint_path]:
            f.unlink(missing_ok=True)

    # -- epoch checkpoints -------------------------------------------------
    def save_epoch(self, epoch: int, payload: dict, stage_hash: str) -> None:
        sha = save_checkpoint(self.path / f"epoch_{epoch:04d}.pt", {**payload, "epoch": epoch,
                                                                    "stage_hash": stage_hash})
        atomic_write_json(self.path / f"epoch_{epoch:04d}.json", {"sha256": sha, "hash": stage_hash})
        for old in sorted(self.path.glob("epoch_*.pt"))[:-2]:  # keep the last two: a fallback if one is torn
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)

    def latest_epoch(self, stage_hash: str, warn) -> Optional[dict]:
        """Newest intact epoch checkpoint of this config; a corrupt one is named and skipped."""
        for pt in sorted(self.path.glob("epoch_*.pt"), reverse=True):
            try:
                meta = read_json(pt.with_suffix(".json"))
                if meta is None:
                    raise CheckpointError(f"checkpoint {pt} has no checksum record (interrupted while saving)")
                if meta.get("hash") != stage_hash:
                    continue
                return load_checkpoint(pt, expected_sha=meta["sha256"])
            except CheckpointError as err:
                warn(f"{err}; falling back to the previous epoch checkpoint")
        return None


class StageCache:
    """<out_root>/.stage_cache/<stage>-<hash>.json -> the stage folder that produced it."""

    def __init__(self, root: Path):
        self.root = Path(root) / ".stage_cache"

    def lookup(self, stage: str, stage_hash: str) -> Optional[tuple]:
        entry = read_json(self.root / f"{stage}-{stage_hash}.json")
        if not entry:
            return None
        try:
            record = read_json(Path(entry["stage_dir"]) / "done.json")
        except CheckpointError:
            return None
        if not record or record.get("hash") != stage_hash or not Path(record["checkpoint"]).exists():
            return None
        return record, entry["stage_dir"]

    def add(self, stage: str, stage_hash: str, stage_dir: Path) -> None:
        atomic_write_json(self.root / f"{stage}-{stage_hash}.json", {"stage_dir": str(Path(stage_dir).resolve())})
