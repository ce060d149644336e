"""Model versions: every training makes one; only one that is not worse is served.

Each version keeps its weights, its parent (the model it started from), its start and end time, the
labelled cases it trained on, its training curve, and its validation Dice (TC, WT, ET, mean) on the
held-out cases. The parent is evaluated on the same held-out cases in the same run, so the comparison
is exact even when more labels arrive between versions. Promoting a version (automatically when it
is not worse than its parent beyond the tolerance, or by hand to roll back) copies its weights over
the served model atomically; inference reloads by file time and rescoring follows the new version.
A training worker only asks for its version to be served (``promotion: pending``); the server process
serves it, before it answers anything that depends on the served model.

    <model_dir>/versions/<id>/model.pt, version.json, training_curve.png
    <model_dir>/serving.json        {"version": id, "history": [...]}
    <model_dir>/versions/next_id    the next version number: ids are never reused, even when a folder is removed

Ids are ``v<N>`` and sort by N (v10 after v9).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import NotFound
from ..runtime.atomic import atomic_path, read_json, write_json
from ..runtime.clock import utc_now
from ..runtime.processes import in_worker_process
from ..runtime.shared_state import file_lock

PREFIX = "v"


def version_number(version: str) -> Optional[int]:
    """N of 'vN'; None for anything else."""
    digits = version[len(PREFIX) :]
    return int(digits) if version.startswith(PREFIX) and digits.isdigit() else None


def _sort_key(record: Dict[str, Any]) -> Tuple[int, str]:
    number = version_number(str(record.get("id", "")))
    return (number if number is not None else -1, str(record.get("id", "")))


class ModelVersions:
    def __init__(self, model_dir: Path, serving_path: Path):
        self.folder = Path(model_dir) / "versions"
        self.serving_file = Path(model_dir) / "serving.json"
        self.serving_path = Path(serving_path)
        self._lock = threading.Lock()
        self._applying = threading.Lock()

    def _record_path(self, version: str) -> Path:
        return self.folder / version / "version.json"

    def list(self) -> List[Dict[str, Any]]:
        if not self.folder.is_dir():
            return []
        serving = self.serving()
        records = sorted((read_json(p, {}) for p in self.folder.glob("*/version.json")), key=_sort_key)
        return [{**r, "serving": r.get("id") == serving} for r in records]

    def get(self, version: str) -> Dict[str, Any]:
        record = read_json(self._record_path(version), None) if version_number(version) is not None else None
        if record is None:
            known = ", ".join(r["id"] for r in self.list()) or "none yet"
            raise NotFound(f"model version '{version}' does not exist (versions: {known})")
        return record

    def serving(self) -> Optional[str]:
        return read_json(self.serving_file, {}).get("version")

    def _take_next_number(self) -> int:
        """One more than any number ever given (the counter file) or present (a folder), and counted up."""
        counter = self.folder / "next_id"
        present = [version_number(p.name) for p in self.folder.iterdir()] if self.folder.is_dir() else []
        number = max([n + 1 for n in present if n is not None] + [int(read_json(counter, 0))])
        write_json(number + 1, counter)
        return number

    def add(self, weights: Path, record: Dict[str, Any], curve: Optional[Path] = None) -> Dict[str, Any]:
        """Keep a new version (weights copied); its id is the next number, never one used before."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._lock, file_lock(self.folder / "next_id"):
            version = f"{PREFIX}{self._take_next_number()}"
            target = self.folder / version
            target.mkdir(parents=True, exist_ok=False)
            with atomic_path(target / "model.pt") as tmp:
                shutil.copyfile(weights, tmp)
            if curve is not None and curve.exists():
                shutil.copyfile(curve, target / "training_curve.png")
            record = {"id": version, "created_at": utc_now(), **record}
            write_json(record, target / "version.json")
            return record

    def update(self, version: str, **fields: Any) -> Dict[str, Any]:
        with file_lock(self._record_path(version)):
            record = {**self.get(version), **fields}
            write_json(record, self._record_path(version))
        return record

    def request_promotion(self, version: str, reason: str) -> None:
        """A training decided this version is to be served. The server process serves it (``apply_promotions``);
        a training run inside the server (tests, benchmarks) serves it at once."""
        self.update(version, promotion="pending", promotion_reason=reason)
        if not in_worker_process():
            self.apply_promotions()

    def to_be_served(self) -> Optional[Path]:
        """The weights served once the server applies the promotions trainings asked for: the newest pending
        version's, else those served now. Read-only, so a training worker may ask."""
        pending = [r for r in self.list() if r.get("promotion") == "pending"]
        if pending:
            return self.folder / pending[-1]["id"] / "model.pt"
        return self.serving_path if self.serving_path.exists() else None

    def apply_promotions(self) -> List[str]:
        """Serve the versions trainings asked for, oldest first (server process only); the ids served."""
        if in_worker_process() or not self.folder.is_dir():
            return []
        with self._applying:
            pending = [r for r in self.list() if r.get("promotion") == "pending"]
            for record in pending:
                self.promote(record["id"], record.get("promotion_reason", "training"))
                self.update(record["id"], promotion="applied")
        return [r["id"] for r in pending]

    def promote(self, version: str, reason: str) -> Dict[str, Any]:
        """Serve this version from now on (also how a rollback is done)."""
        record = self.get(version)
        with self._lock, file_lock(self.serving_file):
            with atomic_path(self.serving_path) as tmp:
                shutil.copyfile(self.folder / version / "model.pt", tmp)
            state = read_json(self.serving_file, {})
            history = state.get("history", []) + [{"version": version, "at": utc_now(), "reason": reason}]
            write_json({"version": version, "history": history}, self.serving_file)
        return record
