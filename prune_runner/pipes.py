"""A command whose reader goes away (`prune-run --help | head`, `prune-report DIR | head`) ends quietly with the
shell's status for it, not a BrokenPipeError traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T")
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as shells report a writer whose reader went away


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush has nowhere to fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def closed_pipe_quiet(main: Callable[[], T]) -> T:
    """`main()`; a closed stdout, while it runs or when its buffered output is flushed after it (also after a
    sys.exit, as Hydra's --help makes), exits with EXIT_BROKEN_PIPE and no traceback."""
    try:
        return main()
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(EXIT_BROKEN_PIPE)
    finally:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_stdout()
            sys.exit(EXIT_BROKEN_PIPE)  # noqa: B012  replaces the exit in flight: the output was cut short
