"""prune-runner: regularization-driven sparse training, then structural pruning."""

__version__ = "0.1.0"
