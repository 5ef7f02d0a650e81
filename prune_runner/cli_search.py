"""The Hydra side of hyperparameter search (front end, like cli.py): makes `-m hydra/sweeper=optuna` prune-runner's
own Optuna sweeper (hydra_plugins/prune_runner_optuna), and refuses it in one line when Optuna is missing.

    pip install 'prune-runner[search]'        # = Optuna >= 4
    prune-run -m hydra/sweeper=optuna 'method.reg=tag(log, interval(1e-5, 1e-2))' hydra.sweeper.n_trials=20

Hydra finds the plugin in an installed wheel by scanning the `hydra_plugins` namespace package; an editable install
hides it from that scan (its import hook lists no modules), so prune-run registers the class itself. The search
(storage, resume, parallel workers, the summary) is in search.py and the plugin.
"""

from __future__ import annotations

import importlib.util

from hydra.core.plugins import Plugins

from .errors import UserError

INSTALL = "pip install 'prune-runner[search]'"


def optuna_installed() -> bool:
    return importlib.util.find_spec("optuna") is not None  # an optional dependency: installed?


def register_optuna_sweeper() -> None:
    """hydra/sweeper=optuna and its samplers in Hydra's ConfigStore, the sweeper class among Hydra's plugins."""
    if not optuna_installed():
        return
    from hydra_plugins.prune_runner_optuna import config
    from hydra_plugins.prune_runner_optuna.sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)  # after Hydra's scan (the first instance() runs it) ...
    config.store()  # ... which may have run another plugin's config of the same name


def check_sweeper(name: str) -> None:
    if name == "optuna" and not optuna_installed():
        raise UserError(f"hydra/sweeper=optuna needs the optional dependency: {INSTALL}")
