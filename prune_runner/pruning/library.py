"""torch-pruning, imported once for this package, with timm hidden from it.

torch-pruning's own MAC counter (`torch_pruning.utils.op_counter`) imports timm when the library is
imported, only to count timm attention in that counter. This project counts MACs itself (macs.py, timm
attention included), and importing timm costs 2-4 s of start-up in every run, timm model or not. So the
library is imported while `import timm` fails; a timm model still imports timm itself
(models/timm_models.py).
"""

from __future__ import annotations

import importlib
import sys
import warnings


def _import_without_timm():
    if "torch_pruning" in sys.modules or "timm" in sys.modules:
        return importlib.import_module("torch_pruning")
    sys.modules["timm"] = None  # while this stands, `import timm` raises ImportError
    try:
        return importlib.import_module("torch_pruning")
    finally:
        del sys.modules["timm"]


tp = _import_without_timm()


def hide_unwrapped_warning() -> None:
    """Hide torch-pruning's three-line "Unwrapped parameters detected ... please provide an unwrapped_parameters
    argument" warning, which names parameters a prune-run user cannot act on. hints.py names every parameter outside
    a prunable layer that has a dim longer than 1, so what the library still lists is parameters of one element
    (a scalar gain), which it leaves whole whatever it is told: nothing for the run to change or the user to do.
    Installed once at import; a `warnings.catch_warnings` block that resets the filters calls it again."""
    warnings.filterwarnings("ignore", message=r"Unwrapped parameters detected", category=UserWarning)


hide_unwrapped_warning()
