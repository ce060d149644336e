"""Labels reviewed before they train: submitted, approved or changes requested by a reviewer, submitted again once
corrected; MONAI Label's Slicer Reviewer module (its own library code) lists, filters, approves and flags; with
authentication on, only a reviewer reviews, never their own label, and who reviewed comes from the token."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from tests.conftest import put_final_label
from tests.oidc_issuer import LocalIssuer

pytestmark = pytest.mark.server

REVIEWER_LIB = Path(sys.prefix) / "monailabel" / "plugins" / "slicer" / "MONAILabelReviewer"
UNLABELLED = ["BraTS-GLI-00004-000", "BraTS-GLI-00005-000"]  # the sample labels its first four


@pytest.fixture(scope="module")
def reviewer_lib():
    """The Slicer Reviewer module's library (no Slicer needed: it is plain Python and requests)."""
    sys.path.insert(0, str(REVIEWER_LIB))
    from MONAILabelReviewerLib.ImageDataController import ImageDataController

    yield ImageDataController
    sys.path.remove(str(REVIEWER_LIB))


def _studies(studies_2mm: Path, folder: Path) -> Path:
    target = folder / "studies"
    shutil.copytree(studies_2mm, target, ignore=shutil.ignore_patterns(".brats_label"))
    return target


def _save(server, study: str, user: str, headers: dict, tmp_path: Path, value: int = 2) -> None:
    reference = nib.load(str(server.studies / study / f"{study}-t1c.nii.gz"))
    label = np.zeros(reference.shape, np.uint8)
    label[40:50, 40:50, 30:36] = value
    answer = put_final_label(server, study, label, reference.affine, tmp_path, {"user": user, "client_id": "slicer"}, headers)
    assert answer.status_code == 200, answer.text


def _info(server, study: str, headers: dict) -> dict:
    return requests.get(f"{server.url}/datastore/?output=all", headers=headers, timeout=30).json()["objects"][study]["labels"]["final"]["info"]


def test_the_slicer_reviewer_module_lists_filters_approves_and_flags(studies_2mm, server_factory, reviewer_lib, tmp_path_factory, tmp_path):
    server = server_factory(_studies(studies_2mm, tmp_path_factory.mktemp("review")), retrain_after_labels=0)
    for study in UNLABELLED:
        _save(server, study, "dr_annotator", {}, tmp_path)
    queue = requests.get(f"{server.url}/brats/review", timeout=30).json()
    assert [entry["case"] for entry in queue["waiting"]] == UNLABELLED, "oldest first; imported ground truth is not under review"
    assert queue["train_on"] == "submitted", "no review yet: every saved label trains (auto)"

    def trained_on() -> set:  # the dataset download holds what training reads (the datastore's datalist)
        import io
        import zipfile

        archive = zipfile.ZipFile(io.BytesIO(requests.get(f"{server.url}/datastore/dataset", timeout=120).content))
        return {Path(name).name.removesuffix(".nii.gz") for name in archive.namelist() if name.startswith("labels/")}

    before_review = trained_on()
    assert set(UNLABELLED) <= before_review, before_review

    controller = reviewer_lib()
    assert controller.connectToMonaiServer(server.url) and controller.initMetaDataProcessing()
    listed = {data.getName(): data for data in controller.getAllImageData(segmented=False, isNotSegmented=False, isApproved=False, isFlagged=False)}
    assert all(listed[study].isSegemented() and not listed[study].isApproved() for study in UNLABELLED)

    # approve the first, as the module's Approve button does (its approvedBy is who the module thinks reviews)
    first = controller.getMapIdToImageData()[UNLABELLED[0]]
    first.updateSegmentationMetaByVerionTag(tag="final", status="approved", level="easy", approvedBy="dr_claimed", comment="")
    assert controller.updateLabelInfo(UNLABELLED[0], "final", first.obtainUpdatedParams("final"))
    # flag the second with a comment and a difficulty level
    second = controller.getMapIdToImageData()[UNLABELLED[1]]
    second.updateSegmentationMetaByVerionTag(tag="final", status="flagged", level="hard", approvedBy="", comment="edema missed anteriorly")
    assert controller.updateLabelInfo(UNLABELLED[1], "final", second.obtainUpdatedParams("final"))

    approved = _info(server, UNLABELLED[0], {})
    assert approved["review"]["state"] == "approved" and approved["review"]["by"] == "admin", "who reviews is the signed-in user (admin with authentication off)"
    assert approved["claimed_by"] == "dr_claimed" and approved["user"] == "dr_annotator"
    flagged = _info(server, UNLABELLED[1], {})
    assert flagged["review"] == {**flagged["review"], "state": "changes requested", "comment": "edema missed anteriorly", "level": "hard"}

    # the flagged label goes back before any new study, with the comment (authentication off: to whoever asks)
    returned = requests.post(f"{server.url}/activelearning/random", json={"client_id": "slicer"}, timeout=30).json()
    assert returned["id"] == UNLABELLED[1] and returned["picked_by"] == "returned for changes"
    assert returned["review"] == {**returned["review"], "comment": "edema missed anteriorly", "reviewed_by": "admin", "level": "hard"}
    shown = requests.get(f"{server.url}/brats/review/{UNLABELLED[1]}", timeout=30).json()
    assert shown["state"] == "changes requested" and shown["returned"]["comment"] == "edema missed anteriorly"
    assert requests.get(f"{server.url}/brats/review/{UNLABELLED[0]}", timeout=30).json()["returned"] is None, "approved: nothing to correct"

    # the module reads the decisions back: its filters
    controller = reviewer_lib()
    assert controller.connectToMonaiServer(server.url) and controller.initMetaDataProcessing()
    assert [d.getName() for d in controller.getAllImageData(segmented=True, isNotSegmented=False, isApproved=True, isFlagged=False)] == [UNLABELLED[0]]
    assert [d.getName() for d in controller.getAllImageData(segmented=True, isNotSegmented=False, isApproved=False, isFlagged=True)] == [UNLABELLED[1]]
    assert UNLABELLED[1] in controller.getImageDataByLevel(isEasy=False, isMedium=False, isHard=True)

    # from the first review on, only approved labels (and imported ground truth) train, and only they are counted
    queue = requests.get(f"{server.url}/brats/review", timeout=30).json()
    assert queue["train_on"] == "approved" and queue["waiting"] == []
    assert requests.get(f"{server.url}/brats/training", timeout=30).json()["retrain"]["new_labels"] == 1, "the approved label"
    trained = trained_on()
    assert UNLABELLED[0] in trained and UNLABELLED[1] not in trained and len(trained) == 5, trained

    # corrected after the request for changes: a new version, submitted again, back in the queue; the review stays with the old one
    _save(server, UNLABELLED[1], "dr_annotator", {}, tmp_path, value=3)
    corrected = _info(server, UNLABELLED[1], {})
    assert "review" not in corrected
    assert [entry["case"] for entry in requests.get(f"{server.url}/brats/review", timeout=30).json()["waiting"]] == [UNLABELLED[1]]
    audit = [row for row in requests.get(f"{server.url}/brats/audit", timeout=30).json() if row["case"] in UNLABELLED]
    assert [row["event"] for row in audit] == ["saved", "saved", "review: approved", "review: changes requested", "saved"]
    assert audit[3]["reviewed_by"] == "admin" and audit[3]["review_comment"] == "edema missed anteriorly"
    csv_text = requests.get(f"{server.url}/brats/audit", params={"format": "csv"}, timeout=30).text
    assert "review: changes requested" in csv_text and "edema missed anteriorly" in csv_text


