"""The run directory's one owner: what a run restores, and everything it writes there.

The pipeline asks `RunDir`, stage by stage, what to do, and tells it when a stage has finished:
  check()                 before anything is written: refuses a run dir whose finished stages were made with
                          another config, reads the stages resume_from names, and clears a killed run's temp files;
  resolve(stage)          done (finished here with this config), reused (from the stage cache, or from the
                          run resume_from names), skipped (not selected, or sparse_train of a method without
                          a regularizer) or run. A reused stage's files are adopted into its folder, and a
                          finished stage's files are linked up to the top of the run dir;
  commit(stage, payload, metrics)  the stage's checkpoint, record and cache entry, its files linked up.
A stage writes its files into its own folder; the top of the run dir holds links to them (results.json,
which names the run, is written for it). Under DDP rank 0 does the file I/O and broadcasts each answer
once; the other ranks read only that answer (and, to resume a stage, its last epoch checkpoint).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Dict, List, Optional

from ..config import STAGES
from ..errors import RecordError, UserError
from .distributed import broadcast_object, on_main
from .files import atomic_write_json, read_json
from .records import (
    EXPORT,
    RECORD_FORMAT,
    RESULTS,
    StageCache,
    StageDir,
    StageInputs,
    chain,
    config_hash,
    differing_keys,
    link_or_copy,
    own_config,
    problem_with,
    same_files,
    teacher_key,
)
from .stages import MAIN_ONLY, StageRun
from .state import RunState

# keys that name upstream content (a checkpoint's hash), not the user's config: a change is redone, not refused
CHAINED_KEYS = ("upstream", "finetune.distill.teacher_sha256")
# results a stage reads besides its input model: without them it cannot run
NEEDS: Dict[str, tuple] = {"eval": ("pretrain", "prune")}


class Action(str, Enum):
    DONE = "done"  # finished in this run dir with this config
    REUSED = "reused"  # taken from the stage cache, or from the run resume_from names
    SKIPPED = "skipped"  # not selected (no record), or passed through: sparse_train without a regularizer
    RUN = "run"  # to compute: the stage function gets `Step.run`, then RunDir.commit


@dataclass
class Step:
    """RunDir's answer for one stage, the same on every rank."""

    stage: str
    action: Action
    config: dict  # what the stage depends on, the upstream record it consumes included
    hash: str
    record: Optional[dict] = None  # the finished stage's record; None while it is to run, or not selected
    run: Optional[StageRun] = None  # RUN only: the stage's folder, config, hash and epoch checkpoint to resume


