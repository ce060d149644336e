"""The lab's dashboard: model versions, pre-label quality in use, the work, input drift and training, computed from
what the server keeps and drawn by a page the server serves (tested in Chromium)."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime

import nibabel as nib
import numpy as np
import pytest
import requests

from lib.config import BRATS_2023
from lib.dashboard.drift import input_drift
from lib.dashboard.summary import dashboard_data
from tests.conftest import ARTIFACTS, REPO, put_final_label

BROWSER_DIR = REPO / "tests" / "browser"
UNLABELLED = ["BraTS-GLI-00004-000", "BraTS-GLI-00005-000"]  # the 2 mm sample labels its first four


def _stats(median: float, spacing: float = 2.0) -> dict:
    return {"spacing_mm": [spacing] * 3, "extent_mm": [240.0, 240.0, 160.0], "support_ml": 1400.0, "t1c_median": median, "t1c_contrast": 2.0}


def test_drift_names_a_new_study_from_another_scanner_scale_or_grid_and_no_other():
    training = {f"train{i}": _stats(500.0 + 10 * i) for i in range(6)}
    new = {"alike": _stats(520.0), "brighter": _stats(2000.0), "finer": _stats(510.0, spacing=1.0), "unprepared": {}}
    drift = input_drift(training, new, "v3")
    flagged = {entry["case"]: [f["feature"] for f in entry["out_of_range"]] for entry in drift["out_of_range"]}
    assert flagged == {"brighter": ["t1c_median"], "finer": ["spacing_mm[x]", "spacing_mm[y]", "spacing_mm[z]"]}
    assert drift["reference_studies"] == 6 and drift["new_studies"] == 3 and drift["not_prepared_yet"] == 1


def test_the_summary_counts_the_work_and_follows_pre_label_quality_per_week_and_model():
    def saved(case, at, user, version, dice, edited, review=None, source="client"):
        record = {"tag": "final", "saved_at": at, "user": user, "source": source, "prelabel_model_version": version, "edited_ml": edited}
        record.update({f"dice_{r}": dice for r in ("tc", "wt", "et")})
        if review:
            record["review"] = {"state": review}
        return case, record

    disagreed = {"readers": ["ann", "bob"], "dice": {"tc": 0.5, "wt": 0.6, "et": 0.4}, "threshold": 0.8, "agreed": False, "at": "2026-12-02T13:00:00.000Z"}
    history = [
        saved("a", "2026-11-27T10:00:00.000Z", "ann", "v1", 0.9, 2.0),
        saved("b", "2026-12-01T10:00:00.000Z", "ann", "v1", 0.7, 8.0, review="approved"),
        saved("c", "2026-12-02T11:00:00.000Z", "bob", "v2", 0.8, 4.0, review="changes requested"),
        saved("d", "2026-01-01T11:00:00.000Z", "", None, None, None, source="imported"),
        ("c", {"tag": "final", "removed_at": "2026-12-03T00:00:00.000Z"}),  # c's label removed
        # e is read twice, the readings disagree, no reviewer has adjudicated yet
        ("e", {"tag": "reading", "saved_at": "2026-12-02T12:00:00.000Z", "user": "ann", "source": "submitted"}),
        ("e", {"tag": "reading", "saved_at": "2026-12-02T13:00:00.000Z", "user": "bob", "source": "submitted", "agreement": disagreed}),
    ]
    data = dashboard_data([], history, unlabelled=7, handed_out=2, training={}, drift={}, label_set=BRATS_2023, now=datetime(2026, 12, 5, tzinfo=UTC))
    assert data["queue"] == {
        "unlabelled": 7,
        "handed_out": 2,
        "waiting_for_review": 1,
        "approved": 1,
        "changes_requested": 0,
        "imported_ground_truth": 1,
        "awaiting_adjudication": 1,
    }
    assert [w["week"] for w in data["prelabel_quality"]["per_week"]] == ["2026-W48", "2026-W49"]
    assert data["prelabel_quality"]["per_week"][1] == {"week": "2026-W49", "labels": 2, "dice_tc": 0.75, "dice_wt": 0.75, "dice_et": 0.75, "edited_ml": 6.0}
    assert {v["version"]: v["labels"] for v in data["prelabel_quality"]["per_version"]} == {"v1": 2, "v2": 1}
    ann = next(a for a in data["annotators"] if a["user"] == "ann")
    assert ann == {**ann, "labels": 3, "days": 3, "labels_per_day": 1.0, "median_edited_ml": 5.0}, "a reading is work done"
    assert data["agreement"] == [
        {
            "readers": "ann & bob",
            "studies": 1,
            "disagreed": 1,
            "dice_tc": 0.5,
            "dice_wt": 0.6,
            "dice_et": 0.4,
            "per_week": [{"week": "2026-W49", "studies": 1, "disagreed": 1, "dice_tc": 0.5, "dice_wt": 0.6, "dice_et": 0.4}],
        }
    ]
    assert all(a["user"] != "" for a in data["annotators"]), "imported ground truth is nobody's work"


@pytest.mark.server
def test_the_dashboard_page_shows_versions_quality_work_drift_and_training(studies_2mm, server_factory, tmp_path_factory, tmp_path):
    studies = tmp_path_factory.mktemp("dashboard") / "studies"
    shutil.copytree(studies_2mm, studies, ignore=shutil.ignore_patterns(".brats_label"))
    brighter = studies / UNLABELLED[1] / f"{UNLABELLED[1]}-t1c.nii.gz"  # another scanner's scale
    image = nib.load(str(brighter))
    nib.save(nib.Nifti1Image((np.asarray(image.dataobj, dtype=np.float32) * 4).astype(np.int16), image.affine, image.header), str(brighter))
    server = server_factory(studies, retrain_after_labels=0)
    run = requests.post(f"{server.url}/train/segmentation", json={"max_epochs": 2, "patch_size": "48,48,48", "seed": 0}, timeout=60)
    assert run.status_code == 200, run.text
    assert server.wait_training(timeout_s=900)["status"] == "DONE"
    for case in UNLABELLED:  # opened (so prepared and measured) and pre-segmented
        assert requests.post(f"{server.url}/infer/segmentation", params={"image": case, "output": "json"}, json={}, timeout=300).status_code == 200

    def save(case: str, user: str, first_row: int) -> None:
        reference = nib.load(str(studies / case / f"{case}-t1c.nii.gz"))
        drawn = np.zeros(reference.shape, np.uint8)
        drawn[first_row : first_row + 10, 40:50, 30:36] = 2
        saved = put_final_label(server, case, drawn, reference.affine, tmp_path, {"user": user})
        assert saved.status_code == 200, saved.text

    save(UNLABELLED[0], "dr_ann", 40)
    # the other study is read twice and the readers disagree (WT Dice 0.6): it waits for a reviewer
    assert requests.post(f"{server.url}/brats/double-read/{UNLABELLED[1]}", timeout=60).status_code == 200
    save(UNLABELLED[1], "dr_a", 40)
    save(UNLABELLED[1], "dr_b", 44)

    data = requests.get(f"{server.url}/brats/dashboard/data", timeout=60).json()
    assert len(data["models"]) == 1 and data["models"][0]["serving"] and data["models"][0]["dice"]["mean"] is not None
    version = data["models"][0]["id"]
    assert data["queue"] == {**data["queue"], "unlabelled": 1, "waiting_for_review": 1, "imported_ground_truth": 4, "awaiting_adjudication": 1}
    assert [a["user"] for a in data["annotators"]] == ["dr_a", "dr_ann", "dr_b"] and data["annotators"][1]["median_edited_ml"] > 0
    assert data["agreement"][0] == {**data["agreement"][0], "readers": "dr_a & dr_b", "studies": 1, "disagreed": 1, "dice_wt": 0.6}
    assert data["prelabel_quality"]["per_version"][0]["version"] == version
    assert [entry["case"] for entry in data["drift"]["out_of_range"]] == [UNLABELLED[1]], data["drift"]
    assert "t1c_median" in [f["feature"] for f in data["drift"]["out_of_range"][0]["out_of_range"]]
    assert requests.get(f"{server.url}/brats/dashboard/curve/{version}", timeout=60).headers["content-type"] == "image/png"
    assert requests.get(f"{server.url}/brats/dashboard/curve/..%2Fserving.json", timeout=60).status_code in (400, 404), "a version id, never a path"
    assert requests.get(f"{server.url}/brats/dashboard/curve/v99", timeout=60).status_code == 404

    run = subprocess.run(["node", "dashboard.mjs", server.url, str(tmp_path)], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    page = json.loads(run.stdout.strip().splitlines()[-1])
    assert page["errors"] == [] and page["console"] == [], page
    assert page["data"]["queue"] == data["queue"]
    assert f"{version} (served)" in page["text"] and UNLABELLED[1] in page["text"] and "dr_ann" in page["text"] and "dr_a & dr_b" in page["text"]
    assert all(url.startswith((server.url, "blob:")) for url in page["requests"]), f"nothing fetched from outside the server: {page['requests']}"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "dashboard.png", ARTIFACTS / "dashboard.png")