@pytest.fixture(scope="module")
def issuer():
    local = LocalIssuer()
    yield local
    local.stop()


def test_with_authentication_only_another_reviewer_approves_and_the_token_says_who(studies_2mm, server_factory, issuer, tmp_path_factory, tmp_path):
    server = server_factory(_studies(studies_2mm, tmp_path_factory.mktemp("review_auth")), env=issuer.env, headers=issuer.headers("admin", "admin"), retrain_after_labels=0)
    annotator, reviewer, other = issuer.headers("dr_ann", "annotator"), issuer.headers("dr_rev", "reviewer"), issuer.headers("dr_rev2", "reviewer")
    _save(server, UNLABELLED[0], "dr_ann", annotator, tmp_path)
    _save(server, UNLABELLED[1], "dr_rev", reviewer, tmp_path)  # a reviewer who also annotates
    meta = {"segmentationMeta": {"status": "approved", "approvedBy": "dr_someone", "level": "easy", "comment": ""}}

    def update(headers: dict, study: str) -> requests.Response:
        return requests.put(f"{server.url}/datastore/updatelabelinfo", params={"label": study, "tag": "final"}, data={"params": json.dumps(meta)}, headers=headers, timeout=30)

    refused = update(annotator, UNLABELLED[0])
    assert refused.status_code == 403 and "only a reviewer" in refused.text, "an annotator cannot approve, not even through label info"
    assert "review" not in _info(server, UNLABELLED[0], server.headers)
    assert requests.get(f"{server.url}/brats/review", headers=annotator, timeout=30).status_code == 403

    own = requests.post(f"{server.url}/brats/review/{UNLABELLED[1]}", json={"decision": "approved"}, headers=reviewer, timeout=30)
    assert own.status_code == 403 and "another reviewer" in own.text
    assert update(reviewer, UNLABELLED[0]).status_code == 200
    approved = _info(server, UNLABELLED[0], server.headers)
    assert approved["review"]["by"] == "dr_rev" and approved["segmentationMeta"]["approvedBy"] == "dr_rev", "from the token, not the body"
    assert "claimed_by" not in approved
    no_comment = requests.post(f"{server.url}/brats/review/{UNLABELLED[1]}", json={"decision": "changes requested"}, headers=other, timeout=30)
    assert no_comment.status_code == 422 and "comment" in no_comment.text
    asked = requests.post(f"{server.url}/brats/review/{UNLABELLED[1]}", json={"decision": "changes requested", "comment": "ET too thick"}, headers=other, timeout=30)
    assert asked.status_code == 200 and asked.json()["review"]["by"] == "dr_rev2"

    # the label goes back to the one who saved it, with the comment; not to another annotator, whatever they send
    def next_sample(headers: dict, body: dict) -> dict:
        answer = requests.post(f"{server.url}/activelearning/random", json=body, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert next_sample(annotator, {"returned_to": "dr_rev", "client_id": "dr_rev"}).get("id") != UNLABELLED[1]
    back = next_sample(reviewer, {})
    assert back["id"] == UNLABELLED[1] and back["review"]["comment"] == "ET too thick" and back["review"]["reviewed_by"] == "dr_rev2"
    shown = requests.get(f"{server.url}/brats/review/{UNLABELLED[1]}", headers=annotator, timeout=30)
    assert shown.status_code == 200 and shown.json()["returned"]["comment"] == "ET too thick"
    forged = requests.put(
        f"{server.url}/datastore/label/info",
        params={"label": UNLABELLED[1], "tag": "final"},
        data={"info": json.dumps({"review": {"state": "approved", "by": "dr_rev2"}, "note": "fixed"})},
        headers=reviewer,
        timeout=30,
    )
    assert forged.status_code == 200 and forged.json()["review"]["state"] == "changes requested" and forged.json()["note"] == "fixed", "review fields only through a review"
