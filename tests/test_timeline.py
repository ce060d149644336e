"""A patient's studies over time: grouped by a pseudonym, ordered by date, each region's volume and its change
against the previous study, the baseline and the nadir; from a folder's ``patients.csv`` through the real server."""

from __future__ import annotations

import io
import os
import shutil
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from PIL import Image

from lib.config import BRATS_2023
from lib.followup.timeline import FINAL_LABEL, NOT_SEGMENTED, TimelineStudy, timeline
from lib.model.transforms import region_volumes_ml, voxel_volume_ml
from lib.studies.folder_datastore import StudyFolderDatastore
from lib.studies.patients import KEY_FILE, Pseudonyms, dicom_acquired, iso_acquired

STUDIES = ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000", "BraTS-GLI-00004-000"]
PATIENT = "Doe^Jane-4411"  # what a lab's table holds; must never come back out


def volumes(wt: float, et: float) -> dict:
    return {"necrotic_core": 0.0, "edema": wt - et, "enhancing_tumour": et, "TC": et, "WT": wt}


def test_changes_are_against_the_previous_study_the_baseline_and_the_nadir():
    rows = timeline(
        [
            TimelineStudy("a", "2024-01-01", FINAL_LABEL, volumes(40.0, 10.0), {}),
            TimelineStudy("b", "2024-03-01", FINAL_LABEL, volumes(20.0, 4.0), {}),
            TimelineStudy("c", "2024-05-01", NOT_SEGMENTED, None, {}),
            TimelineStudy("d", "2024-07-01", FINAL_LABEL, volumes(30.0, 0.0), {}),
        ],
        BRATS_2023,
    )
    assert "change" not in rows[0] and "volumes_ml" not in rows[2] and rows[2]["volumes_from"] == NOT_SEGMENTED
    wt = rows[3]["change"]["WT"]
    assert wt["previous"] == {"ml": 10.0, "percent": 50.0}, "against b: the last study with volumes, c has none"
    assert wt["baseline"] == {"ml": -10.0, "percent": -25.0}
    assert wt["nadir"] == {"ml": 10.0, "percent": 50.0}, "the smallest earlier WT was b's 20 mL"
    et = rows[3]["change"]["enhancing_tumour"]
    assert et["previous"] == {"ml": -4.0, "percent": -100.0}
    later = timeline([TimelineStudy("x", "", FINAL_LABEL, volumes(5.0, 0.0), {}), TimelineStudy("y", "", FINAL_LABEL, volumes(6.0, 1.0), {})], BRATS_2023)
    assert later[1]["change"]["enhancing_tumour"]["baseline"] == {"ml": 1.0, "percent": None}, "no per cent against 0 mL"


def test_dicom_dates_and_table_dates_are_read_or_refused_with_the_form_expected():
    assert dicom_acquired("20240103", "093015.123") == "2024-01-03T09:30:15"
    assert dicom_acquired("20240103", "0930") == "2024-01-03T09:30:00"
    assert dicom_acquired("20240103", "") == "2024-01-03" and dicom_acquired("20240103", "996") == "2024-01-03"
    assert dicom_acquired("", "0930") == "" and dicom_acquired("2024-01-03") == ""
    assert iso_acquired(" 2024-01-03 ") == "2024-01-03" and iso_acquired("2024-01-03T09:30") == "2024-01-03T09:30:00"
    with pytest.raises(ValueError, match="2024-01-03"):
        iso_acquired("03/01/2024")


def test_a_pseudonym_is_stable_in_one_workspace_and_different_in_another(tmp_path):
    first, again, other = Pseudonyms(tmp_path / "a"), Pseudonyms(tmp_path / "a"), Pseudonyms(tmp_path / "b")
    assert first(PATIENT) == again(PATIENT) == first(f" {PATIENT} ") != first("Doe^John")
    assert first(PATIENT) != other(PATIENT), "a key of its own per workspace"
    assert PATIENT not in first(PATIENT) and first(PATIENT).startswith("patient-")
    assert stat.S_IMODE(os.stat(tmp_path / "a" / KEY_FILE).st_mode) == 0o600
    assert [p.name for p in (tmp_path / "a").iterdir()] == [KEY_FILE], "no draft key left behind"


