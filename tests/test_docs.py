"""Every shell command the docs show (docs/**/*.md and README.md) is run by a test, and the site builds.

A fenced ```bash block holds commands; an HTML comment on the line before it says how far the test goes:
  (none)                       every `prune-run` composes (`--cfg job`, in this process); `make test-slow` also runs
                               each block end to end on the tiny digits schedule (FAST, as the other tests do)
  <!-- run -->                 `make test` runs it end to end on the tiny schedule, in the tutorial's folder
  <!-- compose-only: WHY -->   it cannot run here (a CIFAR or ImageNet download, SLURM, several GPUs, a server):
                               its config composes, nothing more
Every other command word (`pip install`, `make`, `prune-report`, `torchrun`, `python scripts/...`) has its own
check below; a command the test does not know fails it. Config keys shown in inline code (`prune.speed_up=3`)
must exist in the typed schema, so a page cannot show a key that is gone."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import FAST, REPO, run_cli, run_main, script_main

PAGES = sorted((REPO / "docs").rglob("*.md")) + [REPO / "README.md"]
MARKER = re.compile(r"<!--\s*(run|compose-only:[^>]*?)\s*-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")
LANGUAGES = {"bash", "text", "python", "yaml"}  # a block without a language would hide a command from this test
# commands shown for the reader to run by hand, with the reason no test can: nothing here but their names
SHOWN_ONLY = {"mlflow": "`mlflow ui` starts a server and needs the full mlflow package (the extra installs the client)"}
# data no test run has here: a block that names one must be marked compose-only
NEEDS_DOWNLOAD = re.compile(r"\b(dataset=(cifar10|cifar100|imagenet|imagefolder)|experiment=|model\.pretrained=true)")
TOP_KEYS = ("model", "dataset", "method", "schedule", "prune", "fast", "eval", "search", "mlflow")


@dataclass
class Command:
    page: str  # relative to the repository
    line: int
    mode: str  # "compose", "run" or "compose-only"
    words: list  # shell words, environment assignments and comments dropped

    def __str__(self):
        return f"{self.page}:{self.line}: {shlex.join(self.words)}"


@dataclass
class Block:
    page: str
    line: int
    lang: str
    mode: str
    text: str


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page, each with the marker on the line before it (if any)."""
    out, lines, i = [], page.read_text().splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        marker = MARKER.search(lines[i - 1]) if i else None
        mode = "compose" if marker is None else marker.group(1).split(":")[0]
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        out.append(Block(str(page.relative_to(REPO)), i + 1, match.group(1), mode, "\n".join(lines[i + 1:end])))
        i = end + 1
    return out


def commands(block: Block) -> list[Command]:
    """A bash block's commands: continuation lines joined, comments and VAR=value prefixes dropped."""
    out, text = [], block.text.replace("\\\n", " ")
    for offset, line in enumerate(text.splitlines()):
        words = shlex.split(line, comments=True)
        while words and re.match(r"^[A-Z_]+=", words[0]):
            words = words[1:]
        if words:
            out.append(Command(block.page, block.line + 1 + offset, block.mode, words))
    return out


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]
ALL_COMMANDS = [c for b in ALL_BLOCKS if b.lang == "bash" for c in commands(b)]


