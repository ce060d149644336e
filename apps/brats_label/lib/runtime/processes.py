"""Which process this is: the server writes the workspace's shared state, MONAI Label's workers read it."""

from __future__ import annotations

import os
import sys

WORKER_MODULE = "monailabel.interfaces.utils.app"  # how MONAI Label 0.8.5 runs training, scoring and batch inference


_declared_worker = False


def declare_worker_process() -> None:
    """This process reads the workspace and writes only what a training worker writes (a distributed
    training's ranks, ``scripts/train_distributed.py``); the server, if one runs, serves what it makes."""
    global _declared_worker
    _declared_worker = True


def in_worker_process() -> bool:
    """True in MONAI Label's task workers (``python -m monailabel.interfaces.utils.app``) and declared workers."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return _declared_worker or bool(spec and spec.name == WORKER_MODULE)


def yield_cpu_if_worker(niceness: int) -> None:
    """A worker (training, scoring) runs at ``niceness``, so that the server's answers to annotators come first on a
    machine whose cores they share; the server itself is left as it is."""
    if in_worker_process() and os.getpriority(os.PRIO_PROCESS, 0) < niceness:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
