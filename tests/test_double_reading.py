"""Two readers where it matters: a study marked for double reading is handed to two annotators who never see each
other's label; agreeing readings make the first final, disagreeing ones wait for a reviewer who did not read it, whose
label becomes final and trains; the pair's agreement per region is in the audit and on the dashboard."""

from __future__ import annotations

import gzip
import io
import shutil
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from tests.conftest import put_final_label
from tests.oidc_issuer import LocalIssuer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "brats_label"))

UNLABELLED = ["BraTS-GLI-00004-000", "BraTS-GLI-00005-000"]  # the sample labels its first four


def test_the_share_read_twice_is_stable_and_of_the_size_asked():
    from lib.labels.double_reading import chosen_for_double_reading

    ids = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(4000)]
    chosen = [case for case in ids if chosen_for_double_reading(case, 0.1)]
    assert 0.085 < len(chosen) / len(ids) < 0.115, len(chosen)
    assert chosen == [case for case in ids if chosen_for_double_reading(case, 0.1)], "the same studies every time"
    assert not any(chosen_for_double_reading(case, 0.0) for case in ids) and all(chosen_for_double_reading(case, 1.0) for case in ids)


def test_two_readings_are_compared_region_by_region():
    from lib.config import BRATS_2023
    from lib.labels.double_reading import compare_readings

    first = np.zeros((20, 20, 20), np.uint8)
    first[5:15, 5:15, 5:15] = 2  # edema
    first[8:12, 8:12, 8:12] = 3  # enhancing
    second = first.copy()
    second[8:12, 8:12, 8:12] = 1  # the same core read as necrosis: TC and WT agree, ET does not exist for the second
    agreement = compare_readings(first, second, ("a", "b"), BRATS_2023, 0.8)
    assert agreement.dice["wt"] == 1.0 and agreement.dice["tc"] == 1.0 and agreement.dice["et"] == 0.0
    assert not agreement.agreed and agreement.record()["readers"] == ["a", "b"]
    assert compare_readings(first, first, ("a", "b"), BRATS_2023, 0.8).agreed


@pytest.fixture(scope="module")
def issuer():
    local = LocalIssuer()
    yield local
    local.stop()


def _label(server, study: str, box: tuple) -> tuple:
    reference = nib.load(str(server.studies / study / f"{study}-t1c.nii.gz"))
    label = np.zeros(reference.shape, np.uint8)
    label[box] = 2
    return label, reference.affine


def _save(server, study: str, label: np.ndarray, affine: np.ndarray, headers: dict, tmp_path: Path) -> requests.Response:
    return put_final_label(server, study, label, affine, tmp_path, {"client_id": "ohif"}, headers)


