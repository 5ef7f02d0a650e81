"""`prune-run`: the Hydra front end. Hydra stops here; the core gets a RunConfig and a run dir.

Before Hydra composes anything, the command-line overrides are checked against the
registries and the typed schema, so a typo gives one line naming the valid choices
instead of a traceback. Two rewrites make commands work as users write them:
a torchvision model name becomes a `model` group option of its own (so sweeps over
such names work), and path options take their value literally (derived run
directories hold `=` and `,`, which Hydra's override grammar would read as syntax).
"""

from __future__ import annotations

import copy
import gc
import itertools
import os
import re
import shlex
import sys
import traceback
from importlib import resources
from pathlib import Path
from typing import List, Optional, Union

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .cli_search import check_sweeper, register_optuna_sweeper
from .config import RunConfig, dotted
from .errors import UnknownChoiceError, UserError
from .names import overrides_name
from .pipes import closed_pipe_quiet
from .search import TrialFailed

GROUPS = ("model", "dataset", "method", "schedule", "experiment")
# options whose value is a path, taken literally (quoted for Hydra) unless quoted or a choice()/glob() sweep
PATH_KEYS = ("run_dir", "out_root", "resume_from", "base_checkpoint", "dataset.root")
FAILED: List[str] = []  # multirun jobs that failed, listed at the end of the sweep
ARGV: List[str] = []  # the command line as the user typed it (for the re-prune command)


def _run_dir(run_dir, out_root, dataset, model, method, overrides, seed) -> str:
    if run_dir not in (None, "", "None", "null"):
        return str(run_dir)
    return f"{out_root}/{_sub_dir(dataset, model, method, overrides, seed)}"


def _sub_dir(dataset, model, method, overrides, seed) -> str:
    return f"{dataset}/{model}/{method}/{overrides or 'default'}/seed{seed}"


def overrides_dirname(task, exclude_keys) -> str:
    """The overrides part of a run directory's name: Hydra's override_dirname (the task's overrides less
    hydra.job.config.override_dirname.exclude_keys), each value in its one spelling (names.py), so that
    `eval.latency=False` on a command line and `True` proposed by a search read `false` and `true`."""
    exclude = set(exclude_keys or ())
    parsed = OverridesParser.create().parse_overrides([str(t) for t in task or ()])
    return overrides_name((o.get_key_element(), o.value(), o.is_delete()) for o in parsed
                          if o.key_or_group not in exclude)


OmegaConf.register_new_resolver("pr_run_dir", _run_dir, replace=True)
OmegaConf.register_new_resolver("pr_sub_dir", _sub_dir, replace=True)
OmegaConf.register_new_resolver("pr_overrides", overrides_dirname, replace=True)
ConfigStore.instance().store(name="run_schema", node=RunConfig)


def group_options(group: str) -> List[str]:
    folder = resources.files("prune_runner.conf") / group
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _check_value(key: str, value: str) -> None:
    """The key exists in RunConfig and the value converts to its type."""
    schema = OmegaConf.structured(RunConfig)
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(schema, parent) if parent else schema
    if not isinstance(node, DictConfig):
        raise UserError(f"unknown option '{key}'; '{parent}' has no options")
    if leaf not in node:
        raise UserError(f"unknown option '{key}'; options of {parent or 'the run'}: {', '.join(node.keys())}")
    try:
        OmegaConf.merge(schema, OmegaConf.from_dotlist([f"{key}={value}"]))
    except Exception as err:  # omegaconf's validation errors: a value of the wrong type
        first = str(err).strip().splitlines()[0]
        raise UserError(f"invalid value '{value}' for {key}: {first}") from None


