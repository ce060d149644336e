"""The one timestamp format of the workspace's records: UTC, ISO 8601, microseconds.

Records are compared as text (labels saved since a training started, which SEG is newer), which is
only right while every writer uses this format.
"""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