def inline_spans(page: Path) -> list[str]:
    """Inline code spans outside fenced blocks."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    return re.findall(r"`([^`\n]+)`", text)


def schema_has(key: str) -> bool:
    """`key` (a.b.c) is a field path of RunConfig; `<stage>` and `*` stand for any stage."""
    from prune_runner.config import RunConfig

    node = RunConfig
    for part in key.replace("<stage>", "pretrain").replace("*", "pretrain").split("."):
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return False
        node = typing.get_type_hints(node)[part]
    return True


def shown_keys(page: Path) -> list[str]:
    """The config keys that inline code spans of a page show (`prune.speed_up=3`, `schedule.<stage>.lr`)."""
    keys = []
    for span in inline_spans(page):
        match = re.match(rf"^((?:{'|'.join(TOP_KEYS)})\.[\w.<>*]+?)\*?(?:[=\s,]|$)", span)
        if match:
            keys.append(match.group(1))
    return keys


def prune_run_args(words: list[str]) -> list[str] | None:
    """The prune-run arguments of a command: `prune-run ARGS` or `torchrun ... -m prune_runner.cli ARGS`."""
    if words[0] == "prune-run":
        return words[1:]
    if words[0] == "torchrun":
        return words[words.index("prune_runner.cli") + 1:]
    return None


def is_search(args: list[str]) -> bool:
    return any(re.search(r"\b(interval|tag)\(", a) for a in args)


def check_composes(command: Command, cwd: Path) -> None:
    """The command's config composes (an unknown key, a wrong type or an unknown option fails here)."""
    words = command.words
    args = prune_run_args(words)
    if args is not None:
        if is_search(args):  # a search space: its trials cannot be listed (`--cfg job` says so); checked as words
            from prune_runner.cli import preflight

            preflight(args)
            return
        extra = [] if "--cfg" in args or "--help" in args else ["--cfg", "job"]
        done = run_cli([*args, *extra], cwd=cwd)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
        return
    if words[0] == "prune-report":
        from prune_runner.report_cli import main

        if "--help" in words:
            assert run_main(main, words[1:]).returncode == 0
        return  # its directory exists only after a run: run mode runs it
    if words[:2] == ["pip", "install"]:
        extras = re.fullmatch(r"(?:\.|prune-runner)\[([\w,-]+)\]", words[2])
        assert extras, f"{command}: install the project with extras: '.[name]'"
        pyproject = (REPO / "pyproject.toml").read_text()
        for extra in extras.group(1).split(","):
            assert re.search(rf"^{extra} = \[", pyproject, re.MULTILINE), f"{command}: no extra {extra!r}"
        return
    if words[0] == "make":
        makefile = (REPO / "Makefile").read_text()
        for target in words[1:]:
            assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"{command}: no Makefile target {target!r}"
        if "demo" in words:  # the demo's own command composes too
            (line,) = re.findall(r"^\t\$\(VENV\)/bin/prune-run (.*)$", makefile, re.MULTILINE)
            done = run_cli([*shlex.split(line), "--cfg", "job"], cwd=cwd)
            assert done.returncode == 0, done.stderr[-2000:]
        return
    if words[0] == "python" and words[1].startswith("scripts/"):
        assert (REPO / words[1]).is_file(), f"{command}: no such script"
        assert run_main(script_main(Path(words[1]).stem), ["--help"]).returncode == 0
        return
    if words[0] in SHOWN_ONLY:
        return
    raise AssertionError(f"{command}: a command this test does not know; check it here or list it in SHOWN_ONLY")


CIFAR_MODELS = re.compile(r"^(resnet(20|32|56|110)|vgg\d+_bn|densenet_cifar|mobilenetv2_cifar)$")


def tiny(args: list[str]) -> list[str]:
    """A docs command on the tests' tiny digits schedule: FAST's values, except where the command sets them
    (an ImageNet architecture, or a latency target, at 32 px); a search tries 2 trials."""
    keys = {a.split("=")[0] for a in args if "=" in a}
    models = [m for a in args if a.startswith("model=") for m in a.partition("=")[2].split(",")]
    # 8 px is too small for an ImageNet architecture's pooling, and leaves latency bound by per-layer overhead
    small = all(CIFAR_MODELS.match(m) for m in models) and "prune.target=latency" not in args
    fast = FAST if small else ["model.input_size=32" if a.startswith("model.input_size=") else a for a in FAST]
    args = [re.sub(r"^hydra.sweeper.n_trials=\d+$", "hydra.sweeper.n_trials=2", a) for a in args
            if not a.startswith("schedule=")]
    return args + [a for a in fast if a.split("=")[0] not in keys or a.startswith("schedule=")]


