"""A run directory that nothing can corrupt: stage hashes that cover every input, immutable cache
entries, overwrite that keeps finished work until its replacement exists, one writer per run dir,
no code from data files, and one-line errors. In-process runs at 8x8 px: seconds each."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import stat
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from rich.console import Console

from prune_runner.config import STAGES, RunConfig
from prune_runner.data import build_data
from prune_runner.data import cifar as cifar_module
from prune_runner.data.base import folder_fingerprint
from prune_runner.errors import CheckpointError, RunDirBusyError, UserError
from prune_runner.export import EXPORTERS
from prune_runner.models import build_model
from prune_runner.run import distributed as distributed_module
from prune_runner.run import rundir as rundir_module
from prune_runner.run.checkpoint import model_payload, save_checkpoint
from prune_runner.run.distributed import DistInfo
from prune_runner.run.locks import lock_run_dir
from prune_runner.run.pipeline import build_state, run_pipeline, stage_inputs
from prune_runner.run.records import RECORD_FORMAT, StageDir, StageInputs, chain, config_hash, own_config
from prune_runner.run.rundir import Action, RunDir
from prune_runner.tracking.metrics_log import MetricsLog
from prune_runner.validate import validate


def small_config(out_root: Path, **prune) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name, cfg.model.input_size = "resnet20", 8  # digits' own 8x8 pixels: cheap convolutions
    cfg.device, cfg.progress, cfg.out_root = "cpu", False, str(out_root)
    cfg.schedule.name = "t"
    for stage in ("pretrain", "sparse_train", "finetune"):
        sched = getattr(cfg.schedule, stage)
        sched.epochs, sched.lr, sched.batch_size = 1, 0.05, 32
    cfg.eval.latency = False
    cfg.dataset.train_limit = 128
    cfg.prune.iterative_steps, cfg.prune.speed_up = 10, 1.3
    for key, value in prune.items():
        setattr(cfg.prune, key, value)
    return cfg


def run(cfg: RunConfig, run_dir: Path, capsys=None) -> tuple[dict, str]:
    records = run_pipeline(cfg, run_dir)
    out = capsys.readouterr().out if capsys is not None else ""
    return records, out


def results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished run (and its stage cache) that tests copy before they change anything."""
    root = tmp_path_factory.mktemp("finished")
    run_pipeline(small_config(root / "out"), root / "a")
    return root


@pytest.fixture
def workspace(finished, tmp_path):
    shutil.copytree(finished / "a", tmp_path / "a")
    shutil.copytree(finished / "out", tmp_path / "out")
    return tmp_path


# -- 1. no code from a dataset folder --------------------------------------------------------------

class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant_cifar(root: Path, marker: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}))
    return folder


def test_a_planted_cifar_batch_fails_its_published_md5_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    _plant_cifar(tmp_path, marker)
    with pytest.raises(UserError, match=r"data_batch_1 has MD5 [0-9a-f]{32}, not the published c99cafc1") as err:
        build_data("cifar10", root=str(tmp_path), input_size=32, device="cpu", download=False)
    assert "\n" not in str(err.value) and not marker.exists()


