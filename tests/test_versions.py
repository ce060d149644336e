"""Model versions on the running server: never serve a worse model, roll back, survive a restart."""

from __future__ import annotations

import json
import shutil
import time

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient

from tests.conftest import LOOP_PATCH

pytestmark = pytest.mark.server

STUDY = "BraTS-GLI-00005-000"  # unlabelled: predictions are compared on it


@pytest.fixture(scope="module")
def setup(studies_2mm, trained_weights, tmp_path_factory):
    studies = tmp_path_factory.mktemp("versions") / "studies"
    shutil.copytree(studies_2mm, studies, ignore=shutil.ignore_patterns(".brats_label"))
    conf = {"pretrained_weights": trained_weights, "retrain_after_labels": 0, "promote_tolerance": 0.05, "patch_size": LOOP_PATCH}
    return studies, conf


def _models(server) -> dict:
    return requests.get(f"{server.url}/brats/models", timeout=30).json()


def _infer(server, tmp_path) -> tuple:
    label_file, params = MONAILabelClient(server.url, tmpdir=str(tmp_path)).infer("segmentation", STUDY, {})
    params = json.loads(params) if isinstance(params, str) else params
    return np.asarray(nib.load(label_file).dataobj).copy(), params["model"]["version"]


def _train(server, **request) -> None:
    requests.post(f"{server.url}/train/segmentation", json=request, timeout=30).raise_for_status()
    assert server.wait_training(timeout_s=600)["status"] == "DONE"


def test_versions_promotion_rollback_and_restart(setup, server_factory, tmp_path):
    studies, conf = setup
    server = server_factory(studies, **conf)
    models = _models(server)
    assert models["serving"] == "v0" and models["versions"][0]["reason"] == "starting model"
    v0_label, version = _infer(server, tmp_path)
    assert version == "v0"

    # a fine-tune that barely moves the weights: not worse beyond the tolerance, so served. (An ordinary
    # epoch on three cases can lose 0.07 Dice on the one held-out case: just what promotion guards against.)
    _train(server, max_epochs=1, fine_tune_learning_rate=1e-7, seed=1)
    v1 = _models(server)["versions"][1]
    assert v1["parent"] == "v0" and v1["promoted"], v1["reason"]
    assert v1["seed"] == 1 and v1["comparison"]["studies"] == len(v1["held_out"]) and "paired over" in v1["reason"]
    assert set(v1["validation_dice"]) == {"tc", "wt", "et", "mean"} and v1["held_out"] and not set(v1["held_out"]) & set(v1["labels"])
    # BraTS scores per region, averaged and per held-out study (what a study-by-study comparison needs)
    assert {r: set(v1["validation_brats"][r]) for r in ("et", "tc", "wt")} == {r: {"dice", "hd95", "lesion_dice", "lesion_hd95"} for r in ("et", "tc", "wt")}
    assert set(v1["validation_studies"]) == set(v1["held_out"]) and v1["validation_dice"]["wt"] == v1["validation_brats"]["wt"]["dice"]
    assert _infer(server, tmp_path)[1] == "v1"

    _train(server, max_epochs=2, fine_tune_learning_rate=0.5, seed=2)  # made worse on purpose
    models = _models(server)
    v2 = models["versions"][2]
    assert not v2["promoted"] and "below the parent" in v2["reason"] and v2["parent"] == "v1"
    assert models["serving"] == "v1" and _infer(server, tmp_path)[1] == "v1"
    assert v2["held_out"] == v1["held_out"], "every version is validated on the same held-out cases"
    assert v2["comparison"]["worse"] == v2["comparison"]["studies"] and v2["comparison"]["mean_difference"] < -0.05

    requests.post(f"{server.url}/brats/models/v0/promote", timeout=30).raise_for_status()  # roll back
    label, version = _infer(server, tmp_path)
    assert version == "v0" and np.array_equal(label, v0_label)
    assert requests.post(f"{server.url}/brats/models/v9/promote", timeout=30).status_code == 404

    # an admin grows the held-out set: every kept version is scored again on the whole set
    held_out = requests.get(f"{server.url}/brats/holdout", timeout=30).json()
    assert held_out["studies"] == v1["held_out"] and held_out["history"][0]["by"] == "first training"
    added = sorted(set(v1["labels"]))[0]
    for refused, status in (([STUDY], 422), (["BraTS-GLI-99999-000"], 404), ([added, "../etc"], 422)):
        answer = requests.post(f"{server.url}/brats/holdout", json={"add": refused}, timeout=30)
        assert answer.status_code == status, answer.text
    assert "not labelled" in requests.post(f"{server.url}/brats/holdout", json={"add": [STUDY]}, timeout=30).json()["detail"]
    assert requests.get(f"{server.url}/brats/holdout", timeout=30).json()["studies"] == v1["held_out"], "a refused request adds nothing"
    grown = requests.post(f"{server.url}/brats/holdout", json={"add": [added]}, timeout=30).json()
    assert grown["studies"] == sorted([*v1["held_out"], added]) and grown["history"][-1]["added"] == [added]
    deadline = time.monotonic() + 300
    while requests.get(f"{server.url}/brats/holdout", timeout=30).json()["reevaluation"].get("state") != "done":
        assert time.monotonic() < deadline, "re-evaluation did not end"
        time.sleep(1)
    for record in _models(server)["versions"]:
        evaluation = record["held_out_evaluation"]
        assert evaluation["held_out"] == grown["studies"] and set(evaluation["studies"]) == set(grown["studies"]), record["id"]
        assert evaluation["trained_on_held_out"] == ([added] if record["id"] != "v0" else []), "a study a version trained on is flagged"
    _train(server, max_epochs=1, fine_tune_learning_rate=1e-7, seed=3)
    v3 = _models(server)["versions"][3]
    assert v3["held_out"] == grown["studies"] and added not in v3["labels"], "a held-out study is not trained on"
    assert v3["comparison"]["studies"] == 2
    serving = _models(server)["serving"]

    server.stop()
    restarted = server_factory(studies, **conf)
    models = _models(restarted)
    assert models["serving"] == serving and [v["id"] for v in models["versions"]] == ["v0", "v1", "v2", "v3"]
    assert _infer(restarted, tmp_path)[1] == serving
    assert requests.get(f"{restarted.url}/brats/holdout", timeout=30).json()["studies"] == grown["studies"]


def test_a_training_worker_finds_the_version_the_server_is_about_to_serve(tmp_path):
    """The refinement model queued behind a segmentation retrain starts from the new segmentation version as soon as
    that training asked for it to be served, before the server process has applied the promotion."""
    from lib.trainers.versions import ModelVersions

    versions = ModelVersions(tmp_path, tmp_path / "segmentation.pt")
    assert versions.to_be_served() is None
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    first.write_bytes(b"first weights")
    second.write_bytes(b"second weights")
    versions.promote(versions.add(first, {"parent": None})["id"], "starting model")
    assert versions.to_be_served() == tmp_path / "segmentation.pt" and versions.to_be_served().read_bytes() == b"first weights"

    asked = versions.add(second, {"parent": "v0"})["id"]
    versions.update(asked, promotion="pending", promotion_reason="not worse")  # what a worker's request_promotion writes
    assert versions.to_be_served().read_bytes() == b"second weights"
    assert versions.apply_promotions() == [asked]
    assert versions.to_be_served() == tmp_path / "segmentation.pt" and versions.to_be_served().read_bytes() == b"second weights"
