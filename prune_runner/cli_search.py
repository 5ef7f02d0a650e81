"""The Hydra side of hyperparameter search (front end, like cli.py): the `hydra/sweeper=optuna` preset and the
callback that writes the study's summary. The objectives and the summary itself are in search.py.

    pip install 'prune-runner[search]'        # = hydra-optuna-sweeper (and Optuna)
    prune-run -m hydra/sweeper=optuna 'method.reg=tag(log, interval(1e-5, 1e-2))' hydra.sweeper.n_trials=20

The preset is the Optuna sweeper plugin's own config with prune-runner's defaults: it maximizes (every objective
in search.py is higher-is-better), its TPE sampler is seeded (the same command proposes the same trials again, so
a re-run skips the finished ones), a failed trial (e.g. a speed-up it cannot reach) is told to Optuna as failed
and the search goes on, and the study callback below is on. It replaces the plugin's `optuna` entry in Hydra's
ConfigStore under the same name, so `hydra/sweeper=optuna` and every `hydra.sweeper.*` option (n_trials, sampler,
n_jobs, params, ...) are spelled as in the plugin's documentation. (A YAML file of that name in conf/ would be
refused by Hydra: the plugin's entry of the same name carries a defaults list.)

The sweep dir is out_root, as for any sweep: the trials' runs land where single runs of the same choices land and
share the stage cache (a search over method.reg pretrains once). The callback writes each trial's overrides, run
dir and objective to <sweep dir>/.study_trials/<n>.json from the job (wherever the launcher runs it), and at the
end study.json (the best trial, then all) and study.png (objective against each searched parameter) next to the
plugin's optimization_results.yaml. Two searches keep their summaries apart with their own out_root.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .errors import UserError
from .run.files import atomic_write_json

TRIALS = ".study_trials"  # per-trial records in the sweep dir, written by the jobs
INSTALL = "pip install 'prune-runner[search]'"

OPTUNA_PRESET = {
    "defaults": [{"/hydra/sweeper/sampler@hydra.sweeper.sampler": "tpe"}, "_self_"],
    "hydra": {
        "sweeper": {
            "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
            "direction": "maximize",  # every objective (search.objective) is higher-is-better
            # in memory: a re-run proposes the same trials again (the sampler is seeded). A database URL needs
            # Optuna 2.10's RDB storage (the plugin pins Optuna < 3), which works with SQLAlchemy 1.x only
            "storage": None,
            "study_name": None,
            "n_trials": 20,
            "n_jobs": 1,  # trials proposed and launched at once; more with a parallel launcher (hydra/launcher=slurm)
            "max_failure_rate": 1.0,  # failed trials are reported to Optuna as failed; the search goes on
            "search_space": None,
            "params": None,  # the search space may also live here: {method.reg: tag(log, interval(1e-5, 1e-2))}
            "custom_search_space": None,
            "sampler": {"seed": 0},  # the same proposals on a re-run: finished trials are skipped
        },
        "callbacks": {"study": {"_target_": "prune_runner.cli_search.StudyCallback"}},
    },
}


def optuna_installed() -> bool:
    try:
        import hydra_plugins.hydra_optuna_sweeper.config  # noqa: F401  an optional dependency: installed?
    except ImportError:
        return False
    return True


def store_optuna_preset() -> None:
    """Replace the plugin's `hydra/sweeper/optuna` config with the preset. Hydra's plugin scan (once per process,
    in `Plugins.instance()`) runs the plugin's modules, which store the plugin's own entry: it goes first."""
    if optuna_installed():
        Plugins.instance()
        ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OPTUNA_PRESET, package="_global_",
                                     provider="prune_runner")


def check_sweeper(name: str) -> None:
    if name == "optuna" and not optuna_installed():
        raise UserError(f"hydra/sweeper=optuna needs the optional dependency: {INSTALL}")


class StudyCallback(Callback):
    """Each trial's record from its job, then the study's summary in the sweep dir (search.write_study)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        shutil.rmtree(Path(config.hydra.sweep.dir) / TRIALS, ignore_errors=True)  # an earlier search's trials

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        value = job_return.return_value if job_return.status.name == "COMPLETED" else None
        trial = {"number": int(config.hydra.job.num), "overrides": list(config.hydra.overrides.task),
                 "run_dir": str(config.run_dir or config.hydra.runtime.output_dir),
                 "value": float(value) if isinstance(value, (int, float)) else None}
        atomic_write_json(Path(config.hydra.sweep.dir) / TRIALS / f"{trial['number']}.json", trial)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from .search import write_study  # not at the top: it loads the report package (torch), which --cfg job skips

        sweep_dir = Path(config.hydra.sweep.dir)
        trials = [json.loads(p.read_text()) for p in (sweep_dir / TRIALS).glob("*.json")]
        plugin = sweep_dir / "optimization_results.yaml"  # the plugin's best trial: its keys are the searched ones
        declared = list(OmegaConf.load(plugin).get("best_params", {})) if plugin.is_file() else None
        best = write_study(sweep_dir, trials, config.search.objective, declared,
                           warn=lambda text: print(f"prune-run: {text}", file=sys.stderr))
        if best is not None:
            params = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
            print(f"prune-run: best of {len(trials)} trials: trial {best['number']}, {config.search.objective} "
                  f"{best['value']:.4f} ({params}) in {best['run_dir']}; study.json and study.png in {sweep_dir}",
                  flush=True)
