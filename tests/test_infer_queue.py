"""Auto-segmentation requests are served in the order they arrive, as many at once as configured."""

from __future__ import annotations

import threading
import time

import pytest

from lib.runtime.infer_queue import FairQueue


@pytest.mark.parametrize("concurrency", [1, 2])
def test_requests_run_in_arrival_order_and_never_more_than_the_concurrency(concurrency):
    queue = FairQueue(concurrency)
    started, running, peak = [], [0], [0]
    lock = threading.Lock()

    def request(number: int) -> None:
        with queue.turn():
            with lock:
                started.append(number)
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.02)
            with lock:
                running[0] -= 1

    threads = []
    for number in range(12):
        thread = threading.Thread(target=request, args=(number,))
        thread.start()
        threads.append(thread)
        time.sleep(0.003)  # arrive one after another
    for thread in threads:
        thread.join(10)
    assert started == list(range(12)), "first come, first served"
    assert peak[0] == concurrency
    assert queue.status()["served"] == 12 and queue.status()["waiting"] == 0 and queue.status()["running"] == 0


def test_a_failing_request_lets_the_next_one_go():
    queue = FairQueue(1)
    with pytest.raises(RuntimeError):
        with queue.turn():
            raise RuntimeError("inference failed")
    done = threading.Event()
    threading.Thread(target=lambda: (queue.turn().__enter__(), done.set())).start()
    assert done.wait(2)
