"""User-facing errors: one line that names the bad value and the valid choices."""

from __future__ import annotations

from typing import Iterable


class UserError(Exception):
    """Bad input from the user. The CLI prints `str(err)` on one line and exits 2."""


class UnknownChoiceError(UserError):
    def __init__(self, kind: str, name: str, choices: Iterable[str]):
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        super().__init__(f"unknown {kind} '{name}'; choose one of: {', '.join(self.choices)}")


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, corrupt or of another model."""


class RecordError(UserError):
    """A JSON record (completion record, cache entry, results) that cannot be parsed."""


class RunDirBusyError(UserError):
    """Another process holds the run directory's lock."""
