"""Uncertainty scores on disk, one record per case, stamped with the model version that made them.

A score is used only while its model version is the one being served; a restart finds every score
already written, so rescoring resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Dict, Optional

from ..runtime.atomic import read_json, write_json

PROGRESS_FILE = "_progress.json"


def model_version(path: Optional[str]) -> Optional[str]:
    """Content hash of a weights file: the same weights are the same version wherever they are copied."""
    if not path or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class ScoreStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, case: str) -> Path:
        return self.folder / f"{case}.json"

    def save(self, case: str, version: str, record: Dict[str, Any]) -> Dict[str, Any]:
        record = {**record, "model_version": version, "scored_at": datetime.now(UTC).isoformat()}
        write_json(record, self._path(case))
        return record

    def save_failure(self, case: str, version: str, reason: str) -> Dict[str, Any]:
        """The case could not be scored with this model: kept with the reason, not retried until the model changes."""
        return self.save(case, version, {"score": None, "failed": reason})

    def get(self, case: str) -> Optional[Dict[str, Any]]:
        return read_json(self._path(case))

    def attempted(self, case: str, version: Optional[str]) -> Optional[Dict[str, Any]]:
        """The record made for this model version, scored or failed."""
        record = self.get(case)
        return record if record and version and record.get("model_version") == version else None

    def current(self, case: str, version: Optional[str]) -> Optional[Dict[str, Any]]:
        """The score made for this model version (None when none, or when scoring failed)."""
        record = self.attempted(case, version)
        return record if record and record.get("score") is not None else None

    def set_progress(self, **progress: Any) -> None:
        with self._lock:
            write_json(progress, self.folder / PROGRESS_FILE)

    def progress(self) -> Dict[str, Any]:
        return read_json(self.folder / PROGRESS_FILE, {})


class ServedModelVersion:
    """Version of the weights file being served, re-hashed only when the file changes."""

    def __init__(self, path_fn):
        self.path_fn = path_fn
        self._key = None
        self._version: Optional[str] = None
        self._lock = threading.Lock()

    def __call__(self) -> Optional[str]:
        path = self.path_fn()
        if not path or not Path(path).is_file():
            return None
        stat = Path(path).stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key != self._key:
                self._key, self._version = key, model_version(path)
            return self._version
