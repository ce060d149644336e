"""Crash-safe writes: write a temporary file beside the target, flush it to disk, then rename.

A reader sees either the old file or the new one, never a half-written one, and a crash in the
middle leaves the previous version in place.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(target: Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``target``.

    ``durable`` False skips the flushes to disk: readers still never see a half-written file, but after a power
    cut the file may be empty. Only for what can be rebuilt and is checked before use (the case cache)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the permissions a plain open() would
    try:
        yield Path(tmp)
        if not durable:
            os.replace(tmp, target)
            return
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def nifti_image(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """The image every NIfTI of the project is written as: qform and sform both the affine (scanner space)."""
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return image


def write_nifti(array: np.ndarray, affine: np.ndarray, target: Path, durable: bool = True) -> Path:
    with atomic_path(target, durable) as tmp:
        nib.save(nifti_image(array, affine), str(tmp))
    return Path(target)


def write_json(data: Any, target: Path, durable: bool = True) -> Path:
    with atomic_path(target, durable) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return Path(target)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default
