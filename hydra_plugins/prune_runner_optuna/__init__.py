"""prune-runner's Optuna sweeper for Hydra (`-m hydra/sweeper=optuna`), on Optuna >= 4.

Hydra finds it by scanning the `hydra_plugins` namespace package (this folder has an __init__.py, the namespace
above it has none); prune-run also registers it explicitly (prune_runner/cli_search.py), which an editable
install needs. config.py holds the configs Hydra composes, sweeper.py the plugin class; _search.py (skipped by
Hydra's scan: it imports Optuna) asks and tells the study through prune_runner.search.
"""
