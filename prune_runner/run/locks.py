"""Exclusive, process-lifetime locks on run directories and stage-cache entries.

`fcntl.flock` locks belong to an open file description: the kernel drops them when the process
exits, however it exits (SIGKILL included), so a crashed run never leaves a stale lock behind.
The holder writes its PID into the lock file, so a refused process can name it.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..errors import RunDirBusyError


class FileLock:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: Optional[int] = None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def acquire_blocking(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_run_dir(run_dir: Path) -> FileLock:
    """Hold `<run_dir>/.lock` until release(); a second process gets one line naming the holder."""
    lock = FileLock(Path(run_dir) / ".lock")
    if not lock.try_acquire():
        raise RunDirBusyError(f"run dir {run_dir} is in use by process {lock.holder()}; wait for it to finish, "
                              "or choose another run_dir")
    return lock


@contextmanager
def wait_for(path: Path, on_wait: Callable[[str], None]) -> Iterator[None]:
    """Hold the lock at `path` for the block, waiting (and saying so once) while another process has it."""
    lock = FileLock(path)
    if not lock.try_acquire():
        on_wait(lock.holder())
        lock.acquire_blocking()
    try:
        yield
    finally:
        lock.release()