def quote_paths(argv: List[str]) -> List[str]:
    """argv with the values of PATH_KEYS single-quoted for Hydra, so `=` and `,` in them are plain text."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~") in PATH_KEYS and value not in ("", "null") and value[0] not in "'\"" \
                and not re.match(r"(choice|glob)\(", value):
            escaped = value.replace("'", "\\'")  # Hydra's escape for a quote inside a quoted value
            arg = f"{key}='{escaped}'"
        out.append(arg)
    return out


def preflight(argv: List[str]) -> List[str]:
    """Validate `key=value` overrides; returns argv with path values quoted for Hydra's grammar.

    A torchvision model name (or timm/<name>) that has no YAML of its own is stored as a `model` group option in
    Hydra's ConfigStore, so `model=efficientnet_b0` and sweeps such as `model=efficientnet_b0,resnet20` compose
    like any other group choice (the ConfigStore travels with submitit's jobs to the cluster)."""
    out: List[str] = []
    argv = quote_paths(argv)
    words = [a for a in argv if not a.startswith("-") and "=" in a]
    try:
        parsed = OverridesParser.create().parse_overrides(words)
    except Exception as err:
        raise UserError(f"cannot parse overrides: {str(err).strip().splitlines()[0]}") from None
    by_word = dict(zip(words, parsed))
    for arg in argv:
        override = by_word.get(arg)
        if override is not None and override.key_or_group == "hydra/sweeper":
            check_sweeper(override.get_value_element_as_str())  # an extra that is not installed: one line
        if override is None or override.is_delete() or override.key_or_group.startswith("hydra"):
            out.append(arg)
            continue
        key = override.key_or_group
        if override.is_interval_sweep():  # interval(a, b): a search space (hydra/sweeper=optuna); its two ends
            values = [str(override.value().start), str(override.value().end)]
        else:
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [
                override.get_value_element_as_str()]
        if key in GROUPS:
            options = group_options(key)
            for value in values:
                if value in options or (key == "experiment" and value == "null"):
                    continue
                if key == "model" and _is_torchvision(value):
                    ConfigStore.instance().store(group="model", name=value, node={"name": value})
                    continue
                if key == "model" and value.startswith("timm/"):
                    from .models import get_model_spec  # not at the top: see _is_torchvision

                    get_model_spec(value)  # timm installed and the name known, else one line now
                    group, _, option = f"model/{value}".rpartition("/")  # Hydra reads `timm/x` as a sub-folder
                    ConfigStore.instance().store(group=group, name=option, node={"name": value}, package="model")
                    continue
                if key == "model":
                    from .models import list_models  # not at the top: see _is_torchvision

                    raise UserError(f"unknown model '{value}'; choose one of: {', '.join(list_models())}, "
                                    "any torchvision classification model name, or timm/<any timm model name>")
                raise UnknownChoiceError(key, value, options)
            out.append(arg)
            continue
        for value in values:
            _check_value(key.lstrip("+"), value)
        out.append(arg)
    return out


def preset_notes(argv: List[str]) -> List[str]:
    """What an `experiment` preset keeps of its own over a group chosen on the same command line.

    A group chosen on the command line replaces the preset's choice of that group; the preset's own values
    under that group (e.g. method.reg) still apply unless set on the command line too. One line per group."""
    words = [a for a in argv if not a.startswith("-") and "=" in a]
    parsed = OverridesParser.create().parse_overrides(words)
    choices = {o.key_or_group: o for o in parsed if o.key_or_group in GROUPS}
    explicit = {o.key_or_group.lstrip("+~") for o in parsed}
    if "experiment" not in choices:
        return []
    experiment = choices["experiment"]
    presets = (list(experiment.sweep_string_iterator()) if experiment.is_sweep_override()
               else [experiment.get_value_element_as_str()])
    notes = []
    for preset in presets:
        path = resources.files("prune_runner.conf") / "experiment" / f"{preset}.yaml"
        if not path.is_file():
            continue
        body = OmegaConf.create(path.read_text())
        for group, override in choices.items():
            if group == "experiment" or group not in body:
                continue
            flat = OmegaConf.to_container(body[group])
            kept = {f"{group}.{k}": v for k, v in dotted(flat).items() if f"{group}.{k}" not in explicit}
            if kept:
                values = " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in kept.items())
                notes.append(f"note: {group}={override.get_value_element_as_str()} replaces the {group} of "
                             f"experiment={preset}, whose own {values} still apply (set them on the command line "
                             "to change them)")
    return notes


def reprune_stage(records: dict) -> Optional[str]:
    """The stage a re-prune of this run starts from: sparse_train's output where the method sparse-trained (its
    record is no pass-through), else pretrain's; None when neither finished."""
    sparse = records.get("sparse_train")
    if sparse is not None and "skipped" not in (sparse.get("metrics") or {}):
        return "sparse_train"
    return "pretrain" if "pretrain" in records else None


def reprune_command(argv: List[str], run_dir: Path, speed_up: float, stage: str = "sparse_train",
                    given: Optional[str] = None) -> str:
    """The command that prunes again from this run's `stage`, at speed-up + 1.

    The run dir is derived again (its prune.speed_up part differs), so the new run never writes here. The stage's
    path works from where the user is: absolute when the run dir was given absolute (`given`: run_dir, or
    out_root for a derived one), else relative to the current directory."""
    drop = ("run_dir", "resume_from", "resume", "prune.speed_up")
    kept = [a for a in argv if a.partition("=")[0].lstrip("+~") not in drop]
    path = run_dir.absolute() / stage
    if not (given and Path(given).is_absolute()) and path.is_relative_to(Path.cwd()):
        path = path.relative_to(Path.cwd())  # as the user would write it: relative to where they are
    new = [f"prune.speed_up={speed_up + 1:g}", f"resume_from={path}"]
    return shlex.join(["prune-run", *kept, *new])


def reprune_hint(argv: List[str], run_dir: Path, cfg: RunConfig, records: dict) -> Optional[str]:
    """The closing hint of a finished single run: what a re-prune starts from, and the command."""
    stage = reprune_stage(records)
    if stage is None:
        return None
    what = ("sparse_train output" if stage == "sparse_train" else
            f"pretrained model ({cfg.method.name} has no sparse training)" if "sparse_train" in records else
            "pretrained model")
    given = cfg.run_dir or cfg.out_root
    return (f"to prune this run's {what} again, at another speed-up:\n"
            f"  {reprune_command(ARGV, run_dir, cfg.prune.speed_up, stage, given)}")


def _is_torchvision(name: str) -> bool:
    # imported here, not at the top: the models package loads torch and torchvision (seconds), which
    # `--help`, `--cfg job` and a model chosen by its YAML never need
    from .models import get_model_spec

    try:
        return get_model_spec(name).family == "torchvision"  # a model it cannot prune: one line, now
    except UnknownChoiceError:
        return False


@hydra.main(config_path="pkg://prune_runner.conf", config_name="config", version_base="1.3")
def _app(dcfg: DictConfig) -> Union[float, List[float], TrialFailed, None]:
    """One run; returns its objective(s) (search.objective), which a search sweeper (hydra/sweeper=optuna)
    maximizes, or, for a sweep job that failed, its one-line reason (told to Optuna as a failed trial)."""
    # imported here, not at the top: the pipeline loads torch, torchvision and torch-pruning (seconds); with
    # `--cfg job` Hydra prints the config without calling _app, and stays fast
    from .run.pipeline import run_pipeline
    from .search import run_objective

    hc = HydraConfig.get()
    multirun = hc.mode is not None and hc.mode.name == "MULTIRUN"
    cfg: RunConfig = OmegaConf.to_object(dcfg)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else Path(hc.runtime.output_dir)
    try:
        overrides = overrides_dirname(hc.overrides.task, hc.job.config.override_dirname.exclude_keys)
        records = run_pipeline(cfg, run_dir, overrides=overrides)
        hint = reprune_hint(ARGV, run_dir, cfg, records) if not multirun and os.environ.get("RANK", "0") == "0" \
            else None
        if hint:
            print(hint, flush=True)
        return run_objective(cfg.search.objective, run_dir, cfg.search.min_speed_up)
    except UserError as err:
        print(f"prune-run: error: {err}", file=sys.stderr, flush=True)
        if not multirun:
            sys.exit(2)
        _discard_if_empty(run_dir, Path(cfg.out_root))  # a refused sweep job leaves no empty folders (Hydra made them)
        FAILED.append(f"{run_dir}: {err}")
        return TrialFailed(str(err))
    except Exception as err:  # a crash in one sweep job must not stop the sweep
        if not multirun:
            raise
        traceback.print_exc()
        FAILED.append(f"{run_dir}: {type(err).__name__}: {err}")
        return TrialFailed(f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
    finally:
        gc.collect()
        torch = sys.modules.get("torch")  # loaded by the pipeline; cli.py itself never imports it
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()  # free GPU memory before the next sweep job


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def _discard_if_empty(run_dir: Path, out_root: Path) -> None:
    """Remove `run_dir`, and the folders above it up to out_root, while they are empty: what Hydra made for a sweep
    job its checks refused (a folder with anything in it stays)."""
    folder, stop = run_dir.absolute(), out_root.absolute()
    while True:
        try:
            folder.rmdir()  # fails, and keeps it, unless it is an empty folder
        except OSError:
            return
        folder = folder.parent
        if folder == stop or not folder.is_relative_to(stop):
            return


class CheckFirst(Callback):
    """Hydra callback (hydra.callbacks in conf/config.yaml): a single run's config is checked (validate.py) once
    Hydra has composed it and before Hydra makes its run directory, so a refused run leaves nothing on disk. A
    sweep's jobs are checked as they start (_app), and leave no empty folder either."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from .validate import validate  # not at the top: it loads the registries (torch), which --help never needs

        task = copy.deepcopy(config)
        with read_write(task), open_dict(task):
            del task["hydra"]  # the run's own config, as Hydra hands it to _app
        try:
            validate(OmegaConf.to_object(task))
        except UserError as err:
            print(f"prune-run: error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)


def sweep_jobs(argv: List[str]) -> List[List[str]]:
    """The argv of every job of a `-m` sweep: sweep values (a,b / range) expanded, -m dropped."""
    words = [a for a in argv if not a.startswith("-") and "=" in a]
    rest = [a for a in argv if a not in words and a not in ("-m", "--multirun")]
    try:
        parsed = OverridesParser.create().parse_overrides(words)
    except Exception as err:
        raise UserError(f"cannot parse overrides: {str(err).strip().splitlines()[0]}") from None
    choices = []
    for word, override in zip(words, parsed):
        key = word.split("=", 1)[0]
        if override.is_interval_sweep():
            raise UserError(f"{word} is a search space: a search picks its trials as it runs, so they cannot be "
                            f"listed; for one trial's config give a value, without -m: {key}={override.value().start}")
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else None
        choices.append([f"{key}={v}" for v in values] if values is not None else [word])
    return [[*job, *rest] for job in itertools.product(*choices)]


def _print_sweep_configs(argv: List[str]) -> None:
    """Hydra refuses `-m` with `--cfg`; print the config of each job of the sweep instead."""
    jobs = sweep_jobs(argv)
    for i, job in enumerate(jobs, 1):
        print(f"# sweep job {i}/{len(jobs)}: {' '.join(a for a in job if '=' in a)}", flush=True)
        sys.argv[1:] = preflight(job)
        _app()


def main() -> None:
    """prune-run; a reader that closes the pipe early (`prune-run --help | head`) ends it quietly."""
    closed_pipe_quiet(_main)


def _main() -> None:
    FAILED.clear()  # main() may run several times in one process (tests)
    ARGV[:] = sys.argv[1:]
    argv = sys.argv[1:]
    register_optuna_sweeper()  # hydra/sweeper=optuna: prune-runner's Optuna sweeper (cli_search.py); before --cfg
    try:
        if {"-m", "--multirun"} & set(argv) and {"--cfg", "-c"} & set(argv):
            _print_sweep_configs(argv)
            return
        sys.argv[1:] = preflight(argv)
    except UserError as err:
        print(f"prune-run: error: {err}", file=sys.stderr)
        sys.exit(2)
    for note in preset_notes(sys.argv[1:]):
        print(f"prune-run: {note}", flush=True)
    try:
        _app()
    except KeyboardInterrupt:
        print("prune-run: interrupted; finished stages and the last epoch checkpoint are kept: re-run the same "
              "command to resume", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    if FAILED:
        print(f"prune-run: {len(FAILED)} sweep job(s) failed:", file=sys.stderr)
        for line in FAILED:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
