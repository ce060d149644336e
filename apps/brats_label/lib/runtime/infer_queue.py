"""Auto-segmentation requests take turns, first come first served.

On a CPU, eight inferences at once each take eight times as long, so every annotator waits for the
slowest; one (or a few, on a GPU) at a time, in arrival order, gives the first in line their answer
soonest and the same mean throughput. ``threading.Lock`` promises no order, so waiting requests hold
numbered tickets.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator


class FairQueue:
    def __init__(self, concurrency: int = 1):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self._condition = threading.Condition()
        self._next_ticket = 0
        self._serving = 0  # tickets below this may run
        self._running = 0
        self._served = 0
        self._waited_s = 0.0

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this request's turn, run, and let the next in line go."""
        arrived = time.monotonic()
        with self._condition:
            ticket = self._next_ticket
            self._next_ticket += 1
            while not (ticket == self._serving and self._running < self.concurrency):
                self._condition.wait()
            self._serving += 1  # the next ticket is now at the head of the line
            self._running += 1
            self._waited_s += time.monotonic() - arrived
            self._condition.notify_all()  # with concurrency > 1 the next may start too
        try:
            yield
        finally:
            with self._condition:
                self._running -= 1
                self._served += 1
                self._condition.notify_all()

    def status(self) -> Dict[str, Any]:
        with self._condition:
            waiting = self._next_ticket - self._serving
            return {
                "running": self._running,
                "waiting": waiting,
                "concurrency": self.concurrency,
                "served": self._served,
                "mean_wait_s": round(self._waited_s / max(1, self._served + self._running), 2),
            }
