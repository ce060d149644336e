"""Imported first by ``main.py``: a MONAI Label worker process (training, scoring) yields the CPU to the server from
its first import on, not from its task's start.

A worker spends its first seconds importing torch, MONAI and the app (about 8 s of CPU on 2 cores). At the server's
priority that doubled the answers to an annotator's clicks while a scoring worker started after a model change
(``bench/click_latency.py``, 2026-12-06: clicks 2-5 of the first study 0.9-1.7 s against 0.6 s after it).
"""

from ..config import BACKGROUND_NICENESS
from .processes import yield_cpu_if_worker

yield_cpu_if_worker(BACKGROUND_NICENESS)
