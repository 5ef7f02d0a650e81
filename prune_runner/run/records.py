"""Stage completion records, chained stage hashes, epoch checkpoints and the stage cache.

A stage is finished when `<run_dir>/<stage>/done.json` exists and the checkpoint it names still
has the SHA-256 it records. The record's hash covers what determines the stage's output:
  - the stage's own config keys (STAGE_KEYS),
  - the inputs behind paths: the dataset's fingerprint and the base checkpoint's SHA-256,
  - the environment that changes the numbers: world size (the batch is per rank) and precision,
  - the upstream record the stage actually consumed: its hash and its checkpoint's SHA-256.
So a stage whose upstream was redone, skipped or taken from another run gets another hash.

A stage writes its files into its own folder; the run directory (rundir.py) links them up to its
top. The stage cache keeps finished stages as immutable entries under `<out_root>/.stage_cache/`,
one folder per (stage, hash), whose files are hard links (or copies) of the stage folder's. Re-running
or overwriting the run that produced an entry replaces that run's files by rename, so the entry,
and every run that took its files from it, keeps the old content.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..config import STAGES, RunConfig
from ..errors import CheckpointError, RecordError, UserError
from .checkpoint import load_checkpoint, save_checkpoint
from .files import atomic_write_json, read_json
from .locks import wait_for

# records of format 1 hashed config text only, so nothing says whether their config is this one: a run dir
# holding one is refused like a changed config (RunDir.check), and resume=overwrite redoes it
RECORD_FORMAT = 2

# Config keys each stage depends on; upstream stages enter through the chained upstream record.
STAGE_KEYS: Dict[str, List[str]] = {
    "pretrain": ["model.name", "model.pretrained", "model.input_size", "dataset.name", "dataset.augment",
                 "dataset.train_limit", "schedule.pretrain", "seed"],
    "sparse_train": ["method.name", "method.reg", "method.reg_warmup", "method.alpha", "method.delta_reg",
                     "method.reg_update_every", "schedule.sparse_train", "seed"],
    "prune": ["method.name", "method.normalizer", "method.importance_batches", "prune", "seed"],
    "finetune": ["schedule.finetune", "seed"],
    "eval": ["eval", "export"],
}
TRAINING_STAGES = ("pretrain", "sparse_train", "finetune")  # their result depends on the world size
# options added after runs were recorded, left out of a stage's config while they hold the value that
# behaves as before they existed: the stages of those runs stay finished
UNHASHED_DEFAULTS = {"prune.target": "macs", "eval.latency_dtype": None}
NO_REGULARIZER = "skipped: the method has no regularizer"
RESULTS, EXPORT = "results.json", "export"  # eval's results (they name the run) and its exported models
# files (or folders) a stage writes into its own folder besides its checkpoint; the run dir links them up to
# its top (in this order: results name the exported files), and a cache entry keeps them, so a finished or
# reused stage can always put them back
ARTIFACTS: Dict[str, List[str]] = {"prune": ["sparsity.png", "candidates.jsonl", "search.png"],
                                   "eval": [EXPORT, RESULTS]}


@dataclass(frozen=True)
class StageInputs:
    """What a run's stages depend on beyond the config text."""

    dataset: str  # fingerprint of the data files (see Data.fingerprint)
    base_checkpoint: Optional[str]  # SHA-256 of the base_checkpoint file, None without one
    world_size: int
    amp: bool  # bf16 autocast
    device: str = ""  # the processor latency is measured on (latency_dtype.device_name)
    latency_dtype: str = "fp32"  # eval.latency_dtype, resolved for the device


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


def own_config(cfg: RunConfig, stage: str, has_regularizer: bool, inputs: StageInputs) -> dict:
    """Flat {key: value} of what `stage` itself depends on (upstream excluded)."""
    plain = asdict(cfg)
    own: dict = {}
    if stage == "sparse_train" and not has_regularizer:
        own["sparse_train"] = NO_REGULARIZER
    else:
        for key in STAGE_KEYS[stage]:
            _flatten(key, _select(plain, key), own)
    own["input.dataset"] = inputs.dataset
    if stage == "pretrain":
        own["input.base_checkpoint"] = inputs.base_checkpoint
    if stage in TRAINING_STAGES:
        own["env.world_size"] = inputs.world_size
    if stage == "prune":
        _prune_device_keys(cfg, inputs, own)
    for key, value in UNHASHED_DEFAULTS.items():
        if key in own and own[key] == value:
            del own[key]
    own["env.amp"] = inputs.amp
    return own


