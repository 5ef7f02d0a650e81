"""The one spelling of an override in a run directory's name, however the value was written or proposed.

A plain run's name comes from the command line (`eval.latency=False`, `method.reg=1e-4`), a search trial's from
the values Optuna proposes (`True`, `0.004430375245218269`); both go through `override_text`, so one value has one
spelling: lower-case booleans, floats to FLOAT_DIGITS significant digits (Python's `g` format, as a Hydra sweep
over `1e-4,1e-3` already spelled them), lists and dicts without spaces. Only the name is short: the run's config
(config.json) keeps the value as given. A search refuses a proposal whose name equals a trial's (search.ask), so
no two trials share a run directory.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Tuple

FLOAT_DIGITS = 4  # significant digits of a float in a name: 0.004430375245218269 -> 0.00443, 1.5 -> 1.5, 2.0 -> 2
# a "," that starts the next override of a name (a list's own commas are followed by a value, not by `key=`)
_NEXT_OVERRIDE = re.compile(r",(?=[+~]?[A-Za-z_][\w.@/-]*(?:=|,|$))")


def value_text(value: object) -> str:
    """`value` (a parsed override value: bool, int, float, str, None, list, dict) as a run-directory name spells it."""
    if isinstance(value, bool):  # before int: a bool is an int
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.{FLOAT_DIGITS}g}"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{value_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def override_text(key: str, value: object, delete: bool = False) -> str:
    """One override as a name spells it: `key=value`, or `~key` for a deletion without a value."""
    return key if delete and value is None else f"{key}={value_text(value)}"


def overrides_name(items: Iterable[Tuple[str, object, bool]]) -> str:
    """The overrides part of a run directory's name: (key, value, delete) items spelled by override_text, sorted
    and joined with ',' (Hydra's override_dirname, in one spelling)."""
    return ",".join(sorted(override_text(*item) for item in items))


def split_overrides(name: str) -> List[str]:
    """The overrides part of a name (or Hydra's override_dirname) back into its overrides."""
    return [item for item in _NEXT_OVERRIDE.split(name or "") if item]


def override_key(item: str) -> str:
    """The key of one override as split_overrides returns it (`~key` for a deletion)."""
    return item.partition("=")[0]
