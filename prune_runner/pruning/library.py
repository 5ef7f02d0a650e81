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


def _import_without_timm():
    if "torch_pruning" in sys.modules or "timm" in sys.modules:
        return importlib.import_module("torch_pruning")
    sys.modules["timm"] = None  # while this stands, `import timm` raises ImportError
    try:
        return importlib.import_module("torch_pruning")
    finally:
        del sys.modules["timm"]


tp = _import_without_timm()
