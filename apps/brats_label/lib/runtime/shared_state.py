"""Read-modify-write of the workspace's shared JSON files, safe across threads and processes.

The server, MONAI Label's training and scoring workers, and benchmark scripts all open the same
workspace. Each file is replaced atomically (``atomic.write_json``), which keeps readers safe; an
update that reads, changes and writes back also needs every other updater to wait, or one of two
concurrent updates is lost. ``flock`` on a sibling ``.lock`` file gives that: it holds between
processes and, since each call opens its own file description, between threads of one process.
"""

from __future__ import annotations

import copy
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .atomic import read_json, write_json


def lock_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock named after ``path`` (the file itself is not touched)."""
    target = lock_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def update_json(path: Path, change: Callable[[Any], Any], default: Any = None) -> Any:
    """Apply ``change`` to the file's content under the lock and write the result atomically (only when it
    differs: an unchanged file is not rewritten and flushed); returns it."""
    with file_lock(path):
        current = read_json(path, default)
        value = change(copy.deepcopy(current))
        if value != current or not Path(path).exists():
            write_json(value, path)
        return value