def _prune_device_keys(cfg: RunConfig, inputs: StageInputs, own: dict) -> None:
    """A latency target, and round_to=auto, make the pruned model depend on the device and the precision
    latency is measured in; the batch a latency target times matters to that target only."""
    if cfg.prune.target == "latency" or cfg.prune.round_to == "auto":
        own["env.device"], own["env.latency_dtype"] = inputs.device, inputs.latency_dtype
    if cfg.prune.target != "latency":
        own.pop("prune.latency_batch", None)
    # prune.allocation replaced method.global_pruning: uniform and global are hashed under the old key, so the
    # prune stages recorded before stay finished; the search's settings count only for a search
    if cfg.prune.allocation != "search":
        own.pop("prune.allocation", None)
        for key in [k for k in own if k.startswith("prune.search.")]:
            del own[key]
        own["method.global_pruning"] = cfg.prune.allocation == "global"


def chain(own: dict, upstream: Optional[dict]) -> dict:
    """The stage's full config: its own keys plus the upstream record it consumes (None: none)."""
    link = None if upstream is None else {"stage": upstream["stage"], "hash": upstream["hash"],
                                          "sha256": upstream["sha256"]}
    return {**own, "upstream": link}


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


def config_hash(stage_config: dict) -> str:
    return hashlib.sha256(json.dumps(stage_config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differing_keys(old: dict, new: dict) -> List[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def problem_with(record: dict) -> Optional[str]:
    """Why a completion record cannot be trusted, or None when its checkpoint is intact."""
    if record.get("format") != RECORD_FORMAT:
        return "it was written by an older prune-runner"
    path = Path(record["checkpoint"])
    try:
        size = path.stat().st_size
    except OSError:
        return f"its checkpoint {path} is missing"
    if size != record.get("size") or file_sha256(path) != record["sha256"]:
        return f"its checkpoint {path} is truncated or changed (checksum mismatch)"
    return None


def _link_file(src: str, dst: str) -> None:
    """A hard link where the filesystem allows, else a copy."""
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or one without hard links
        shutil.copyfile(src, dst)


def link_or_copy(src: Path, dst: Path) -> None:
    """Put `src`'s content (a file, or a folder of files) at `dst` atomically, its files hard-linked where
    the filesystem allows, else copied."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    if src.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, copy_function=_link_file)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
        return
    tmp.unlink(missing_ok=True)
    _link_file(str(src), str(tmp))
    os.replace(tmp, dst)


def same_files(a: Path, b: Path) -> bool:
    """Whether `b` already is `a`: the same file, or a folder of the same files (hard links)."""
    if a.is_dir() and b.is_dir():
        names = sorted(p.name for p in a.iterdir())
        return names == sorted(p.name for p in b.iterdir()) and all(same_files(a / n, b / n) for n in names)
    return a.is_file() and b.is_file() and os.path.samefile(a, b)


class StageDir:
    """Files of one stage: epoch checkpoints (last two kept), final checkpoint, done record, artifacts."""

    def __init__(self, run_dir: Path, stage: str):
        self.stage = stage
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / stage
        self.record_path = self.path / "done.json"
        self.checkpoint_path = self.path / "checkpoint.pt"

    def record(self) -> Optional[dict]:
        """The completion record, its checkpoint path made absolute (on disk it is relative to the run
        dir, so a run dir can be moved or copied whole)."""
        record = read_json(self.record_path)
        if record is not None and "checkpoint" in record:
            record["checkpoint"] = str((self.run_dir / record["checkpoint"]).resolve())
        return record

    def _write(self, record: dict) -> dict:
        on_disk = dict(record, checkpoint=os.path.relpath(record["checkpoint"], self.run_dir.resolve()))
        atomic_write_json(self.record_path, on_disk)
        return record

    def _record(self, stage_config: dict, checkpoint: Path, sha: str, size: int, metrics: dict, log: list,
                output: str) -> dict:
        return {"format": RECORD_FORMAT, "stage": self.stage, "hash": config_hash(stage_config), "config": stage_config,
                "checkpoint": str(Path(checkpoint).resolve()), "sha256": sha, "size": size, "metrics": metrics,
                "log": log, "output": output, "source": str(self.path.resolve())}

    def finish(self, payload: dict, stage_config: dict, metrics: dict, log: list) -> dict:
        """Write the final checkpoint, then the record: until the record is written the old one stands,
        and a record whose checkpoint does not match it is noticed (problem_with) and redone."""
        sha = save_checkpoint(self.checkpoint_path, payload)
        size = self.checkpoint_path.stat().st_size
        record = self._write(self._record(stage_config, self.checkpoint_path, sha, size, metrics, log, "own"))
        for f in self.path.glob("epoch_*"):
            f.unlink(missing_ok=True)
        return record

    def pass_through(self, upstream: dict, stage_config: dict, metrics: dict, log: list) -> dict:
        """Finish a stage whose output is its input model: the record points at the upstream checkpoint."""
        return self._write(self._record(stage_config, upstream["checkpoint"], upstream["sha256"], upstream["size"],
                                        metrics, log, "upstream"))

    def adopt(self, source: dict, source_dir: Path, stage_config: dict, upstream: Optional[dict]) -> dict:
        """Take a finished stage from the cache or another run: its files are linked or copied in, so
        this run keeps them whatever later happens to the source."""
        if source["output"] == "own":
            link_or_copy(Path(source_dir) / "checkpoint.pt", self.checkpoint_path)
            checkpoint = self.checkpoint_path
        else:
            checkpoint = Path(upstream["checkpoint"])
        for name in ARTIFACTS.get(self.stage, []):
            if (Path(source_dir) / name).exists():
                link_or_copy(Path(source_dir) / name, self.path / name)
        record = dict(self._record(stage_config, checkpoint, source["sha256"], source["size"], source["metrics"],
                                   source.get("log", []), source["output"]), reused_from=source["source"])
        return self._write(record)

    def artifacts(self) -> Dict[str, Path]:
        """name -> path of the files this stage wrote into its folder besides its checkpoint."""
        return {name: self.path / name for name in ARTIFACTS.get(self.stage, []) if (self.path / name).exists()}

    def remove_temp_files(self) -> None:
        for f in self.path.glob(".*.tmp"):
            if f.is_dir():
                shutil.rmtree(f, ignore_errors=True)
            else:
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
            except (CheckpointError, RecordError) as err:
                warn(f"{err}; falling back to the previous epoch checkpoint")
        return None


class StageCache:
    """<root>/<stage>-<hash>/: done.json plus the stage's files, immutable once written."""

    def __init__(self, root: Path, warn: Callable[[str], None] = lambda text: None):
        self.root = Path(root)
        self.warn = warn

    def entry(self, stage: str, stage_hash: str) -> Path:
        return self.root / f"{stage}-{stage_hash}"

    def lookup(self, stage: str, stage_hash: str) -> Optional[tuple]:
        """(record, entry folder) of an intact entry; a damaged entry is named and dropped."""
        folder = self.entry(stage, stage_hash)
        if not folder.is_dir():
            return None
        try:
            record = read_json(folder / "done.json")
            if record is None or record.get("hash") != stage_hash:
                raise RecordError(f"stage cache entry {folder} has no record of this config")
            if record["output"] == "own":
                problem = problem_with(dict(record, checkpoint=str(folder / "checkpoint.pt")))
                if problem:
                    raise RecordError(f"stage cache entry {folder} is damaged: {problem}")
        except (RecordError, KeyError) as err:
            self.warn(f"{err}; it is dropped and the stage is computed again")
            self._drop(folder)
            return None
        return record, folder

    def add(self, stage: str, stage_hash: str, stage_dir: StageDir, record: dict) -> None:
        """Store a finished stage: built in a temp folder, then renamed into place (first writer wins)."""
        folder = self.entry(stage, stage_hash)
        if folder.is_dir():
            return
        self._remove_stale_temp()
        tmp = self.root / f".{folder.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if record["output"] == "own":
            link_or_copy(stage_dir.checkpoint_path, tmp / "checkpoint.pt")
        for name, path in stage_dir.artifacts().items():
            link_or_copy(path, tmp / name)
        atomic_write_json(tmp / "done.json", record)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process stored the same stage first
            shutil.rmtree(tmp, ignore_errors=True)

    def hold(self, stage: str, stage_hash: str, on_wait: Callable[[str], None]):
        """Lock one entry while computing it, so concurrent runs of one config compute it once."""
        return wait_for(self.root / f".{stage}-{stage_hash}.lock", on_wait)

    def _drop(self, folder: Path) -> None:
        trash = folder.with_name(f".{folder.name}-dropped.{os.getpid()}.tmp")
        try:
            os.rename(folder, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _remove_stale_temp(self) -> None:
        """Temp folders of processes that no longer exist (killed while storing an entry)."""
        for tmp in self.root.glob(".*.tmp"):
            pid = tmp.name.split(".")[-2] if tmp.name.count(".") >= 3 else ""
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["STAGES", "StageCache", "StageDir", "StageInputs", "chain", "config_hash", "own_config"]
