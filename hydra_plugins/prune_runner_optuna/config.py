"""The configs of `hydra/sweeper=optuna` and of its samplers (`hydra/sweeper/sampler=tpe|nsgaii|random`),
stored in Hydra's ConfigStore when Hydra's plugin scan (or prune-run) imports this module. No
`from __future__ import annotations` here: Hydra's scan runs this module before it is in sys.modules, where
dataclasses would look its string annotations up."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = 0  # trial n is proposed with seed + n: the same command proposes the same trials
    n_startup_trials: int = 10  # random proposals before TPE models the finished trials
    multivariate: bool = False


@dataclass
class NSGAIISamplerConf:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: Optional[int] = 0
    population_size: int = 50  # trials per generation; the first generation is random


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = 0


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.prune_runner_optuna.sweeper.OptunaSweeper"
    _recursive_: bool = False  # the sweeper builds a sampler per trial from its config (seed + trial number)
    defaults: List[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}])  # the sampler group wins
    sampler: Any = None
    # every objective (search.objective) is higher-is-better; a list gives one direction per objective
    direction: Any = "maximize"
    # None: a journal file, <sweep dir (out_root)>/optuna_journal.log; a path: that journal file; or a database
    # URL (sqlite:///search.db, postgresql://...)
    storage: Optional[str] = None
    study_name: Optional[str] = None  # None: derived from the search, so the same command continues its study
    n_trials: int = 20  # in the study, over every worker and re-run (finished, failed and running trials count)
    n_jobs: int = 1  # trials asked and launched at once (run side by side with a parallel launcher, e.g. slurm)
    params: Optional[Dict[str, str]] = None  # the search space may also live here: {method.reg: interval(0, 1)}


def store() -> None:
    """Put the configs in Hydra's ConfigStore (again: another plugin of the same name may have replaced them)."""
    cs = ConfigStore.instance()
    cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="prune_runner")
    for name, node in (("tpe", TPESamplerConf), ("nsgaii", NSGAIISamplerConf), ("random", RandomSamplerConf)):
        cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider="prune_runner")


store()  # on import, as Hydra's plugin scan expects
