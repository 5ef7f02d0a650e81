"""logger=mlflow (the `mlflow` extra): a run on digits logged to the default local store in the out_root, read back
with MlflowClient (params, one metric series per stage, results, artifacts); a server that is down is one warning
line and the run goes on. `make test-slow`: a sweep's jobs are runs of one experiment, named after their overrides,
and the same sweep again continues them."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import FAST, doc_commands, results_of, run_cli
from inprocess import run_inprocess, tiny_config

from prune_runner.cli import preflight
from prune_runner.errors import UserError
from prune_runner.tracking.metrics_log import MetricsLog
from prune_runner.validate import validate

HAS_MLFLOW = all(importlib.util.find_spec(m) is not None for m in ("mlflow", "sqlalchemy", "alembic"))
needs_mlflow = pytest.mark.skipif(not HAS_MLFLOW, reason="the mlflow extra is not installed")
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")  # MLflow's own
QUICK = {"logger": "mlflow", "model": "resnet20", "method": "group_norm", "model.input_size": 8,
         "dataset.train_limit": 128, "schedule.pretrain.epochs": 1, "prune.speed_up": 1.3,
         "prune.bn_stats_batches": 8}
EPOCHS = {"pretrain": 1, "sparse_train": 1, "finetune": 1}  # schedule=tiny, pretraining shortened above


@pytest.fixture(scope="module")
def store_root():
    """A folder for the out_root. A new store runs MLflow's ~50 schema migrations, each synced to disk (seconds);
    in memory (/dev/shm, where there is one) they take a fraction of that."""
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="prune-runner-mlflow-", dir=shm if os.access(shm, os.W_OK) else None))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def no_mlflow_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)


def _client(out_root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out_root / 'mlflow.db'}")


def _runs(out_root: Path):
    client = _client(out_root)
    return client.search_runs([client.get_experiment_by_name("prune-runner").experiment_id])


def test_the_mlflow_extra_missing_is_one_line_before_the_run(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    cfg = tiny_config(tmp_path, "resnet20", "l1")
    cfg.logger = "mlflow"
    with pytest.raises(UserError, match=r"^logger=mlflow needs the optional dependency: pip install "
                                        r"'prune-runner\[mlflow\]'$"):
        validate(cfg)


def test_the_docs_commands_pass_the_checks():
    commands = doc_commands("docs/how-to/mlflow.md")
    assert len(commands) == 2 and all("logger=mlflow" in words for words in commands)
    for words in commands:
        assert preflight(words) == words


@needs_mlflow
def test_a_run_read_back(store_root, no_mlflow_env):
    run_dir = store_root / "run"
    _, text = run_inprocess(run_dir, **QUICK)
    assert "MLflow" not in text  # no warning
    out_root = store_root / "outputs"  # run_inprocess: the run dir's sibling
    (run,) = _runs(out_root)
    client, run_id = _client(out_root), run.info.run_id
    assert run.info.run_name == "digits/resnet20/group_norm/default/seed0" and run.info.status == "FINISHED"
    assert run.data.tags["run_dir"] == str(run_dir.absolute())
    # params: the resolved config
    params = run.data.params
    assert params["model.name"] == "resnet20" and params["method.name"] == "group_norm"
    assert params["method.reg"] == "0.03" and params["method.alpha"] == "4.0"  # the method's defaults, filled in
    assert params["logger"] == "mlflow" and params["schedule.finetune.epochs"] == "1"
    # one per-epoch series per training stage, and each stage's summary
    for stage, epochs in EPOCHS.items():
        history = client.get_metric_history(run_id, f"{stage}/val_acc")
        assert [m.step for m in history] == list(range(epochs)), stage
    assert "sparse_train/reg_coef" in run.data.metrics and "prune/speed_up" in run.data.metrics
    # the results
    results = results_of(run_dir)
    assert run.data.metrics["results/final.acc"] == pytest.approx(results["final"]["acc"])
    assert run.data.metrics["results/speed_up"] == pytest.approx(results["speed_up"])
    # artifacts, as the store holds them
    top = {f.path for f in client.list_artifacts(run_id)}
    assert {"results.json", "config.json", "metrics.jsonl", "sparsity.png", "report"} <= top
    assert {f.path for f in client.list_artifacts(run_id, "report")} == {"report/report.md", "report/tradeoff.png"}
    assert (out_root / ".mlartifacts").is_dir()  # next to the store; hidden from prune-report


@needs_mlflow
def test_a_server_that_is_down_is_one_warning_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    records, text = run_inprocess(tmp_path / "run", **{**QUICK, "stages": "[pretrain]", "dataset.train_limit": 64})
    warnings = [line for line in text.splitlines() if "MLflow" in line]
    assert len(warnings) == 1 and "http://127.0.0.1:9" in warnings[0] and "the run goes on" in warnings[0], text
    # the cause, whole: not the connection pool's text cut at 160 characters (`...port=9): Fa); the run goes on`)
    assert warnings[0].endswith("(ConnectionError: [Errno 111] Connection refused); the run goes on"), warnings[0]
    # the run went on: its epoch was logged to metrics.jsonl, its accuracy is that epoch's, and no MLflow run is
    # recorded for the run dir
    (row,) = MetricsLog(tmp_path / "run").rows("pretrain")
    assert records["pretrain"]["metrics"]["acc"] == pytest.approx(row["val_acc"])
    assert not (tmp_path / "run" / "mlflow.json").exists()


def _tracker(cfg, run_dir: Path, warnings: list):
    from prune_runner.tracking.mlflow_run import MlflowTracker

    return MlflowTracker(cfg, run_dir, "", warnings.append)


def _name_another_run(run_dir: Path, run_id: str) -> None:
    record = json.loads((run_dir / "mlflow.json").read_text())
    (run_dir / "mlflow.json").write_text(json.dumps({**record, "run_id": run_id}))


@needs_mlflow
def test_a_run_the_store_does_not_have_is_one_warning_and_a_new_run(store_root, tmp_path, no_mlflow_env):
    cfg = tiny_config(tmp_path, "resnet20", "l1")
    cfg.out_root, cfg.mlflow.experiment = str(store_root / "outputs"), "gone-runs"  # the shared store, own experiment
    warnings: list = []
    first = _tracker(cfg, tmp_path / "run", warnings)
    assert first.run_id is not None and warnings == []
    assert _tracker(cfg, tmp_path / "run", warnings).run_id == first.run_id  # continued, quietly
    gone = "0" * 32
    _name_another_run(tmp_path / "run", gone)
    again = _tracker(cfg, tmp_path / "run", warnings)
    assert again.run_id not in (None, first.run_id, gone)
    assert len(warnings) == 1 and f"MLflow run {gone} (named in mlflow.json) is not in the store" in warnings[0]
    assert "logging to a new MLflow run" in warnings[0]
    again.client.delete_run(again.run_id)
    third = _tracker(cfg, tmp_path / "run", warnings)
    assert third.run_id not in (None, again.run_id) and "was deleted" in warnings[-1]


@needs_mlflow
def test_a_store_that_fails_to_read_the_run_starts_no_second_run(tmp_path, monkeypatch, no_mlflow_env):
    """Only a run the store does not have starts a new one: another error (a server's 500, a locked database)
    turns logging off with one warning instead of splitting the run's history over two MLflow runs."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    cfg = tiny_config(tmp_path, "resnet20", "l1")
    cfg.out_root = str(tmp_path / "outputs")
    warnings: list = []
    first = _tracker(cfg, tmp_path / "run", warnings)
    created = []
    real_create = MlflowClient.create_run
    monkeypatch.setattr(MlflowClient, "create_run",
                        lambda self, *args, **kw: created.append(args) or real_create(self, *args, **kw))

    def failing_get_run(self, run_id):
        raise MlflowException("database is locked", error_code="INTERNAL_ERROR")

    monkeypatch.setattr(MlflowClient, "get_run", failing_get_run)
    again = _tracker(cfg, tmp_path / "run", warnings)
    assert created == [] and again.run_id is None
    assert len(warnings) == 1 and "start failed" in warnings[0] and "database is locked" in warnings[0], warnings
    assert json.loads((tmp_path / "run" / "mlflow.json").read_text())["run_id"] == first.run_id  # kept for next time


# a sweep over two regularization strengths: one pretraining, which the second job reuses from the stage cache
SWEEP = ["-m", "method.reg=1e-4,1e-3", "eval.latency=false", *[f"{k}={v}" for k, v in QUICK.items()],
         *[a for a in FAST if not a.startswith(("eval.", "model.input_size"))]]


@needs_mlflow
@pytest.mark.slow
def test_sweep_jobs_are_runs_of_one_experiment_named_after_their_overrides(store_root, no_mlflow_env):
    out_root = store_root / "sweep"
    proc = run_cli([*SWEEP, f"out_root={out_root}"], cwd=store_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MLflow" not in proc.stdout
    client, runs = _client(out_root), _runs(out_root)
    names = sorted(r.info.run_name for r in runs)
    assert len(names) == 2 and all(n.startswith("digits/resnet20/group_norm/") and n.endswith("/seed0") for n in names)
    assert "method.reg=0.0001," in names[0] and "method.reg=0.001," in names[1]
    for run in runs:  # the job that reused pretraining logged its series all the same
        assert len(client.get_metric_history(run.info.run_id, "pretrain/val_acc")) == 1
    before = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "finetune/val_acc")) for r in runs}
    proc = run_cli([*SWEEP, f"out_root={out_root}"], cwd=store_root)  # the same sweep again
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "finetune/val_acc"))
             for r in _runs(out_root)}
    assert after == before  # the same two runs, no epoch logged twice
