"""`logger=mlflow`: a run as an MLflow run (the `mlflow` extra: mlflow-skinny, with SQLAlchemy for its store).

What is logged: the resolved config as params (`model.name`, `method.reg`, ...); every per-epoch row of
metrics.jsonl as `<stage>/<key>` at step = epoch (live, as the epochs finish; rows of stages that were skipped or
reused from the stage cache at the end); each stage's summary metrics as `<stage>/<key>`; the numeric results as
`results/<key>` (`results/final.acc`, `results/speed_up`, ...); and as artifacts results.json, config.json,
metrics.jsonl, sparsity.png and a one-run report (report/report.md, report/tradeoff.png).

Where: `MLFLOW_TRACKING_URI` when set (a team's server, e.g. http://mlflow.example:5000), else a local store in
the out_root, `sqlite:///<out_root>/mlflow.db` with artifacts in <out_root>/.mlartifacts (nothing to start; view
it with `mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`; hidden, so that prune-report does not count
the copies of results.json there). The experiment is `mlflow.experiment`, else
`MLFLOW_EXPERIMENT_NAME`, else "prune-runner": the jobs of a sweep are runs of one experiment, each named after its
choices and overrides as its run dir is (digits/resnet20/group_norm/method.reg=0.001/seed0).

Re-running a run continues its MLflow run (its id is kept in <run_dir>/mlflow.json) without logging its epochs
twice. Logging never fails a run: the first error (a server that is down, a full disk) is one warning line and
the run goes on without MLflow. Requests to a server give up after 2 retries and 30 s unless
MLFLOW_HTTP_REQUEST_MAX_RETRIES / MLFLOW_HTTP_REQUEST_TIMEOUT say otherwise (MLflow's defaults wait minutes).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..config import STAGES, RunConfig, dotted
from ..errors import UserError
from ..report import write_report
from ..run.files import atomic_write_json
from .metrics_log import MetricsLog

INSTALL = "pip install 'prune-runner[mlflow]'"
DEFAULT_EXPERIMENT = "prune-runner"
RECORD = "mlflow.json"  # in the run dir: which MLflow run this is, and which epoch rows it holds
ARTIFACTS = ("results.json", "config.json", "metrics.jsonl", "sparsity.png")
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
BATCH = 500  # metrics per log_batch call (MLflow accepts up to 1000)
NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"  # MLflow's error code for a run the store does not have


def check_installed() -> None:
    try:  # optional dependencies, imported here to see whether they are installed
        import mlflow  # noqa: F401
        import sqlalchemy  # noqa: F401  the local store
    except ImportError:
        raise UserError(f"logger=mlflow needs the optional dependency: {INSTALL}") from None


def tracking_uri(out_root: str) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(out_root).absolute() / 'mlflow.db'}"


def run_name(cfg: RunConfig, overrides: str) -> str:
    return f"{cfg.dataset.name}/{cfg.model.name}/{cfg.method.name}/{overrides or 'default'}/seed{cfg.seed}"


MAX_ERROR_CHARS = 200  # of an error's text in the warning line: the cause fits, a server's HTML page does not
OS_ERROR = re.compile(r"\[Errno -?\d+\][^'\")\]]*")  # "[Errno 111] Connection refused", inside a wrapper's text


def error_text(err: BaseException) -> str:
    """An error in one line for the warning: the operating system's reason where a wrapper (requests, urllib3)
    buries it ("ConnectionError: [Errno 111] Connection refused"), else the error's own text, shortened at a word
    with "..." where it runs past MAX_ERROR_CHARS, never cut mid-word."""
    text = " ".join(str(err).split())
    found = OS_ERROR.search(text)
    if found:
        text = found.group(0).strip().rstrip(",;:")
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _numbers(tree: dict) -> dict:
    return {k: float(v) for k, v in dotted(tree).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class MlflowTracker:
    """One run's MLflow run; every call is a no-op after the first failure (one warning)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, overrides: str, warn: Callable[[str], None]):
        self.cfg, self.run_dir, self.warn = cfg, Path(run_dir), warn
        self.name = run_name(cfg, overrides)
        self.uri = tracking_uri(cfg.out_root)
        self.client = None
        self.run_id: Optional[str] = None
        self.logged: set = set()  # "stage:epoch" rows this MLflow run holds
        self.results_sha: Optional[str] = None  # of the results.json this MLflow run holds
        self.params = {k: (str(v) if v is not None else "None")[:MAX_PARAM_LENGTH]
                       for k, v in dotted(asdict(cfg)).items()}
        self.params_sha = hashlib.sha256(json.dumps(self.params, sort_keys=True).encode()).hexdigest()[:16]
        self._guard("start", self._start)

    def _guard(self, what: str, fn: Callable, *args) -> None:
        if what != "start" and self.run_id is None:
            return
        try:
            fn(*args)
        except Exception as err:  # logging must never fail a run
            self.warn(f"warning: MLflow logging off for this run: {what} failed at {self.uri} "
                      f"({error_text(err)}); the run goes on")
            self.run_id = None

    # ---- start: the experiment, and this run dir's MLflow run (continued, or new) ----

    def _start(self) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        if self.uri.startswith(("http://", "https://")):
            import requests  # mlflow's own dependency, like mlflow imported where used: optional

            requests.get(f"{self.uri.rstrip('/')}/health", timeout=10).raise_for_status()  # down: fail fast
        elif self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        experiment_id = self._experiment()
        record = self._record()
        same_store_and_params = record.get("tracking_uri") == self.uri and record.get("params_sha") == self.params_sha
        if same_store_and_params and record.get("run_id"):
            self._continue(record)
        if self.run_id is None:
            tags = {"run_dir": str(self.run_dir.absolute()), "prune_runner.overrides": self.name}
            self.run_id = self.client.create_run(experiment_id, run_name=self.name, tags=tags).info.run_id
            self.logged, self.results_sha = set(), None
            self._log_params()
        self._save_record(results_sha=self.results_sha)

    def _continue(self, record: dict) -> None:
        """Continue the MLflow run that RECORD names. A run the store no longer has, or one deleted there, is one
        warning line and a new run; any other error fails the start (_guard: logging off, one warning)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(record["run_id"])
        except MlflowException as err:
            if err.error_code != NOT_FOUND:
                raise
            self.warn(f"warning: MLflow run {record['run_id']} (named in {RECORD}) is not in the store at {self.uri}; "
                      "logging to a new MLflow run")
            return
        if run.info.lifecycle_stage != "active":
            self.warn(f"warning: MLflow run {record['run_id']} (named in {RECORD}) was deleted at {self.uri}; "
                      "logging to a new MLflow run")
            return
        self.run_id = run.info.run_id
        self.logged = set(record.get("logged", []))
        self.results_sha = record.get("results_sha")
        self.client.update_run(self.run_id, status="RUNNING")

    def _experiment(self) -> str:
        name = self.cfg.mlflow.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # a local store keeps its artifacts next to it, in the out_root
            location = (Path(self.uri[len("sqlite:///"):]).parent / ".mlartifacts").absolute().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # created meanwhile by another job of the sweep
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _log_params(self) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in sorted(self.params.items())]
        for i in range(0, len(items), 100):  # MLflow takes 100 params per call
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _record(self) -> dict:
        try:
            return json.loads((self.run_dir / RECORD).read_text())
        except (OSError, ValueError):
            return {}

    def _save_record(self, **extra) -> None:
        record = {**self._record(), "tracking_uri": self.uri, "run_id": self.run_id, "params_sha": self.params_sha,
                  "logged": sorted(self.logged), **extra}
        atomic_write_json(self.run_dir / RECORD, record)

    # ---- metrics ----

    def log_rows(self, rows: Iterable[dict]) -> None:
        """Per-epoch rows (metrics.jsonl's): those this MLflow run does not hold yet."""
        self._guard("logging metrics", self._log_rows, list(rows))

    def _log_rows(self, rows: list) -> None:
        from mlflow.entities import Metric

        new = [r for r in rows if f"{r.get('stage')}:{r.get('epoch')}" not in self.logged]
        metrics = []
        for row in new:
            stamp = int(1000 * row.get("time", time.time()))
            for key, value in _numbers({k: v for k, v in row.items() if k not in ("stage", "epoch", "time")}).items():
                metrics.append(Metric(f"{row['stage']}/{key}", value, stamp, int(row["epoch"])))
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH])
        if new:
            self.logged |= {f"{r.get('stage')}:{r.get('epoch')}" for r in new}
            self._save_record()

    # ---- the end: remaining rows, stage summaries, results, artifacts, status ----

    def close(self, records: Optional[dict], status: str) -> None:
        """`status`: FINISHED, FAILED or KILLED."""
        self._guard("logging the results", self._finish, records or {})
        self._guard("ending the run", lambda: self.client.set_terminated(self.run_id, status))

    def _finish(self, records: dict) -> None:
        from mlflow.entities import Metric

        self._log_rows(MetricsLog(self.run_dir).rows())  # reused / skipped stages, or rows of a killed invocation
        results_path = self.run_dir / "results.json"
        sha = hashlib.sha256(results_path.read_bytes()).hexdigest() if results_path.is_file() else None
        if sha is not None and sha == self.results_sha:
            return  # a finished run again: this MLflow run holds its results already
        stamp = int(1000 * time.time())
        metrics = [Metric(f"{stage}/{key}", value, stamp, 0) for stage in STAGES if stage in records
                   for key, value in _numbers(records[stage].get("metrics", {})).items()]
        if sha is not None:
            results = json.loads(results_path.read_text())
            keep = {k: v for k, v in results.items() if k not in ("provenance", "setup", "seed", "choices")}
            metrics += [Metric(f"results/{k}", v, stamp, 0) for k, v in _numbers(keep).items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH])
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        if sha is not None:
            self._log_report()
            self._save_record(results_sha=sha)

    def _log_report(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            write_report(self.run_dir, tmp)  # this run alone: report.md and tradeoff.png
            self.client.log_artifacts(self.run_id, tmp, artifact_path="report")
