"""The Hydra side of the sweeper: Hydra builds it from hydra.sweeper.* and hands it the command line's overrides.
Optuna is imported only when a search starts (_search.py), so Hydra's plugin scan stays quick."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from .config import OptunaSweeperConf  # noqa: F401  importing it stores hydra/sweeper=optuna and its samplers in Hydra's ConfigStore


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, direction: Any, storage: Optional[str], study_name: Optional[str],
                 n_trials: int, n_jobs: int, params: Optional[Dict[str, str]]) -> None:
        self.sampler, self.direction, self.storage, self.study_name = sampler, direction, storage, study_name
        self.n_trials, self.n_jobs, self.params = n_trials, n_jobs, params
        self.config: Optional[DictConfig] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        from ._search import run_search

        run_search(self, arguments)