def test_the_restricted_unpickler_refuses_code_even_when_the_md5_matches(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    folder = _plant_cifar(tmp_path, marker)
    md5s = {f"{folder.name}/{f.name}": hashlib.md5(f.read_bytes()).hexdigest() for f in folder.iterdir()}
    monkeypatch.setattr(cifar_module, "published_md5s", lambda: md5s)
    with pytest.raises(UserError, match="refused to load global '(posix|os).system'"):
        build_data("cifar10", root=str(tmp_path), input_size=32, device="cpu", download=False)
    assert not marker.exists()


# -- 2. the stage hash covers every input ------------------------------------------------------------

INPUTS = StageInputs(dataset="d1", base_checkpoint=None, world_size=1, amp=False)


@pytest.mark.parametrize("changed", [dict(dataset="d2"), dict(base_checkpoint="abc"), dict(world_size=2),
                                     dict(amp=True)])
def test_every_input_changes_the_pretrain_hash(changed):
    cfg = RunConfig()
    base = config_hash(chain(own_config(cfg, "pretrain", True, INPUTS), None))
    other = StageInputs(**{**INPUTS.__dict__, **changed})
    assert config_hash(chain(own_config(cfg, "pretrain", True, other), None)) != base


def test_paths_progress_and_logger_stay_out_of_the_hash():
    a, b = RunConfig(), RunConfig()
    b.dataset.root, b.out_root, b.progress, b.logger, b.run_dir = "/elsewhere", "/x", False, "tensorboard", "/r"
    for stage in ("pretrain", "sparse_train", "prune", "finetune", "eval"):
        assert own_config(a, stage, True, INPUTS) == own_config(b, stage, True, INPUTS)


def test_the_upstream_record_actually_consumed_is_chained_in():
    own = own_config(RunConfig(), "prune", True, INPUTS)
    after_sparse = {"stage": "sparse_train", "hash": "h1", "sha256": "s1"}
    after_pretrain = {"stage": "pretrain", "hash": "h0", "sha256": "s0"}
    retrained = dict(after_sparse, sha256="s2")  # the same config, other weights
    hashes = {config_hash(chain(own, up)) for up in (after_sparse, after_pretrain, retrained)}
    assert len(hashes) == 3


def test_folder_fingerprint_sees_another_folder_moved_files_and_replaced_images(tmp_path):
    for cls, name in (("cat", "1.png"), ("dog", "2.png")):
        (tmp_path / "train" / cls).mkdir(parents=True)
        (tmp_path / "train" / cls / name).write_bytes(b"x" * 10)
    first = folder_fingerprint(str(tmp_path / "train"))
    assert folder_fingerprint(str(tmp_path / "train")) == first
    os.rename(tmp_path / "train" / "cat" / "1.png", tmp_path / "train" / "dog" / "1.png")  # relabelled
    moved = folder_fingerprint(str(tmp_path / "train"))
    assert moved != first
    (tmp_path / "train" / "dog" / "2.png").write_bytes(b"y" * 11)
    assert folder_fingerprint(str(tmp_path / "train")) != moved


def test_an_overwritten_base_checkpoint_is_not_served_from_the_cache(tmp_path, capsys):
    base = tmp_path / "base.pt"

    def write_base(seed: int) -> None:
        torch.manual_seed(seed)
        model = build_model("resnet20", 10)
        save_checkpoint(base, model_payload(model, "resnet20", 10, 8, []))

    write_base(0)
    cfg = small_config(tmp_path / "out")
    cfg.base_checkpoint, cfg.stages = str(base), ["pretrain"]
    first, _ = run(cfg, tmp_path / "a", capsys)
    write_base(1)  # the same path, other weights
    second, out = run(cfg, tmp_path / "b", capsys)
    assert "pretrain: reused from" not in out and "pretrain: loaded" in out
    assert second["pretrain"]["hash"] != first["pretrain"]["hash"]
    assert second["pretrain"]["sha256"] != first["pretrain"]["sha256"]


def test_skipping_sparse_train_gives_prune_another_hash(workspace, capsys):
    cfg = small_config(workspace / "out")
    cfg.stages = ["pretrain", "prune", "finetune", "eval"]
    skipped, out = run(cfg, workspace / "skipped", capsys)
    assert "pretrain: reused from" in out and "prune: reused from" not in out
    assert "sparse_train" not in skipped
    full = json.loads((workspace / "a" / "prune" / "done.json").read_text())
    assert skipped["prune"]["config"]["upstream"]["stage"] == "pretrain"
    assert full["config"]["upstream"]["stage"] == "sparse_train"
    assert skipped["prune"]["hash"] != full["hash"]


# -- 3. every finished run dir holds its own results ---------------------------------------------------

def test_a_run_served_wholly_from_the_cache_writes_its_own_results(workspace, capsys):
    cfg = small_config(workspace / "out")
    _, out = run(cfg, workspace / "b", capsys)
    assert out.count("reused from") == 5 and "top-1 acc" in out
    b = workspace / "b"
    assert results(b)["final"] == results(workspace / "a")["final"] and results(b)["run_dir"] == str(b)
    assert (b / "sparsity.png").read_bytes()[:4] == b"\x89PNG"
    rows = MetricsLog(b).rows()
    assert {r["stage"] for r in rows} == {"pretrain", "sparse_train", "finetune"}
    (b / "results.json").unlink()
    (b / "metrics.jsonl").unlink()
    run(cfg, b, capsys)
    assert results(b)["final"] == results(workspace / "a")["final"]
    assert MetricsLog(b).rows() == rows
    (b / "results.json").write_text("{torn")  # garbled: written again too
    run(cfg, b, capsys)
    assert results(b) == dict(results(workspace / "a"), run_dir=str(b))


# -- 4. a failed overwrite keeps the finished work ------------------------------------------------------

def test_a_failed_overwrite_keeps_the_finished_stage_config_and_results(workspace, capsys):
    a = workspace / "a"
    before = {p: p.read_bytes() for p in [a / "prune" / "done.json", a / "prune" / "checkpoint.pt",
                                          a / "config.json", a / "results.json"]}
    cfg = small_config(workspace / "out", speed_up=1e9)
    cfg.resume = "overwrite"
    with pytest.raises(UserError, match="speed-up stops at"):  # refused by the pre-flight's reach check
        run(cfg, a)
    assert {p: p.read_bytes() for p in before} == before
    capsys.readouterr()
    _, out = run(small_config(workspace / "out"), a, capsys)
    assert out.count("finished earlier, skipped") == 5


# -- 5. a run that took a stage from the cache keeps it when the source changes ------------------------

def test_reused_stages_survive_a_rerun_of_their_source(workspace, capsys):
    run(small_config(workspace / "out"), workspace / "b")
    b_prune = (workspace / "b" / "prune" / "checkpoint.pt").read_bytes()
    again = small_config(workspace / "out", speed_up=2.5)
    again.resume = "overwrite"
    run(again, workspace / "a")  # re-prunes a: a new file at a/prune/checkpoint.pt
    assert (workspace / "a" / "prune" / "checkpoint.pt").read_bytes() != b_prune
    assert (workspace / "b" / "prune" / "checkpoint.pt").read_bytes() == b_prune
    refine = small_config(workspace / "out")
    refine.schedule.finetune.lr, refine.resume = 0.01, "overwrite"
    records, _ = run(refine, workspace / "b", capsys)
    assert records["finetune"]["config"]["upstream"]["sha256"] == hashlib.sha256(b_prune).hexdigest()


# -- 6. one writer per run dir ------------------------------------------------------------------------

def test_a_second_process_on_a_run_dir_is_refused_naming_the_holder(tmp_path):
    lock = lock_run_dir(tmp_path / "a")
    try:
        with pytest.raises(RunDirBusyError, match=f"in use by process {os.getpid()}"):
            run_pipeline(small_config(tmp_path / "out"), tmp_path / "a")
    finally:
        lock.release()
    assert not (tmp_path / "a" / "pretrain").exists()


def test_two_runs_of_one_config_compute_a_stage_once(tmp_path):
    """The second of two processes computing one cache entry waits for the first, says so, then reuses its
    result. The first is paused (SIGSTOP) while it holds the entry, so the second surely finds it held."""
    import signal
    import subprocess
    import sys

    def start(name: str) -> subprocess.Popen:
        args = ["model=resnet20", "model.input_size=8", "device=cpu", "progress=false", "eval.latency=false",
                "schedule=tiny", "schedule.pretrain.epochs=30", "dataset.train_limit=64", "stages=[pretrain]",
                f"run_dir={tmp_path / name}", f"out_root={tmp_path / 'out'}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        return subprocess.Popen([sys.executable, "-m", "prune_runner.cli", *args], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = start("a")
    second = None
    try:
        deadline = time.time() + 300
        while not (tmp_path / "a" / "pretrain" / "epoch_0000.json").exists():  # computing, the entry held
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)
        try:
            assert not (tmp_path / "a" / "pretrain" / "done.json").exists(), "paused too late: raise the epochs"
            second = start("b")
            said = []
            for line in second.stdout:  # up to its line about waiting (or its end, failing below)
                said.append(line)
                if "waiting for it" in line:
                    break
        finally:
            first.send_signal(signal.SIGCONT)
        assert said[-1].strip() == f"pretrain: process {first.pid} is computing the same stage; waiting for it", said
        out_b = "".join(said) + second.communicate(timeout=300)[0]
        out_a = first.communicate(timeout=300)[0]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert first.returncode == 0 and second.returncode == 0, out_a[-2000:] + out_b[-2000:]
    a, b = (json.loads((tmp_path / name / "pretrain" / "done.json").read_text()) for name in ("a", "b"))
    entry = next((tmp_path / "out" / ".stage_cache").glob("pretrain-*"))
    assert "\npretrain\n" in out_a and "\npretrain\n" not in out_b  # only the first computed it
    assert f"pretrain: reused from {(tmp_path / 'a' / 'pretrain').resolve()}" in out_b
    assert b["sha256"] == a["sha256"] and b["reused_from"] == a["source"]
    assert os.path.samefile(tmp_path / "b" / "pretrain" / "checkpoint.pt", entry / "checkpoint.pt")


# -- 7. advice that is true: damaged records and checkpoints are redone ----------------------------------

def test_a_garbled_record_is_redone(workspace, capsys):
    (workspace / "a" / "finetune" / "done.json").write_text("{not json")
    records, out = run(small_config(workspace / "out"), workspace / "a", capsys)
    assert "is unreadable" in out and "finetune: reused from" in out  # the cache still has it
    assert records["finetune"]["sha256"] == json.loads((workspace / "out" / ".stage_cache" / next(
        p.name for p in (workspace / "out" / ".stage_cache").iterdir() if p.name.startswith("finetune-"))
        / "done.json").read_text())["sha256"]


def test_a_truncated_checkpoint_and_a_damaged_cache_entry_are_recomputed(workspace, capsys):
    ckpt = workspace / "a" / "finetune" / "checkpoint.pt"
    entry = next((workspace / "out" / ".stage_cache").glob("finetune-*")) / "checkpoint.pt"
    for f in (ckpt, entry):  # in place, as a disk error would: in a run dir that was never copied they are one file
        f.write_bytes(f.read_bytes()[:100])
    records, out = run(small_config(workspace / "out"), workspace / "a", capsys)
    assert "truncated or changed" in out and "damaged" in out
    assert "\nfinetune\n" in out  # computed again
    assert records["finetune"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()


def test_a_redone_upstream_stage_redoes_its_dependents(workspace, capsys):
    (workspace / "a" / "pretrain" / "done.json").unlink()
    cfg = small_config(workspace / "out")
    cfg.cache = False
    records, _ = run(cfg, workspace / "a", capsys)
    for stage, upstream in (("sparse_train", "pretrain"), ("prune", "sparse_train"), ("finetune", "prune")):
        assert records[stage]["config"]["upstream"]["sha256"] == records[upstream]["sha256"]


# -- 8. one line, never a traceback ----------------------------------------------------------------------

def _bad(**changes) -> RunConfig:
    cfg = small_config(Path("unused"))
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


@pytest.mark.parametrize("changes, message", [
    (dict(method__name="taylor", method__importance_batches=0), "importance_batches=0 is invalid for method taylor"),
    (dict(seed=99999999999999999999), r"seed=99999999999999999999 is invalid"),
    (dict(schedule__finetune__milestones=[-1, 7]), r"milestones=\[-1, 7\] is invalid"),
])
def test_bad_values_are_one_line(changes, message):
    with pytest.raises(UserError, match=message) as err:
        validate(_bad(**changes))
    assert "\n" not in str(err.value)


def test_eval_without_prune_and_a_file_as_run_dir_are_one_line(tmp_path):
    cfg = small_config(tmp_path / "out")
    cfg.stages = ["eval", "pretrain"]
    with pytest.raises(UserError, match="stage 'eval' needs the results of prune"):
        run_pipeline(cfg, tmp_path / "a")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        run_pipeline(small_config(tmp_path / "out"), tmp_path / "file")


def test_disk_full_while_logging_is_one_line(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(UserError, match="disk full while writing .*metrics.jsonl"):
        log.log("pretrain", 0, loss=1.0)


# -- 9. small things --------------------------------------------------------------------------------------

def test_temp_files_of_a_killed_run_are_removed(workspace):
    torn = [workspace / "a" / "finetune" / ".epoch_0000.pt.abc.tmp", workspace / "a" / "eval" / ".done.json.x.tmp"]
    for f in torn:
        f.write_bytes(b"torn")
    run(small_config(workspace / "out"), workspace / "a")
    assert not any(f.exists() for f in torn)


def test_a_redone_stage_does_not_duplicate_its_rows(workspace):
    (workspace / "a" / "finetune" / "done.json").unlink()
    cfg = small_config(workspace / "out")
    cfg.cache = False
    run(cfg, workspace / "a")
    rows = MetricsLog(workspace / "a").rows("finetune")
    assert [r["epoch"] for r in rows] == [0]


def test_speed_up_one_prunes_nothing(workspace):
    cfg = small_config(workspace / "out", speed_up=1.0)
    records, _ = run(cfg, workspace / "one")
    assert records["prune"]["metrics"]["steps"] == 0
    assert records["prune"]["metrics"]["macs"] == records["pretrain"]["metrics"]["macs"]


def test_written_files_follow_the_umask(finished):
    for name in ("results.json", "config.json", "pretrain/checkpoint.pt", "pretrain/done.json", "sparsity.png"):
        mode = stat.S_IMODE((finished / "a" / name).stat().st_mode)
        assert mode == 0o666 & ~_umask(), (name, oct(mode))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_run_says_where_the_stage_cache_is(workspace, capsys):
    _, out = run(small_config(workspace / "out"), workspace / "a", capsys)
    assert f"stage cache: {workspace / 'out' / '.stage_cache'}" in out


def test_a_missing_base_checkpoint_is_one_line(tmp_path):
    cfg = small_config(tmp_path / "out")
    cfg.base_checkpoint = str(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="base_checkpoint=.*nope.pt does not exist"):
        run_pipeline(cfg, tmp_path / "a")


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    """Only a subprocess shows the exit code and what reaches the terminal."""
    import signal
    import subprocess
    import sys

    run_dir = tmp_path / "a"
    args = ["model=resnet20", "model.input_size=8", "device=cpu", "progress=false", "eval.latency=false",
            "schedule=tiny", "schedule.pretrain.epochs=50", f"run_dir={run_dir}", f"out_root={tmp_path / 'out'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # SIGINT at its default in the child: Python turns it into KeyboardInterrupt only when the process starts
    # with it not ignored, and a test worker may have inherited it ignored
    proc = subprocess.Popen([sys.executable, "-m", "prune_runner.cli", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (run_dir / "pretrain" / "epoch_0000.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["prune-run: interrupted; finished stages and the last epoch checkpoint are kept: re-run the "
                     "same command to resume"], err


def test_a_resumed_stage_drops_the_rows_it_will_log_again(tmp_path):
    log = MetricsLog(tmp_path)
    for stage, epoch in (("pretrain", 0), ("finetune", 0), ("finetune", 1), ("finetune", 2)):
        log.log(stage, epoch, loss=1.0)
    log.drop_from("finetune", 1)  # resumed after epoch 0's checkpoint: epochs 1 and 2 run again
    assert [(r["stage"], r["epoch"]) for r in log.rows()] == [("pretrain", 0), ("finetune", 0)]


# -- 10. one owner of the run dir ---------------------------------------------------------------------------

def _snapshot(folder: Path) -> dict:
    """Every file's content; `.lock` only names the last process that held the run dir."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_a_stage_writes_into_its_own_folder_and_the_top_links_its_files(finished):
    a = finished / "a"
    assert os.path.samefile(a / "sparsity.png", a / "prune" / "sparsity.png")
    entry = next((finished / "out" / ".stage_cache").glob("prune-*"))
    assert os.path.samefile(entry / "sparsity.png", a / "prune" / "sparsity.png")  # the cache links the same file
    kept = json.loads((a / "eval" / "results.json").read_text())
    assert kept["final"] == results(a)["final"] and results(a)["run_dir"] == str(a)


def test_an_eval_stage_reused_from_the_cache_brings_its_exported_model(workspace, capsys):
    cfg = small_config(workspace / "out")
    cfg.export = ["torchscript"]
    run(cfg, workspace / "c")
    _, out = run(cfg, workspace / "d", capsys)
    assert "eval: reused from" in out
    for name in ("c", "d"):
        folder = workspace / name
        assert results(folder)["export"] == {"torchscript": str(folder / "export" / "model.pt")}
        assert os.path.samefile(folder / "export" / "model.pt", folder / "eval" / "export" / "model.pt")
    exported = workspace / "d" / "export" / "model.pt"
    assert exported.read_bytes() == (workspace / "c" / "export" / "model.pt").read_bytes()
    assert EXPORTERS.get("torchscript").run(exported, torch.zeros(1, 3, 8, 8)).shape == (1, 10)  # it loads and runs


def test_a_record_of_an_older_format_is_refused_and_overwrite_redoes_it(workspace, capsys):
    a = workspace / "a"
    done = a / "prune" / "done.json"
    done.write_text(json.dumps(dict(json.loads(done.read_text()), format=RECORD_FORMAT - 1)))
    before = _snapshot(a)
    with pytest.raises(UserError, match="prune in .* was finished by an older prune-runner; add resume=overwrite"):
        run(small_config(workspace / "out"), a)
    assert _snapshot(a) == before
    capsys.readouterr()
    cfg = small_config(workspace / "out")
    cfg.resume = "overwrite"
    records, out = run(cfg, a, capsys)
    assert "prune: the finished stage cannot be used: it was written by an older prune-runner" in out
    assert records["prune"]["format"] == json.loads(done.read_text())["format"] == RECORD_FORMAT
    assert out.count("finished earlier, skipped") == 4  # the other stages are kept


def test_rank_0_decides_and_the_other_ranks_only_hear_its_answer(workspace, monkeypatch):
    """Under DDP each decision is one broadcast of rank 0's answer; rank 1 reads no record itself."""
    cfg = validate(small_config(workspace / "out"))
    answers: list = []

    def as_rank(rank: int) -> tuple:
        state = build_state(cfg, workspace / "a", Console(file=io.StringIO()), "", DistInfo(rank, world_size=2))
        inputs = replace(stage_inputs(state), world_size=1)  # the finished run's stages, as if made by two ranks
        with RunDir(state, inputs) as rundir:
            rundir.check()
            return state, [rundir.resolve(stage).action for stage in STAGES]

    fake = lambda dist, obj: answers.append(obj) or obj
    monkeypatch.setattr(rundir_module, "broadcast_object", fake)  # commit's record
    monkeypatch.setattr(distributed_module, "broadcast_object", fake)  # on_main's answers
    main, actions = as_rank(0)
    assert actions == [Action.DONE] * len(STAGES) and len(answers) == 1 + len(STAGES)  # the check, each stage
    heard = iter(answers)
    fake = lambda dist, obj: next(heard)
    monkeypatch.setattr(rundir_module, "broadcast_object", fake)  # commit's record
    monkeypatch.setattr(distributed_module, "broadcast_object", fake)  # on_main's answers
    monkeypatch.setattr(StageDir, "record", lambda self: pytest.fail("rank 1 read a record"))
    other, actions = as_rank(1)
    assert actions == [Action.DONE] * len(STAGES) and other.records == main.records
    assert other.pending == (Path(main.records["eval"]["checkpoint"]), main.records["eval"]["sha256"])

