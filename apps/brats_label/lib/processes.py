"""Which process this is: the server writes the workspace's shared state, MONAI Label's workers read it."""

from __future__ import annotations

import sys

WORKER_MODULE = "monailabel.interfaces.utils.app"  # how MONAI Label 0.8.5 runs training, scoring and batch inference


def in_worker_process() -> bool:
    """True in MONAI Label's task workers (``python -m monailabel.interfaces.utils.app``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return bool(spec and spec.name == WORKER_MODULE)