@pytest.mark.server
def test_two_readers_agree_or_a_reviewer_adjudicates(studies_2mm, server_factory, issuer, tmp_path_factory, tmp_path):
    studies = tmp_path_factory.mktemp("double_read") / "studies"
    shutil.copytree(studies_2mm, studies, ignore=shutil.ignore_patterns(".brats_label"))
    admin = issuer.headers("admin", "admin")
    server = server_factory(studies, env=issuer.env, headers=admin, retrain_after_labels=0)
    reader_a, reader_b, reader_c = (issuer.headers(name, "annotator") for name in ("dr_a", "dr_b", "dr_c"))
    reviewer = issuer.headers("dr_rev", "reviewer")

    assert requests.post(f"{server.url}/brats/double-read/{UNLABELLED[0]}", headers=reviewer, timeout=30).status_code == 403, "an admin marks"
    for study in UNLABELLED:
        marked = requests.post(f"{server.url}/brats/double-read/{study}", headers=admin, timeout=30)
        assert marked.status_code == 200 and marked.json()["chosen"] == "marked by an admin", marked.text

    def next_sample(headers: dict) -> str:
        answer = requests.post(f"{server.url}/activelearning/random", json={}, headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json().get("id", "")

    # reader A reads one study; it is not final, and nobody can fetch A's reading through the label routes
    first = next_sample(reader_a)
    agreed_label, affine = _label(server, first, (slice(40, 50), slice(40, 50), slice(30, 36)))
    assert _save(server, first, agreed_label, affine, reader_a, tmp_path).status_code == 200
    assert requests.get(f"{server.url}/datastore/label", params={"label": first, "tag": "final"}, headers=reader_b, timeout=30).status_code == 404
    hidden = requests.get(f"{server.url}/datastore/label", params={"label": first, "tag": "reading"}, headers=reader_b, timeout=30)
    assert hidden.status_code in (400, 422) and "not one of this server's tags" in hidden.text
    listing = requests.get(f"{server.url}/datastore/?output=all", headers=reader_b, timeout=30).json()["objects"][first]
    assert listing["labels"] == {}, "the listing shows no reading"
    assert requests.get(f"{server.url}/brats/double-read/{first}", headers=reader_b, timeout=30).status_code == 403, "only reviewers see readings"

    # A is not given the study again; B gets it, reads it the same: the first reading becomes final
    second = next_sample(reader_a)
    assert second == [s for s in UNLABELLED if s != first][0]
    assert next_sample(reader_b) == first
    assert _save(server, first, agreed_label, affine, reader_b, tmp_path).status_code == 200
    final = requests.get(f"{server.url}/datastore/label/info", params={"label": first, "tag": "final"}, headers=admin, timeout=30).json()
    assert final["source"] == "double reading" and final["user"] == "dr_a" and final["agreement"]["agreed"] and final["agreement"]["dice"]["wt"] == 1.0
    state = requests.get(f"{server.url}/brats/double-read/{first}", headers=reviewer, timeout=30).json()
    assert state["state"] == "final" and [r["reader"] for r in state["readings"]] == ["dr_a", "dr_b"]

    # the other study: A and B disagree; it waits for a reviewer, handed to no annotator meanwhile
    assert _save(server, second, agreed_label, affine, reader_a, tmp_path).status_code == 200
    assert next_sample(reader_b) == second
    other_label, _ = _label(server, second, (slice(44, 54), slice(40, 50), slice(30, 36)))  # shifted 4 voxels: WT Dice 0.6
    assert _save(server, second, other_label, affine, reader_b, tmp_path).status_code == 200
    assert requests.get(f"{server.url}/datastore/label/info", params={"label": second, "tag": "final"}, headers=admin, timeout=30).json() == {}
    queue = requests.get(f"{server.url}/brats/review", headers=reviewer, timeout=30).json()["waiting"]
    adjudication = [entry for entry in queue if entry["kind"] == "adjudication"]
    assert [entry["case"] for entry in adjudication] == [second] and adjudication[0]["readers"] == ["dr_a", "dr_b"] and adjudication[0]["dice"]["wt"] == pytest.approx(0.6)
    assert second not in {next_sample(reader_c), next_sample(reader_a), next_sample(reader_b)}
    refused = _save(server, second, other_label, affine, reader_b, tmp_path)
    assert refused.status_code == 403 and "a reviewer adjudicates" in refused.text

    # the reviewer reads both readings and adjudicates: their label is final, approved, and trains
    reading = requests.get(f"{server.url}/brats/double-read/{second}/readings/1", headers=reviewer, timeout=30)
    assert reading.status_code == 200
    assert np.array_equal(np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(reading.content)).dataobj), other_label), "B's reading, as B saved it"
    assert requests.get(f"{server.url}/brats/double-read/{second}/readings/2", headers=reviewer, timeout=30).status_code == 404
    adjudicated_label, _ = _label(server, second, (slice(42, 52), slice(40, 50), slice(30, 36)))
    assert _save(server, second, adjudicated_label, affine, reviewer, tmp_path).status_code == 200
    final = requests.get(f"{server.url}/datastore/label/info", params={"label": second, "tag": "final"}, headers=admin, timeout=30).json()
    assert final["source"] == "adjudicated" and final["user"] == "dr_rev" and final["review"]["state"] == "approved" and final["review"]["by"] == "dr_rev"
    archive = zipfile.ZipFile(io.BytesIO(requests.get(f"{server.url}/datastore/dataset", headers=admin, timeout=120).content))
    trained = {Path(name).name.removesuffix(".nii.gz") for name in archive.namelist() if name.startswith("labels/")}
    assert second in trained and first not in trained, "train_on auto: a review exists, so approved labels train; the agreed one waits for its review"

    # the pair's agreement per region, in the audit and on the dashboard
    audit = [row for row in requests.get(f"{server.url}/brats/audit", headers=reviewer, timeout=30).json() if row["tag"] == "reading" and row["agreed"] is not None]
    assert [(row["case"], row["agreed"]) for row in audit] == [(first, True), (second, False)] and audit[1]["agreement_readers"] == "dr_a & dr_b"
    dashboard = requests.get(f"{server.url}/brats/dashboard/data", headers=reviewer, timeout=60).json()
    pair = dashboard["agreement"][0]
    assert pair["readers"] == "dr_a & dr_b" and pair["studies"] == 2 and pair["disagreed"] == 1 and pair["dice_wt"] == pytest.approx(0.8) and len(pair["per_week"]) == 1
    assert dashboard["queue"]["awaiting_adjudication"] == 0
    readers = {row["user"]: row["labels"] for row in dashboard["annotators"]}
    assert readers == {"dr_a": 2, "dr_b": 2, "dr_rev": 1}, "each reading counts once for its reader; the reading made final is not counted again"
