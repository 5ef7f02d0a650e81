"""Rich progress bars for epochs and steps (rank 0 only; `progress=false` turns them off).

The bars only: each epoch's line (loss, validation accuracy, lr) is the training loop's to print, and it
prints with or without bars, so a SLURM log or a piped run shows its progress too.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StageProgress:
    def __init__(self, progress: Progress | None, stage: str, epochs: int, start_epoch: int):
        self._p = progress
        if progress is not None:
            self._epochs = progress.add_task(f"{stage} epochs", total=epochs, completed=start_epoch)
            self._steps = progress.add_task(f"{stage} steps", total=None)

    def steps(self, batches: Iterable, total: int) -> Iterator:
        if self._p is None:
            yield from batches
            return
        self._p.reset(self._steps, total=total)
        for item in batches:
            yield item
            self._p.advance(self._steps)

    def epoch_done(self) -> None:
        if self._p is not None:
            self._p.advance(self._epochs)


@contextmanager
def stage_progress(console: Console, enabled: bool, stage: str, epochs: int, start_epoch: int = 0):
    if not enabled:
        yield StageProgress(None, stage, epochs, start_epoch)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        yield StageProgress(progress, stage, epochs, start_epoch)
