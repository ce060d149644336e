"""Studies prepared ahead of their first auto-segmentation, in the background.

A study's first auto-segmentation reads its 4-channel volume (fetched from the archive if it was never opened) and
resamples it to the model's grid: on the cpu profile that took as long as the forward pass. It is done before the
annotator asks when the study is handed out by Next Sample, and when the viewer starts loading it through the
server's DICOMweb proxy (a study opened from the study list). One thread, in arrival order; a study is prepared
at most once per ``again_s`` (the viewer asks for each series' metadata), and at most ``queue_max`` wait (an
annotator paging through the study list does not queue the archive).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Deque, Dict

logger = logging.getLogger(__name__)

RECENT_KEPT = 20  # preparations the status lists


class CasePreparation:
    def __init__(self, prepare: Callable[[str], None], again_s: float, queue_max: int):
        self._prepare = prepare
        self._again_s, self._queue_max = again_s, queue_max
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="case-preparation")
        self._lock = threading.Lock()
        self._asked: Dict[str, float] = {}  # study -> when it was last queued
        self._pending = 0
        self._recent: Deque[Dict[str, Any]] = deque(maxlen=RECENT_KEPT)

    def submit(self, study: str, why: str) -> bool:
        """Queue a study's preparation; False when it was queued recently, or too many wait."""
        now = time.monotonic()
        with self._lock:
            self._asked = {s: at for s, at in self._asked.items() if now - at < self._again_s}
            if study in self._asked or self._pending >= self._queue_max:
                return False
            self._asked[study] = now
            self._pending += 1
        self._executor.submit(self._run, study, why)
        return True

    def _run(self, study: str, why: str) -> None:
        started = time.monotonic()
        try:
            self._prepare(study)
            outcome = "prepared"
        except Exception as e:  # the datastore lists the study's problem; the annotator's next request says why
            logger.warning(f"Study {study} could not be prepared: {e}")
            outcome = f"failed: {e}"
        with self._lock:
            self._pending -= 1
            self._recent.append({"study": study, "why": why, "outcome": outcome, "seconds": round(time.monotonic() - started, 2)})

    def status(self) -> Dict[str, Any]:
        with self._lock:
            return {"pending": self._pending, "recent": list(self._recent)}
