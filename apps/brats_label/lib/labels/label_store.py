"""Every label version of every case, each committed as one crash-safe unit; the current label is the newest.

Both datastores (folder and DICOMweb) keep their labels here::

    label_store/<case>/<stamp>_<tag>/label.nii.gz   the voxels (absent in a removal)
                                    /record.json    who, when, from which client, voxel counts (never changed)
                                    /status.json    what happened since (archive: pending -> stored, SEG UIDs)

A commit writes the version into a hidden temporary folder beside the others, flushes it, and
renames the folder into place: one rename, so after a crash at any moment (kill -9, power loss)
the case holds either the whole new version (voxels, record) or none of it, and the previous
version is still the current one. Nothing is ever overwritten: the history is the store itself.
A removal is a version without voxels. ``<stamp>`` is UTC time (``%Y%m%dT%H%M%S.%fZ``), so a
folder listing sorts by time. Left-over temporary folders of an interrupted commit are removed
when the store opens.

Case ids and tags become folder names only when they pass an allow-list, and every path is checked
to stay inside the store.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import nibabel as nib
import numpy as np

from ..config import LABEL_TAGS, READING_TAG
from ..errors import InvalidInput
from ..runtime.atomic import read_json, write_json
from ..runtime.clock import utc_now
from ..runtime.shared_state import file_lock

logger = logging.getLogger(__name__)

LABEL_FILE = "label.nii.gz"
RECORD_FILE = "record.json"
STATUS_FILE = "status.json"
TMP_PREFIX = ".commit-"
CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch: '$' would let a trailing newline through


def check_case_id(case: str) -> str:
    if not isinstance(case, str) or not CASE_ID.fullmatch(case) or ".." in case:
        raise InvalidInput(f"'{case[:80] if isinstance(case, str) else case!r}' is not a valid study id: letters, digits, '.', '_' and '-' only")
    return case


def check_tag(tag: str) -> str:
    """A tag a client may name."""
    if tag not in LABEL_TAGS:
        raise InvalidInput(f"label tag '{str(tag)[:40]}' is not one of this server's tags ({', '.join(LABEL_TAGS)})")
    return tag


STORED_TAGS = (*LABEL_TAGS, READING_TAG)


def check_stored_tag(tag: str) -> str:
    """A tag the store keeps: a client's, or a reading of a study read twice (the server's own)."""
    if tag not in STORED_TAGS:
        raise InvalidInput(f"label tag '{str(tag)[:40]}' is not one of this server's tags ({', '.join(LABEL_TAGS)})")
    return tag


STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"


def stamp_of(saved_at: str) -> str:
    """'2026-11-25T09:11:53.123456Z' -> '20261125T091153.123456Z': sorts as the time does."""
    return saved_at.replace("-", "").replace(":", "")


@dataclass(frozen=True)
class LabelVersion:
    case: str
    name: str  # <stamp>_<tag>
    folder: Path

    @property
    def tag(self) -> str:
        return self.name.split("_", 1)[1]

    @property
    def label_path(self) -> Path:
        return self.folder / LABEL_FILE

    @property
    def removed(self) -> bool:
        return not self.label_path.exists()

    def record(self) -> Dict[str, Any]:
        return read_json(self.folder / RECORD_FILE, {})

    def info(self) -> Dict[str, Any]:
        """The record with what happened since (status) over it."""
        return {**self.record(), **read_json(self.folder / STATUS_FILE, {})}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LabelStore:
    def __init__(self, root: Path, writer: bool = True):
        """``writer``: this process commits (the server); others (training, scoring workers) only read."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.writer = writer
        self._case_locks: Dict[str, threading.Lock] = defaultdict(threading.Lock)
        if writer:
            self._remove_interrupted_commits()

    # --- paths ------------------------------------------------------------------------------------------
    def _case_dir(self, case: str) -> Path:
        folder = (self.root / check_case_id(case)).resolve()
        if folder.parent != self.root.resolve():
            raise InvalidInput(f"'{case}' is not a valid study id")
        return folder

    def _remove_interrupted_commits(self) -> None:
        for tmp in self.root.glob(f"*/{TMP_PREFIX}*"):
            logger.warning(f"removing an interrupted label commit: {tmp}")
            shutil.rmtree(tmp, ignore_errors=True)

    # --- reading ------------------------------------------------------------------------------------------
    def versions(self, case: str, tag: Optional[str] = None) -> List[LabelVersion]:
        """Committed versions of a case, oldest first (optionally of one tag)."""
        folder = self._case_dir(case)
        if not folder.is_dir():
            return []
        names = sorted(n for n in os.listdir(folder) if not n.startswith(".") and "_" in n)
        found = [LabelVersion(case, n, folder / n) for n in names]
        return [v for v in found if tag is None or v.tag == tag]

    def current(self, case: str, tag: str) -> Optional[LabelVersion]:
        """The newest version of the tag, unless that version removed it."""
        versions = self.versions(case, check_stored_tag(tag))
        return versions[-1] if versions and not versions[-1].removed else None

    def cases(self) -> List[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and CASE_ID.match(p.name))

    def tags(self, case: str) -> List[str]:
        return sorted({v.tag for v in self.versions(case)} - {""})

    def history(self, case: Optional[str] = None) -> Iterator[Tuple[str, Dict[str, Any]]]:
        """(case, record and status) for every version ever committed, oldest first per case."""
        for each in [case] if case else self.cases():
            for version in self.versions(each):
                yield each, version.info()

    # --- writing ------------------------------------------------------------------------------------------
    def _check_writer(self) -> None:
        if not self.writer:
            raise RuntimeError("labels are written by the server process only (this is a worker)")

    def commit(self, case: str, tag: str, label: Optional[np.ndarray], affine: Optional[np.ndarray], record: Dict[str, Any], saved_at: Optional[str] = None) -> LabelVersion:
        """Write one version (``label`` None: a removal) as a unit; returns it once it is on disk.

        ``saved_at`` (UTC, ``clock.utc_now`` format) only for versions made earlier (migration)."""
        self._check_writer()
        check_stored_tag(tag)
        folder = self._case_dir(case)
        folder.mkdir(parents=True, exist_ok=True)
        with self._case_locks[case], file_lock(folder / "commit"):
            saved_at = self._after_latest(case, saved_at or utc_now())
            name = f"{stamp_of(saved_at)}_{tag}"
            record = {**record, "tag": tag, ("saved_at" if label is not None else "removed_at"): saved_at}
            tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=folder))
            try:
                if label is not None:
                    image = nib.Nifti1Image(label, affine)
                    image.set_qform(affine, code=1)
                    image.set_sform(affine, code=1)
                    nib.save(image, str(tmp / LABEL_FILE))
                (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
                for each in os.listdir(tmp):
                    with open(tmp / each, "rb") as f:
                        os.fsync(f.fileno())
                _fsync_dir(tmp)
                os.rename(tmp, folder / name)  # the commit
                _fsync_dir(folder)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return LabelVersion(case, name, folder / name)

    def _after_latest(self, case: str, saved_at: str) -> str:
        """``saved_at``, or a microsecond after the newest version when the clock is not past it (order of commits kept)."""
        latest = self.versions(case)
        if not latest:
            return saved_at
        newest = datetime.strptime(latest[-1].name.split("_", 1)[0], STAMP_FORMAT).replace(tzinfo=UTC)
        if stamp_of(saved_at) > latest[-1].name.split("_", 1)[0]:
            return saved_at
        return (newest + timedelta(microseconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def update_status(self, version: LabelVersion, fields: Dict[str, Any]) -> Dict[str, Any]:
        """Record what happened to a version since it was committed (its record is never changed)."""
        return self.amend_status(version, lambda _: fields)

    def amend_status(self, version: LabelVersion, change: Callable[[Dict[str, Any]], Dict[str, Any]]) -> Dict[str, Any]:
        """As ``update_status``, with fields computed from the status as it is under the lock (a list that grows)."""
        self._check_writer()
        path = version.folder / STATUS_FILE
        with file_lock(path):
            current = read_json(path, {})
            status = {**current, **change(current)}
            write_json(status, path)
        return status


def migrate_flat_layout(labels_dir: Path, store: LabelStore) -> int:
    """Labels written before the store existed (``labels/history/<case>/<stamp>_<tag>.nii.gz`` + ``.json``)
    become versions, in their order; the old folder is left as it was. Runs once (a marker file)."""
    history = Path(labels_dir) / "history"
    marker = Path(labels_dir) / ".migrated_to_label_store"
    if not history.is_dir() or marker.exists():
        return 0
    moved = 0
    for case_dir in sorted(p for p in history.iterdir() if p.is_dir()):
        records = {p: read_json(p, {}) for p in case_dir.glob("*.json")}
        for record_path, record in sorted(records.items(), key=lambda item: item[1].get("saved_at") or item[1].get("removed_at", "")):
            tag = record.get("tag", "final")
            image_path = record_path.with_name(record_path.name[: -len(".json")] + ".nii.gz")
            if image_path.exists():
                image = nib.load(str(image_path))
                label = np.asarray(image.dataobj, dtype=np.uint8)
                store.commit(case_dir.name, tag, label, image.affine, {**record, "migrated_from": str(image_path)}, saved_at=record.get("saved_at"))
            else:
                store.commit(case_dir.name, tag, None, None, {**record, "migrated_from": str(record_path)}, saved_at=record.get("removed_at"))
            moved += 1
        current = read_json(Path(labels_dir) / "final" / f"{case_dir.name}.json", {})
        status = {k: v for k, v in current.items() if k == "archive" or k.startswith("seg_")}
        latest = store.current(case_dir.name, "final")
        if status and latest is not None:
            store.update_status(latest, status)  # e.g. a label still waiting to be sent to the archive
    marker.write_text(utc_now())
    logger.info(f"moved {moved} label versions from {labels_dir} into {store.root}")
    return moved
