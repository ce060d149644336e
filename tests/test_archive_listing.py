"""The listing of a real Orthanc as it grows: only what changed is asked for, and the listing survives restarts.

Studies here are small (four 8x8 MR series of 3 slices); what is counted is the requests the server makes.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import requests

from lib.config import IMPORT_SERIES
from lib.dicom.archive import Archive
from lib.dicom.mr_series import StudyTags, uid_from, volume_to_mr_series
from lib.dicom.orthanc_changes import OrthancChanges
from lib.studies.dicomweb_datastore import DicomWebStudyDatastore

STUDY_REQUESTS = ("series", "study_metadata", "series_metadata", "acquisition")


class CountingArchive(Archive):
    """The real archive client, counting the study-level requests the datastore makes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: Counter = Counter()

    def studies(self, *args, **kwargs):
        self.calls["studies"] += 1
        return super().studies(*args, **kwargs)

    def __getattribute__(self, name):
        if name in STUDY_REQUESTS:
            object.__getattribute__(self, "calls")[name] += 1
        return object.__getattribute__(self, name)


def store_study(orthanc, name: str, without: str = "") -> str:
    """A small four-sequence study (``without`` one of them: a study the server refuses, listed as a problem)."""
    seed = f"listing-test/{name}"
    tags = StudyTags(name, f"{name}^", uid_from(seed, "study"), name[-16:], "20260101", "120000")
    frame = uid_from(seed, "frame")
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    datasets = []
    for channel, (number, description) in IMPORT_SERIES.items():
        if channel == without:
            continue
        volume = rng.integers(0, 1000, (8, 8, 3)).astype(np.int16)
        datasets += volume_to_mr_series(volume, np.diag([2.0, 2.0, 2.0, 1.0]), tags, description, number, f"{seed}/{channel}", frame)
    orthanc.archive().store(datasets)
    return tags.study_instance_uid


@pytest.fixture(scope="module")
def studies(orthanc):
    return [store_study(orthanc, f"LISTING-{i}") for i in range(3)]


def counting(orthanc) -> CountingArchive:
    return CountingArchive(orthanc.dicomweb, orthanc.user, orthanc.password)


def test_orthanc_is_recognised_by_its_changes_feed(orthanc):
    assert OrthancChanges.detect(orthanc.archive()) is not None
    assert OrthancChanges.detect(Archive(f"{orthanc.url}/not-dicomweb/x", orthanc.user, orthanc.password)) is None


def test_a_refresh_asks_only_about_the_studies_that_changed(orthanc, studies, tmp_path):
    archive = counting(orthanc)
    ds = DicomWebStudyDatastore(archive, tmp_path / "workspace", refresh_s=0)
    assert set(studies) <= set(ds.list_images())
    assert archive.calls["studies"] == 1, "the first listing searches every study once"
    archive.calls.clear()
    ds.refresh()
    assert sum(archive.calls.values()) == 0, f"nothing changed, nothing asked: {archive.calls}"
    new = store_study(orthanc, "LISTING-new")
    ds.refresh()
    assert new in ds.list_images()
    assert archive.calls["studies"] == 0, "no search over every study: the changes feed named the new one"
    assert archive.calls["series"] + archive.calls["study_metadata"] == 1, f"one study listed again: {archive.calls}"


def test_a_restart_lists_nothing_again_when_nothing_changed(orthanc, studies, tmp_path):
    first = DicomWebStudyDatastore(orthanc.archive(), tmp_path / "workspace", refresh_s=0)
    archive = counting(orthanc)
    restarted = DicomWebStudyDatastore(archive, tmp_path / "workspace", refresh_s=0)
    assert restarted.list_images() == first.list_images()
    assert {s: restarted.get_image_info(s) for s in studies} == {s: first.get_image_info(s) for s in studies}
    assert sum(archive.calls.values()) == 0, f"the listing came from the workspace: {archive.calls}"
    added = store_study(orthanc, "LISTING-while-down")  # arrives while the server is stopped
    again = DicomWebStudyDatastore(counting(orthanc), tmp_path / "workspace", refresh_s=0)
    assert added in again.list_images()