@pytest.fixture(scope="module")
def studies(studies_2mm, tmp_path_factory) -> Path:
    """Five studies: three of one patient (two with shipped labels, one unlabelled), one of another, one on no
    timeline; the table also has rows a lab gets wrong."""
    target = tmp_path_factory.mktemp("timeline") / "studies"
    shutil.copytree(studies_2mm, target, ignore=shutil.ignore_patterns(".brats_label"))
    table = [
        "study,patient,acquired",
        f"{STUDIES[2]},{PATIENT},2024-06-20T10:00",  # written out of order: the timeline sorts by date
        f"{STUDIES[0]},{PATIENT},2024-01-03",
        f"{STUDIES[1]},Someone-Else,2024-02-01",
        f"{STUDIES[5 - 1]},{PATIENT},2024-09-30",  # unlabelled (the sample labels its first four)
        f"{STUDIES[3]},{PATIENT},03/04/2024",  # a date in a form the table does not take
        f"BraTS-GLI-00077-000,{PATIENT},2024-01-01",  # no such study
    ]
    (target / "patients.csv").write_text("\n".join(table) + "\n")
    return target


def test_the_folder_table_groups_a_patients_studies_oldest_first_and_lists_its_bad_rows(studies, tmp_path):
    datastore = StudyFolderDatastore(studies, tmp_path / "workspace")
    ordered = datastore.patient_studies(STUDIES[2])
    assert [study for study, _ in ordered] == [STUDIES[0], STUDIES[2], STUDIES[4]]
    assert [moment.acquired for _, moment in ordered] == ["2024-01-03", "2024-06-20T10:00:00", "2024-09-30"]
    assert [study for study, _ in datastore.patient_studies(STUDIES[1])] == [STUDIES[1]]
    assert datastore.patient_studies(STUDIES[3]) == [], "its row's date could not be read: on no timeline"
    problems = {p.path: p.reason for p in datastore.problems()}
    assert "2024-01-03" in problems["patients.csv row 6"] and "names no study" in problems["patients.csv row 7"]
    assert not any(PATIENT in reason for reason in problems.values()), "a problem names the row, never the patient"
    assert set(datastore.list_images()) >= set(STUDIES), "a bad row costs its study the timeline only"


@pytest.mark.server
def test_the_timeline_route_gives_volumes_changes_and_a_picture(studies, server_factory):
    server = server_factory(studies)
    answer = requests.get(f"{server.url}/brats/timeline/{STUDIES[4]}", timeout=60)
    assert answer.status_code == 200, answer.text
    rows = answer.json()["studies"]
    assert [row["case"] for row in rows] == [STUDIES[0], STUDIES[2], STUDIES[4]]
    assert [row["volumes_from"] for row in rows] == [FINAL_LABEL, FINAL_LABEL, NOT_SEGMENTED]
    truth = {}
    for case in (STUDIES[0], STUDIES[2]):
        image = nib.load(str(studies / case / f"{case}-seg.nii.gz"))
        truth[case] = region_volumes_ml(np.asarray(image.dataobj, dtype=np.uint8), voxel_volume_ml(image.affine), BRATS_2023)
    assert rows[0]["volumes_ml"] == pytest.approx(truth[STUDIES[0]], abs=1e-3)
    wt_change = truth[STUDIES[2]]["WT"] - truth[STUDIES[0]]["WT"]
    assert rows[1]["change"]["WT"]["baseline"]["ml"] == pytest.approx(wt_change, abs=2e-3)
    assert rows[1]["change"]["WT"]["baseline"]["percent"] == pytest.approx(100 * wt_change / truth[STUDIES[0]]["WT"], abs=0.1)
    assert PATIENT not in answer.text and "Someone-Else" not in answer.text

    picture = requests.get(f"{server.url}/brats/timeline/{STUDIES[0]}", params={"format": "png"}, timeout=60)
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(picture.content)).size[0] >= 600
    alone = requests.get(f"{server.url}/brats/timeline/{STUDIES[3]}", timeout=60).json()["studies"]
    assert [row["case"] for row in alone] == [STUDIES[3]], "a study on no timeline is its own"
    assert requests.get(f"{server.url}/brats/timeline/{STUDIES[0]}", params={"format": "pdf"}, timeout=60).status_code == 422
    assert requests.get(f"{server.url}/brats/timeline/BraTS-GLI-00077-000", timeout=60).status_code == 404
    assert requests.get(f"{server.url}/brats/timeline/..%2F..%2Fetc", timeout=60).status_code in (400, 404)
    log = server.log_path.read_text()
    assert PATIENT not in log and "Someone-Else" not in log
