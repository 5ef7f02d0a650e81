"""What a run leaves for people to read, and prune-report's summary of many runs.

results.py     results.json of one run and its console table
summary.py     finished runs collected, seeds combined: report.md
table.py       prune-report's console table (one line per row, 120 columns, a legend)
plots.py       figures: accuracy vs speed-up (tradeoff.png), per-channel importance (sparsity.png), a search's
               objective against its parameters (study.png)
reference.py   published reference points (reference_results.yaml)
"""

from .plots import plot_importance, plot_study, plot_tradeoff
from .reference import load_reference
from .results import build_results, chance_threshold, chance_warning, print_results
from .summary import NoFinishedRunsError, Stat, aggregate, format_row, scan_runs, write_report
from .table import print_table

__all__ = [
    "NoFinishedRunsError", "Stat", "aggregate", "build_results", "chance_threshold", "chance_warning",
    "format_row", "load_reference", "plot_importance", "plot_study", "plot_tradeoff", "print_results", "print_table",
    "scan_runs", "write_report",
]
