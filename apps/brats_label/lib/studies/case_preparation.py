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


class ArrivalPreparation:
    """Studies the server has never opened, their volumes built (and a raw study prepared: aligned, brain extracted)
    one at a time while the server is idle, in the order it first listed them. A raw study's preparation (about
    20 s) is then done before anyone opens it, and a study that cannot be opened or prepared is a listed problem
    before Next Sample could pick it.

    ``unprepared()`` gives the listed studies whose volume is not current (never builds one); ``open_study(study)``
    builds it (the datastore's ``get_image_uri``); ``idle()`` says whether no auto-segmentation runs or waits.
    A study is tried once; a failure stays with the datastore's problems until a restart. The model's input is
    left to ``CasePreparation``: a study handed out, viewed or downloaded is still prepared for its annotator."""

    def __init__(self, unprepared: Callable[[], list], open_study: Callable[[str], Any], idle: Callable[[], bool], interval_s: float):
        self._unprepared, self._open, self._idle = unprepared, open_study, idle
        self._interval_s = interval_s
        self._first_seen: Dict[str, float] = {}
        self._tried: set = set()
        self._recent: Deque[Dict[str, Any]] = deque(maxlen=RECENT_KEPT)
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._loop, name="arrival-preparation", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def step(self) -> str:
        """Build the oldest unopened study's volume if the server is idle; the study built, or ''."""
        now = time.monotonic()
        waiting = [s for s in self._unprepared() if s not in self._tried]
        for study in waiting:
            self._first_seen.setdefault(study, now)
        if not waiting or not self._idle():
            return ""
        study = min(waiting, key=lambda s: (self._first_seen[s], s))
        self._tried.add(study)
        started = time.monotonic()
        try:
            self._open(study)
            outcome = "prepared"
        except Exception as e:  # the datastore lists the study's problem with its reason
            outcome = f"failed: {e}"
        with self._lock:
            self._recent.append({"study": study, "outcome": outcome, "seconds": round(time.monotonic() - started, 2)})
        return study

    def status(self) -> Dict[str, Any]:
        with self._lock:
            return {"opened": len(self._tried), "recent": list(self._recent)}

    def _loop(self) -> None:
        # the next study straight after one is built (a batch of arrivals is not spaced out by the interval);
        # the interval is waited only when nothing was waiting or the server was busy
        built = ""
        while not self._stop.wait(0.0 if built else self._interval_s):
            try:
                built = self.step()
            except Exception as e:  # a listing error now must not end preparation for good
                built = ""
                logger.warning(f"Preparing newly arrived studies: {e}")
