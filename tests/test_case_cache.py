"""The case cache: a volume written through a temporary file, and temporary files a crash left behind removed."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from lib.config import CASE_PARTIAL_MAX_AGE_S
from lib.studies.case_cache import CaseCache, Preparation


def test_a_failed_write_leaves_neither_a_volume_nor_a_temporary_file(tmp_path):
    cache = CaseCache(tmp_path / "cases")

    def fails(path):
        path.write_bytes(b"half a volume")
        raise RuntimeError("the archive went away")

    with pytest.raises(RuntimeError):
        cache.get_written("1.2.3", "fp", fails)
    assert list((tmp_path / "cases").iterdir()) == []
    volume = cache.get("1.2.3", "fp", lambda: (np.zeros((4, 4, 4, 4), np.int16), np.eye(4), Preparation({})))
    assert volume.is_file() and cache.is_current("1.2.3", "fp") and not cache.is_current("1.2.3", "other")


def test_temporary_files_abandoned_by_a_crash_are_removed_at_start_and_recent_ones_kept(tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    abandoned, in_progress = folder / ".1.2.3.nii.abc123.nii", folder / ".1.2.4.nii.def456.nii"
    for path in (abandoned, in_progress):
        path.write_bytes(b"\0" * 1024)
    old = time.time() - CASE_PARTIAL_MAX_AGE_S - 60
    os.utime(abandoned, (old, old))
    CaseCache(folder)
    assert not abandoned.exists(), "a crash's leftover is removed"
    assert in_progress.exists(), "another process may be writing this one now"


def test_a_volume_stacked_by_a_release_before_preparation_is_made_again(tmp_path):
    """Its stamp names no preparation: a raw study cached then, with its series only placed by their headers,
    would otherwise be served unaligned for as long as its files stay the same."""
    cache = CaseCache(tmp_path / "cases")
    cache.get("1.2.3", "fp", lambda: (np.zeros((4, 4, 4, 4), np.int16), np.eye(4), Preparation({"seconds": 0.0})))
    stamp = json.loads((tmp_path / "cases" / "1.2.3.json").read_text())
    del stamp["preparation_version"], stamp["preparation"]
    (tmp_path / "cases" / "1.2.3.json").write_text(json.dumps(stamp))
    assert not cache.is_current("1.2.3", "fp") and cache.preparation("1.2.3") == {}
    cache.get("1.2.3", "fp", lambda: (np.ones((4, 4, 4, 4), np.int16), np.eye(4), Preparation({"seconds": 1.5})))
    assert cache.is_current("1.2.3", "fp") and cache.preparation("1.2.3") == {"seconds": 1.5}
