"""The one timestamp format of the workspace's records: UTC, ISO 8601, microseconds.

Records are compared as text (labels saved since a training started, which SEG is newer), which is
only right while every writer uses this format.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Tuple

MONAI_LABEL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # a MONAI Label task's start_ts: server-local time, whole seconds


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def task_started_utc(start_ts: str) -> Tuple[str, float]:
    """MONAI Label's local ``start_ts`` as this workspace's UTC text and as epoch seconds: the end of that
    whole second, since a label saved within it came before the worker read its training data."""
    local = datetime.strptime(start_ts, MONAI_LABEL_TIME_FORMAT).astimezone() + timedelta(microseconds=999_999)
    return local.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), local.timestamp()
