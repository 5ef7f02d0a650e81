"""What a run prints: progress while pruning, a warning at chance accuracy, and no noise
(CUDA_HOME notes on a CPU, setuptools screens at install, Hydra's tag on library logs,
a traceback for `-m ... --cfg job`)."""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, run_cli
from inprocess import tiny_config
from rich.console import Console

from prune_runner.report.results import chance_warning
from prune_runner.run.pipeline import run_pipeline
from prune_runner.tracking.metrics_log import MetricsLog


def test_prune_prints_a_line_per_step_and_a_chance_run_warns(tmp_path):
    """No training at all (0 epochs): a random resnet20 is at chance, and pruning shows each step."""
    cfg = tiny_config(tmp_path, "resnet20", "l1")
    cfg.schedule.pretrain.epochs = cfg.schedule.finetune.epochs = 0
    cfg.eval.latency = False
    out = io.StringIO()
    records = run_pipeline(cfg, tmp_path / "run", console=Console(file=out, width=200))
    text = out.getvalue()
    steps = records["prune"]["metrics"]["steps"]
    for step in range(1, steps + 1):
        assert f"prune step {step}/10: MACs speed-up " in text
    assert text.count("x, target 1.5x") == steps
    assert "warning: final accuracy" in text and "is at chance level (10.0% for 10 classes)" in text


@pytest.mark.parametrize("progress", [False, True])
def test_epoch_lines_print_with_or_without_the_progress_bars(tmp_path, progress):
    """progress=false (a SLURM log, a piped run) turns off the bars, not the per-epoch lines; with the bars,
    each line prints once."""
    cfg = tiny_config(tmp_path, "resnet20", "l1")
    cfg.model.input_size, cfg.stages = 8, ["pretrain"]
    cfg.schedule.pretrain.epochs, cfg.eval.latency, cfg.progress = 2, False, progress
    out = io.StringIO()
    run_pipeline(cfg, tmp_path / "run", console=Console(file=out, width=200))
    lines = re.findall(r"^pretrain epoch (\d)/2: loss (\S+) val acc (\S+) lr (\S+)$", out.getvalue(), re.MULTILINE)
    assert [epoch for epoch, *_ in lines] == ["1", "2"], out.getvalue()
    rows = MetricsLog(tmp_path / "run").rows()
    for (_, loss, acc, lr), row in zip(lines, rows):  # the values logged, as printed
        assert float(loss) == pytest.approx(row["loss"], abs=1e-4)  # printed to 4 decimals
        assert float(acc) == pytest.approx(row["val_acc"], abs=1e-4)
        assert float(lr) == pytest.approx(row["lr"], rel=1e-3)
    if not progress:
        assert "pretrain epochs" not in out.getvalue()  # no bar


def test_chance_warning_threshold():
    assert chance_warning(0.12, 10, "final", "fix") is not None
    assert chance_warning(0.25, 10, "final", "fix") is None
    assert chance_warning(0.70, 2, "final", "fix") is not None  # 2 classes: below 75%
    assert chance_warning(0.002, 1000, "final", "fix") is None


def test_cpu_latency_prints_no_cuda_home_note(tmp_path):
    """torch.utils.benchmark imports cpp_extension, which warns about CUDA_HOME without a CUDA runtime."""
    code = ("import torch.nn as nn; from prune_runner.latency.meter import measure_latency; "
            "m = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)); "
            "measure_latency(m, (3, 2, 2), 'cpu', (1,), warmup=1, repeats=2)")
    env = {"PYTHONPATH": str(REPO), "CUDA_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CUDA_HOME" not in proc.stderr + proc.stdout


def test_package_builds_without_setuptools_warnings(tmp_path):
    """What `make install` builds: no "Package would be ignored" screens for the config folders."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "conf", src / "conf")
    shutil.copytree(REPO / "hydra_plugins", src / "hydra_plugins", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "prune_runner", src / "prune_runner", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "conf"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "wheel"), "."], cwd=src, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Warning" not in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[:3000]


def test_library_logs_in_a_run_carry_no_hydra_tag(capsys):
    """Hydra applies its own logging config, then the job's: library records (e.g. the ONNX
    exporter's) must come out as they are, not as "[HYDRA] ..." lines."""
    from hydra import compose, initialize_config_module
    from hydra.core.utils import configure_log

    import prune_runner.cli  # noqa: F401  (registers the schema and resolvers)

    with initialize_config_module("prune_runner.conf", version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_log(cfg.hydra.hydra_logging)
        configure_log(cfg.hydra.job_logging)
        logging.getLogger("some_library").info("exported the graph")
        for handler in root.handlers:
            handler.flush()
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    out = capsys.readouterr()
    assert "exported the graph" in out.out + out.err
    assert "[HYDRA]" not in out.out + out.err


def test_sweep_with_cfg_job_prints_every_job(tmp_path):
    proc = run_cli(["-m", "method=l1,group_norm", "model=resnet20", "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "# sweep job 1/2: method=l1 model=resnet20" in proc.stdout
    assert "# sweep job 2/2: method=group_norm model=resnet20" in proc.stdout
    assert proc.stdout.count("name: resnet20") == 2


def test_a_torchvision_model_at_chance_on_digits_is_told_the_fix(tmp_path):
    cfg = tiny_config(tmp_path, "mobilenet_v3_small", "l1")
    cfg.model.input_size, cfg.schedule.pretrain.epochs, cfg.stages = 32, 0, ["pretrain"]
    out = io.StringIO()
    run_pipeline(cfg, tmp_path / "run", console=Console(file=out, width=400))
    text = " ".join(out.getvalue().split())
    assert "warning: base accuracy" in text and "model=resnet20" in text and "model.pretrained=true" in text
