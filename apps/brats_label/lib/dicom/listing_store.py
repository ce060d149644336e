"""The archive's listing as the server last made it, kept in SQLite so a restart lists only what changed.

One row per study: its instance count when listed (QIDO-RS's NumberOfStudyRelatedInstances, what tells a
full listing which studies changed) and what the listing found (its channels and geometry, or why it is not a
case). Rows change in one transaction per refresh, so a crash leaves the previous listing whole. Only the
server process writes; workers read it at start.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (uid TEXT PRIMARY KEY, instances INTEGER NOT NULL, entry TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class ListingStore:
    def __init__(self, path: Path, archive_url: str, writer: bool):
        """A listing made of another archive (the server pointed elsewhere) is dropped, not reused."""
        self._path = Path(path)
        self._writer = writer
        if writer:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()) as db, db:
                db.executescript(SCHEMA)
                if self._state(db, "archive") not in (None, archive_url):
                    db.execute("DELETE FROM studies")
                    db.execute("DELETE FROM state")
                db.execute("INSERT OR REPLACE INTO state VALUES ('archive', ?)", (archive_url,))
        self._archive_url = archive_url

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._path, timeout=30, isolation_level="DEFERRED")

    @staticmethod
    def _state(db: sqlite3.Connection, key: str) -> Optional[str]:
        row = db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def load(self) -> Tuple[Dict[str, Tuple[int, Dict[str, Any]]], Optional[int]]:
        """Every study's (instance count, entry), and the changes-feed position the listing has seen."""
        if not self._path.is_file():
            return {}, None
        with closing(self._connect()) as db:
            try:
                if self._state(db, "archive") != self._archive_url:
                    return {}, None
                rows = db.execute("SELECT uid, instances, entry FROM studies").fetchall()
                seq = self._state(db, "changes_seq")
            except sqlite3.OperationalError:  # not yet created by the server
                return {}, None
        return {uid: (instances, json.loads(entry)) for uid, instances, entry in rows}, (int(seq) if seq is not None else None)

    def commit(self, listed: Iterable[Tuple[str, int, Dict[str, Any]]], removed: Iterable[str], changes_seq: Optional[int]) -> None:
        """Studies listed again, studies gone, and the feed position: all or nothing."""
        if not self._writer:
            return
        with closing(self._connect()) as db, db:
            db.executemany("INSERT OR REPLACE INTO studies VALUES (?, ?, ?)", ((uid, n, json.dumps(entry)) for uid, n, entry in listed))
            db.executemany("DELETE FROM studies WHERE uid = ?", ((uid,) for uid in removed))
            if changes_seq is not None:
                db.execute("INSERT OR REPLACE INTO state VALUES ('changes_seq', ?)", (str(changes_seq),))
