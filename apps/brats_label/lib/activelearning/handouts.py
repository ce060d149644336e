"""Which annotator has been handed which case, until when.

Two annotators pressing "Next sample" together must not get the same case; a case nobody finishes is
offered again once its hand-out expires. Kept on disk so a restart does not hand a case out twice.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Dict, Optional, Set

from ..runtime.atomic import read_json, write_json
from ..runtime.shared_state import file_lock


class HandOuts:
    def __init__(self, path: Path, ttl_s: float, clock=time.time):
        self.path = Path(path)
        self.ttl_s = ttl_s
        self.clock = clock
        self.lock = threading.RLock()  # held by a strategy across choose-and-reserve

    def _active(self) -> Dict[str, Dict]:
        now = self.clock()
        return {case: h for case, h in read_json(self.path, {}).items() if h["until"] > now}

    def taken_by_others(self, client: str) -> Set[str]:
        with self.lock:
            return {case for case, h in self._active().items() if h["client"] != client}

    def reserve(self, case: str, client: str) -> float:
        with self.lock, file_lock(self.path):
            active = self._active()
            for other in [c for c, h in active.items() if h["client"] == client]:
                del active[other]  # an annotator works on one handed-out case at a time
            until = self.clock() + self.ttl_s
            active[case] = {"client": client, "until": until}
            write_json(active, self.path)
            return until

    def release(self, case: str, clients: Set[str]) -> bool:
        """The study's hand-out ends if one of ``clients`` holds it (they saved its label): a study read twice is then
        free for its second reader at once. Whether one ended."""
        with self.lock, file_lock(self.path):
            active = self._active()
            if case not in active or active[case]["client"] not in clients:
                return False
            del active[case]
            write_json(active, self.path)
            return True

    def active(self) -> int:
        """How many studies are handed out now."""
        with self.lock:
            return len(self._active())

    def holder(self, case: str) -> Optional[str]:
        with self.lock:
            handout = self._active().get(case)
            return handout["client"] if handout else None