def run_for_real(command: Command, cwd: Path) -> None:
    args = prune_run_args(command.words)
    if args is not None and ("--cfg" in args or "--help" in args):  # prints, runs nothing: as composed
        check_composes(command, cwd)
    elif args is not None:
        done = run_cli(tiny(args), cwd=cwd)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    elif command.words[0] == "prune-report":
        from prune_runner.report_cli import main

        here = os.getcwd()
        try:
            os.chdir(cwd)  # its DIR is relative to where it runs
            done = run_main(main, command.words[1:])
        finally:
            os.chdir(here)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    else:
        check_composes(command, cwd)


# ---------------------------------------------------------------------------------------------------------------


def test_the_docs_show_commands_in_known_blocks():
    assert len(ALL_COMMANDS) >= 30, len(ALL_COMMANDS)
    for block in ALL_BLOCKS:
        assert block.lang in LANGUAGES, f"{block.page}:{block.line}: a fence needs a language ({sorted(LANGUAGES)})"
        if block.mode != "compose-only" and block.lang == "bash":
            assert not NEEDS_DOWNLOAD.search(block.text), (
                f"{block.page}:{block.line}: needs a download: mark it <!-- compose-only: why -->")


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
def test_every_command_composes(command, tmp_path):
    check_composes(command, tmp_path)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_config_keys_shown_exist(page):
    missing = [key for key in shown_keys(page) if not schema_has(key)]
    assert not missing, f"{page.relative_to(REPO)} shows keys the config does not have: {missing}"


def test_inline_prune_run_commands_compose(tmp_path):
    """`prune-run ...` written in a sentence composes too (placeholders such as <overrides> aside)."""
    spans = [s for page in PAGES for s in inline_spans(page) if s.startswith("prune-run ") and "<" not in s]
    assert spans
    for span in spans:
        check_composes(Command("inline", 0, "compose", shlex.split(span)), tmp_path)


@pytest.fixture(scope="module")
def tutorial_dir(tmp_path_factory):
    """The blocks marked <!-- run -->, run in page order in one folder (the tutorial's demo run, then its report)."""
    cwd = tmp_path_factory.mktemp("docs_run")
    ran = [c for c in ALL_COMMANDS if c.mode == "run"]
    for command in ran:
        run_for_real(command, cwd)
    return cwd, ran


def test_the_run_blocks_run(tutorial_dir):
    cwd, ran = tutorial_dir
    assert any(prune_run_args(c.words) for c in ran) and any(c.words[0] == "prune-report" for c in ran)
    assert list(cwd.rglob("results.json")) and list(cwd.rglob("report.md"))


def test_python_blocks_run(tutorial_dir):
    """A python block marked run executes in the tutorial's folder; the others' imports resolve."""
    cwd, _ = tutorial_dir
    python = [b for b in ALL_BLOCKS if b.lang == "python"]
    assert python
    here = os.getcwd()
    try:
        os.chdir(cwd)
        for block in python:
            code = block.text if block.mode == "run" else "\n".join(
                line for line in block.text.splitlines() if line.startswith(("import ", "from ")))
            exec(compile(code, f"{block.page}:{block.line}", "exec"), {})
    finally:
        os.chdir(here)


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "bash" and b.mode == "compose"],
                         ids=lambda b: f"{b.page}:{b.line}")
def test_every_runnable_block_runs_on_the_tiny_schedule(block, tutorial_dir):
    """In the tutorial's folder, where `outputs/demo` (which some commands resume from) is."""
    for command in commands(block):
        run_for_real(command, tutorial_dir[0])


def test_the_site_builds_strict(tmp_path):
    """`make docs`: a broken link, a missing page or a page left out of the nav fails the build (in this
    process: mkdocs's own build, with --strict's setting)."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    config = load_config(str(REPO / "mkdocs.yml"), strict=True, site_dir=str(tmp_path / "site"))
    try:
        build(config)  # raises mkdocs.exceptions.Abort on any warning under strict
    finally:
        config.plugins.on_shutdown()
    assert (tmp_path / "site/index.html").is_file() and (tmp_path / "site/reference/configuration/index.html").is_file()