def test_a_full_listing_drops_deleted_studies_and_lists_changed_ones(orthanc, studies, tmp_path):
    ds = DicomWebStudyDatastore(orthanc.archive(), tmp_path / "workspace", refresh_s=0, reconcile_s=0)  # as archives without a feed
    gone = store_study(orthanc, "LISTING-deleted")
    ds.refresh()
    assert gone in ds.list_images()
    orthanc_id = requests.post(f"{orthanc.url}/tools/lookup", data=gone, auth=(orthanc.user, orthanc.password), timeout=30).json()[0]["ID"]
    requests.delete(f"{orthanc.url}/studies/{orthanc_id}", auth=(orthanc.user, orthanc.password), timeout=30).raise_for_status()
    ds.refresh()
    assert gone not in ds.list_images() and set(studies) <= set(ds.list_images())
    restarted = DicomWebStudyDatastore(orthanc.archive(), tmp_path / "workspace", refresh_s=0)
    assert gone not in restarted.list_images(), "the deletion was committed to the kept listing"


def test_a_study_deleted_from_orthanc_leaves_the_listing_and_the_problems_at_the_next_refresh(orthanc, studies, tmp_path):
    """Orthanc's changes feed logs no deletion; its study count tells one happened, so the next refresh (not the full
    listing every ``reconcile_s``, 600 s) drops the study, and a refused one from the problems."""
    good, refused = store_study(orthanc, "LISTING-to-delete"), store_study(orthanc, "LISTING-refused", without="flair")
    ds = DicomWebStudyDatastore(orthanc.archive(), tmp_path / "workspace", refresh_s=0)  # the default reconcile_s
    ds.refresh()
    assert good in ds.list_images() and refused in [p.study_id for p in ds.problems()]
    for uid in (good, refused):
        orthanc_id = requests.post(f"{orthanc.url}/tools/lookup", data=uid, auth=(orthanc.user, orthanc.password), timeout=30).json()[0]["ID"]
        requests.delete(f"{orthanc.url}/studies/{orthanc_id}", auth=(orthanc.user, orthanc.password), timeout=30).raise_for_status()
    ds.refresh()
    assert good not in ds.list_images() and refused not in [p.study_id for p in ds.problems()]
    assert set(studies) <= set(ds.list_images()), "the others stay"


def test_the_listing_of_another_archive_is_not_reused(orthanc, studies, tmp_path):
    DicomWebStudyDatastore(orthanc.archive(), tmp_path / "workspace", refresh_s=0)
    other = Archive(f"{orthanc.url}/dicom-web-elsewhere", orthanc.user, orthanc.password)  # answers nothing
    ds = DicomWebStudyDatastore(other, tmp_path / "workspace", refresh_s=0)
    assert ds.list_images() == []


def test_studies_listed_by_an_earlier_version_are_listed_again_for_their_patient_and_date(orthanc, studies, tmp_path):
    """An earlier version kept no patient pseudonym or study date: its kept listing would leave every study off the
    timelines forever (only changed studies are listed again), so the first refresh lists those studies again."""
    import sqlite3

    DicomWebStudyDatastore(orthanc.archive(), tmp_path / "workspace", refresh_s=0)
    with sqlite3.connect(tmp_path / "workspace" / "archive_listing.sqlite") as db:  # as the earlier version wrote it
        for uid, entry in db.execute("SELECT uid, entry FROM studies").fetchall():
            old = {k: v for k, v in json.loads(entry).items() if k not in ("patient", "acquired")}
            db.execute("UPDATE studies SET entry = ? WHERE uid = ?", (json.dumps(old), uid))
    archive = counting(orthanc)
    upgraded = DicomWebStudyDatastore(archive, tmp_path / "workspace", refresh_s=0)
    assert archive.calls["series"] + archive.calls["study_metadata"] >= len(studies), f"listed again: {archive.calls}"
    moments = [upgraded.patient_studies(uid) for uid in studies]
    assert all(len(found) == 1 and found[0][1].acquired == "2026-01-01T12:00:00" for found in moments), moments