class RunDir:
    """Decides what a run restores, restores it, and writes every stage's results (see the module's doc)."""

    def __init__(self, state: RunState, inputs: StageInputs):
        self.state, self.cfg, self.dist, self.path = state, state.cfg, state.dist, Path(state.run_dir)
        self.inputs = inputs
        self.has_regularizer = state.spec.regularizer is not None
        self.cache = StageCache(Path(self.cfg.out_root) / ".stage_cache", warn=state.warn) if self.cfg.cache else None
        self.ran: List[str] = []  # the stages computed by this invocation
        self._upstream: Dict[str, dict] = {}  # stage -> its record in the run resume_from names
        self._consumed: Optional[dict] = None  # the record whose model the next stage starts from
        self._running: Optional[Step] = None  # the stage between resolve and commit
        self._held = ExitStack()  # the cache entry this process is computing, until commit (or an error)
        self._config_written = False

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self._held.close()

    # -- check ---------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Before anything is written: a finished stage whose own config changed (or whose record is of an
        older format) is refused, unless resume=overwrite; resume_from's stages must be finished and intact."""
        self._upstream = on_main(self.dist, self._checked_upstream)
        if self.dist.is_main:
            for stage in STAGES:
                StageDir(self.path, stage).remove_temp_files()  # left by a killed run; this process holds the lock
        self.state.say(f"run dir: {self.path}")
        if self.cache is not None:
            self.state.say(f"stage cache: {self.cache.root.resolve()}")

    def _checked_upstream(self) -> Dict[str, dict]:
        upstream = self._resume_from()
        if self.cfg.resume != "overwrite":
            for stage in STAGES:
                if stage not in upstream:
                    self._refuse_changed(stage)
        return upstream

    def _resume_from(self) -> Dict[str, dict]:
        """resume_from=<run_dir>/<stage>: that stage's record and its upstream records, each intact."""
        if not self.cfg.resume_from:
            return {}
        src = Path(self.cfg.resume_from)
        if src.name not in STAGES:
            raise UserError(f"resume_from={src} must end in a stage folder: one of {', '.join(STAGES)}")
        records = {}
        for stage in STAGES[: STAGES.index(src.name) + 1]:
            record = StageDir(src.parent, stage).record()
            if record is None:
                raise UserError(f"resume_from={src}: stage '{stage}' is not finished there")
            problem = problem_with(record)
            if problem:
                raise UserError(f"resume_from={src}: stage '{stage}' cannot be used: {problem}; re-run that run first")
            records[stage] = record
        return records

    def _refuse_changed(self, stage: str) -> None:
        try:
            record = StageDir(self.path, stage).record()
        except RecordError:
            return  # unreadable: redone with a warning when the run gets there
        if record is None:
            return
        if record.get("format") != RECORD_FORMAT:
            raise UserError(f"{stage} in {self.path} was finished by an older prune-runner; add resume=overwrite "
                            "to redo it, or choose another run_dir")
        old = {k: v for k, v in record.get("config", {}).items() if k not in CHAINED_KEYS}
        keys = differing_keys(old, own_config(self.cfg, stage, self.has_regularizer, self.inputs))
        if keys:
            raise UserError(f"{stage} in {self.path} was finished with another config (differs in: "
                            f"{', '.join(keys)}); add resume=overwrite to redo it, or choose another run_dir")

    # -- resolve -------------------------------------------------------------------------------------------
    def resolve(self, stage: str) -> Step:
        """What to do with `stage`; a finished (done, reused, passed-through) stage is in place on return."""
        step = on_main(self.dist, lambda: self._decide(stage))
        if step.action is Action.RUN:
            self._check_inputs(stage)
            step = self._claim(step)
        if step.record is not None:  # a passed-through stage's output is the model already in hand
            self.state.keep(stage, step.record, load=step.action is not Action.SKIPPED)
            self._consumed = step.record
        if step.action is Action.RUN:
            step.run = self._start(step)
        return step

    def _decide(self, stage: str) -> Step:
        """Rank 0: the decision, with a finished stage adopted and published."""
        if stage in self._upstream:  # taken from another run as is
            source = Path(self.cfg.resume_from).parent / stage
            record = self._adopt(stage, self._upstream[stage], source, self._upstream[stage]["config"])
            self.state.say(f"{stage}: from {source}")
            return Step(stage, Action.REUSED, record["config"], record["hash"], record)
        own = own_config(self.cfg, stage, self.has_regularizer, self.inputs)
        if stage == "finetune":
            own.update(teacher_key(self.cfg, self.state.records))  # the teacher stage has finished by now
        config = chain(own, self._consumed)
        step = Step(stage, Action.RUN, config, config_hash(config))
        stage_dir = StageDir(self.path, stage)
        record = self._finished(stage_dir, step.hash)
        if record is not None:
            self._publish(stage_dir, record)
            self.state.say(f"{stage}: finished earlier, skipped")
            return replace(step, action=Action.DONE, record=record)
        if stage not in self.cfg.stages:
            return replace(step, action=Action.SKIPPED)
        if stage == "sparse_train" and not self.has_regularizer:
            metrics = {**self._consumed["metrics"], "skipped": "no regularizer"}
            record = stage_dir.pass_through(self._consumed, config, metrics, [])
            self._publish(stage_dir, record, new=True)
            self.state.say(f"{stage}: skipped ({self.cfg.method.name} has no regularizer)")
            return replace(step, action=Action.SKIPPED, record=record)
        hit = self.cache.lookup(stage, step.hash) if self.cache is not None else None
        return step if hit is None else self._reuse(step, *hit)

    def _finished(self, stage_dir: StageDir, stage_hash: str) -> Optional[dict]:
        """The stage's intact record of this config in this run dir, else None (saying why)."""
        stage = stage_dir.stage
        try:
            record = stage_dir.record()
        except RecordError as err:
            self.state.warn(f"{stage}: {err}; computing the stage again")
            return None
        if record is not None and record.get("hash") == stage_hash:
            problem = problem_with(record)
            if problem is None:
                return record
            self.state.warn(f"{stage}: the finished stage cannot be used: {problem}; computing it again")
        elif record is not None and self.cfg.resume == "auto" and stage in self.cfg.stages:
            self.state.say(f"{stage}: its upstream stage changed; computing it again")
        return None

    def _reuse(self, step: Step, entry_record: dict, entry: Path) -> Step:
        record = self._adopt(step.stage, entry_record, entry, step.config)
        self.state.say(f"{step.stage}: reused from {record['reused_from']}")
        return replace(step, action=Action.REUSED, record=record)

    def _adopt(self, stage: str, source: dict, source_dir: Path, config: dict) -> dict:
        """A stage finished elsewhere, linked into this run's stage folder and published."""
        stage_dir = StageDir(self.path, stage)
        record = stage_dir.adopt(source, source_dir, config, self._consumed)
        self._publish(stage_dir, record, new=True)
        return record

    def _check_inputs(self, stage: str) -> None:
        """A stage that needs the result of a stage this run neither has nor runs: one line, not a KeyError."""
        missing = [s for s in NEEDS.get(stage, ()) if s not in self.state.records]
        if missing:
            raise UserError(f"stage '{stage}' needs the results of {', '.join(missing)}: add them to stages=[...] "
                            "(stages always run in the order " + ", ".join(STAGES) + ")")

    def _claim(self, step: Step) -> Step:
        """Rank 0 holds the cache entry of the stage it computes, until commit: a concurrent run of the same
        config waits here, then reuses the entry. Under DDP no one waits (every rank must take one path)."""
        if self.cache is None or self.dist.enabled:
            return step
        self._held.enter_context(self.cache.hold(step.stage, step.hash, lambda pid: self.state.say(
            f"{step.stage}: process {pid} is computing the same stage; waiting for it")))
        hit = self.cache.lookup(step.stage, step.hash)  # stored meanwhile by the run this one waited for
        if hit is None:
            return step
        self._held.close()
        return self._reuse(step, *hit)

    def _start(self, step: Step) -> StageRun:
        """The stage to compute, from its last intact epoch checkpoint of this config (resume=auto)."""
        stage_dir = StageDir(self.path, step.stage)
        resume = None
        if self.cfg.resume == "auto":
            resume = stage_dir.latest_epoch(step.hash, warn=self.state.warn)
        if self.dist.is_main:
            self.state.log.drop_from(step.stage, 0 if resume is None else resume["epoch"] + 1)  # logged again
        self.state.say(f"[bold]{step.stage}[/bold]")
        self._running = step
        return StageRun(step.stage, stage_dir, step.config, step.hash, resume)

    # -- commit --------------------------------------------------------------------------------------------
    def commit(self, stage: str, payload: Optional[dict], metrics: Optional[dict]) -> dict:
        """Rank 0 writes the stage's checkpoint (payload None: its output is its input model) and record,
        stores it in the cache and links its files up; every rank then continues from rank 0's record (the
        broadcast is the barrier under DDP)."""
        step, self._running = self._running, None
        if step is None or step.stage != stage:
            raise RuntimeError(f"commit({stage}) without resolve({stage}) having said to run it")
        record = None
        if self.dist.is_main:
            stage_dir, log = step.run.dir, self.state.log.rows(stage)
            if payload is None:
                record = stage_dir.pass_through(self._consumed, step.config, metrics, log)
            else:
                record = stage_dir.finish(payload, step.config, metrics, log)
            if self.cache is not None:
                self.cache.add(stage, step.hash, stage_dir, record)
            self._held.close()
            self._publish(stage_dir, record, new=True)
        record = broadcast_object(self.dist, record)
        # under DDP a stage computed on rank 0 alone is loaded by every rank, so all hold one model
        self.state.keep(stage, record, load=stage in MAIN_ONLY and self.dist.enabled)
        self._consumed = record
        self.ran.append(stage)
        return record

    # -- the top of the run dir ------------------------------------------------------------------------------
    def _publish(self, stage_dir: StageDir, record: dict, new: bool = False) -> None:
        """Rank 0: a finished stage's rows and files at the top of the run dir, as if it had just run here.
        `new`: the stage was written by this invocation, so config.json records the config it came from."""
        self.state.log.replace_stage(stage_dir.stage, record.get("log", []))
        for name, kept in stage_dir.artifacts().items():
            top = self.path / name
            if name == RESULTS:
                results = self._own_results(read_json(kept))
                if self._readable(top) != results:
                    atomic_write_json(top, results)
            elif not (top.exists() and same_files(kept, top)):
                link_or_copy(kept, top)
        if new and not self._config_written:
            atomic_write_json(self.path / "config.json", asdict(self.cfg))
            self._config_written = True

    @staticmethod
    def _readable(path: Path) -> Optional[dict]:
        """The JSON at `path`; None when there is none or it is garbled (it is written again)."""
        try:
            return read_json(path)
        except RecordError:
            return None

    def _own_results(self, results: dict) -> dict:
        """results.json as this run's: its run dir, its overrides, its exported files."""
        own = dict(results, run_dir=str(self.path), overrides=self.state.overrides)
        if EXPORT in results:
            own[EXPORT] = {fmt: str(self.path / EXPORT / Path(path).name) for fmt, path in results[EXPORT].items()}
        return own
