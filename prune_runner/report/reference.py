"""Published reference points (reference_results.yaml: units and sources), drawn and tabled next to the runs."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

REFERENCE_FILE = Path(__file__).with_name("reference_results.yaml")


def load_reference(path: str | os.PathLike | None = None) -> list[dict]:
    """Published reference points (see reference_results.yaml for units and sources)."""
    with open(path or REFERENCE_FILE) as f:
        return list(yaml.safe_load(f) or [])
