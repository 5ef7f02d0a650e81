"""Files a reader never sees half-written, and the JSON records read back.

Every file the runner writes whole (checkpoints, completion records, results.json, report.md, figures,
exported models, the rewritten metrics log) goes through `atomic_path`: write a temp file beside the
target (same filesystem), fsync it, rename it over the target, fsync the folder. A reader sees the old
file or the new one, and a crash, even of the machine, leaves no torn file under the final name.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from ..errors import RecordError, UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; a results folder shared with colleagues needs what the umask allows
FILE_MODE = 0o666 & ~_umask()


def _fsync(path: Path | str) -> None:
    """Flush a file's (or a folder's entries') data to the disk; a folder that cannot be opened is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if os.path.isdir(path):
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temp path beside `path` to write to; when the block ends it is fsynced and renamed over `path`.

    If the block raises, the temp file is removed and `path` keeps its old content. A full disk becomes one
    line (UserError) that says so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"disk full while saving {path}; the previous file there is unchanged") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync(path.parent)  # the rename itself survives a crash


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path | str) -> Optional[dict]:
    """The JSON file at `path`, None when there is none; RecordError (one line) when it cannot be parsed."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise RecordError(f"record {path} is unreadable ({err})") from None
