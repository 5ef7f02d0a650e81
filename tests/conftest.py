"""Shared helpers: run `prune-run` in this process (most tests) or as a subprocess (the CLI contract)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# a short digits schedule at the digits' own 8x8 pixels (1/16 of the convolution work at 32 px): seconds per
# stage on a CPU, accuracy well above chance; 8 batches re-estimate BatchNorm after pruning
FAST = ["schedule=tiny", "model.input_size=8", "prune.bn_stats_batches=8", "device=cpu", "progress=false",
        "eval.latency_repeats=3", "eval.latency_batch=8",
        "prune.iterative_steps=25"]  # 4% of each layer per step: few steps to a small target

torch.set_num_threads(1)  # small test tensors: threads only add contention on a 2-core machine


@dataclass
class Done:
    """What a finished `prune-run` left: like subprocess.CompletedProcess."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(args, cwd: Path) -> Done:
    """`prune-run ARGS` in this process, from `cwd`: the same code path as the console script (preflight,
    Hydra, run_pipeline, exit codes), without paying the ~9 s of imports of a new interpreter."""
    from hydra.core.global_hydra import GlobalHydra

    from prune_runner import cli

    out, err = io.StringIO(), io.StringIO()
    argv, here = sys.argv, os.getcwd()
    code = 0
    try:
        os.chdir(cwd)
        sys.argv = ["prune-run", *map(str, args)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(here)
        GlobalHydra.instance().clear()
        torch.use_deterministic_algorithms(False)  # deterministic=true runs set it process-wide
    return Done(code, out.getvalue(), err.getvalue())


def run_main(main, args) -> Done:
    """A command's `main(argv)` in this process (prune-report, the scripts): its exit code and output."""
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args]) or 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        torch.set_num_threads(threads)  # scripts set their own thread count
    return Done(code, out.getvalue(), err.getvalue())


def script_main(name: str):
    """`main` of scripts/<name>.py, loaded as a module (the scripts are files, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.main


def run_subprocess(args, cwd: Path, timeout: float = 600, env: dict | None = None,
                   module: str = "prune_runner.cli", command: list | None = None) -> subprocess.CompletedProcess:
    """A new interpreter: for what only a process shows (exit status, stderr as a whole, the console script)."""
    # one thread, as the in-process runs: threads only add contention on a shared 2-core machine
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    command = command or [sys.executable, "-m", module]
    return subprocess.run([*command, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


def error_lines(stderr: str) -> list[str]:
    """stderr without blank lines and torch's C++ warnings (W1...)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("W1")]


def results_of(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def doc_commands(page: str, heading: str | None = None) -> list[list[str]]:
    """The `prune-run` commands of a docs page (a path from the repository root: `docs/how-to/mlflow.md`,
    `README.md`), or of its section `## <heading>`, as argument lists (environment assignments dropped)."""
    text = (REPO / page).read_text()
    section = text if heading is None else text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for line in re.findall(r"^(?:\w+=\S+ )*prune-run (.*?)(?:\s+#.*)?$", section, re.MULTILINE):
        commands.append(shlex.split(line))
    return commands


def readme_commands(heading: str) -> list[list[str]]:
    """The `prune-run` commands of the README's section `## <heading>`."""
    return doc_commands("README.md", heading)
