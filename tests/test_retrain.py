"""The server fine-tunes by itself once enough corrected labels arrive: no training call from anyone."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import LOOP_PATCH

pytestmark = pytest.mark.server

UNLABELLED = ("BraTS-GLI-00004-000", "BraTS-GLI-00005-000")


@pytest.fixture(scope="module")
def server(studies_2mm, server_factory, tmp_path_factory):
    studies = tmp_path_factory.mktemp("retrain") / "studies"
    shutil.copytree(studies_2mm, studies, ignore=shutil.ignore_patterns(".brats_label"))
    # one automatic run in this module
    return server_factory(studies, max_epochs=1, retrain_after_labels=2, retrain_min_interval_s=3600, patch_size=LOOP_PATCH)


def _submit(server, study: str, tmp_path) -> None:
    reference = nib.load(str(server.studies / study / f"{study}-t1c.nii.gz"))
    label = np.zeros(reference.shape, np.uint8)
    label[40:52, 40:52, 30:38] = 2
    label[44:48, 44:48, 33:36] = 3
    path = tmp_path / f"{study}.nii.gz"
    nib.save(nib.Nifti1Image(label, reference.affine), str(path))
    MONAILabelClient(server.url, client_id="annotator").save_label(study, str(path), tag="final", params={"user": "dr_loop"})


def _retrain(server) -> dict:
    return requests.get(f"{server.url}/info/", timeout=30).json()["retrain"]


def test_labels_below_the_threshold_start_nothing(server, tmp_path):
    _submit(server, UNLABELLED[0], tmp_path)
    time.sleep(3)
    assert _retrain(server)["new_labels"] == 1
    assert _retrain(server)["runs"] == []


def test_the_label_that_reaches_the_threshold_starts_a_fine_tune(server, tmp_path):
    _submit(server, UNLABELLED[1], tmp_path)
    deadline = time.time() + 60
    while time.time() < deadline and not _retrain(server)["runs"]:
        time.sleep(1)
    runs = _retrain(server)["runs"]
    assert len(runs) == 1 and runs[0]["labels"] == sorted(UNLABELLED) and runs[0]["reason"] == "new labels"

    # annotators keep working while it trains: four labels at once, none lost, all counted for the next run
    during = [f"BraTS-GLI-0000{i}-000" for i in range(4)]
    assert requests.get(f"{server.url}/train/", timeout=30).json().get("status") == "RUNNING"
    assert requests.get(f"{server.url}/brats/training", timeout=30).json()["running"] is True
    with ThreadPoolExecutor(len(during)) as pool:
        list(pool.map(lambda study: _submit(server, study, tmp_path), during))
    assert server.wait_training(timeout_s=600)["status"] == "DONE"
    assert _retrain(server)["new_labels"] == len(during), "labels saved during a training count towards the next"
    _check_progress_and_tensorboard(requests.get(f"{server.url}/brats/training", timeout=30).json())
    listing = MONAILabelClient(server.url).datastore()["objects"]
    for study in during:
        assert listing[study]["labels"]["final"]["info"]["user"] == "dr_loop"
        saved = [r for r in requests.get(f"{server.url}/brats/audit", timeout=30).json() if r["case"] == study and r["user"] == "dr_loop"]
        assert len(saved) == 1


def _check_progress_and_tensorboard(training: dict) -> None:
    """What a person watching the training sees: the finished run's figures, and TensorBoard's logs of it."""
    assert training["running"] is False
    progress = training["progress"]
    assert progress["phase"] == "finished" and progress["remaining_s"] == 0.0
    assert progress["epoch"] == progress["max_epochs"] == 1 and progress["iteration"] == progress["iterations"] > 0
    assert progress["loss"] is not None and progress["elapsed_s"] > 0
    assert set(progress["validation_dice"]) == {"TC", "WT", "ET", "mean"}
    assert progress["version"] == training["serving"], "the first automatic version is promoted and served"
    events = list(Path(training["tensorboard_logdir"]).rglob(f"events_{progress['run']}/events.out.tfevents.*"))
    assert events, "TensorBoard event files are written for each run"
    scalars = set()
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        scalars |= set(accumulator.Tags()["scalars"])
    assert {"train_loss", "val_mean_dice"} <= scalars


def test_a_killed_training_keeps_the_served_model_says_failed_and_gives_its_labels_back(server):
    before = requests.get(f"{server.url}/brats/training", timeout=30).json()
    versions_before = requests.get(f"{server.url}/brats/models", timeout=30).json()["versions"]
    assert before["retrain"]["new_labels"] == 4
    requests.post(f"{server.url}/train/segmentation", json={"max_epochs": 50}, timeout=30).raise_for_status()
    deadline = time.time() + 120
    while time.time() < deadline:
        progress = requests.get(f"{server.url}/brats/training", timeout=30).json()["progress"]
        if progress.get("run") != before["progress"]["run"] and progress.get("phase") == "training":
            break
        time.sleep(1)
    assert requests.get(f"{server.url}/brats/training", timeout=30).json()["retrain"]["new_labels"] == 0, "its labels are in use"
    # MONAI Label's worker: python -m monailabel.interfaces.utils.app -m train ... (a scoring worker may run beside it)
    workers = server.workers("monailabel.interfaces.utils.app -m train")
    assert len(workers) == 1
    workers[0].kill()  # SIGKILL: the worker cannot say anything about it
    assert server.wait_training(timeout_s=60)["status"] == "ERROR"

    after = requests.get(f"{server.url}/brats/training", timeout=30).json()
    assert after["progress"]["phase"] == "failed" and "ERROR" in after["progress"]["reason"], after["progress"]
    assert after["serving"] == before["serving"], "the served model stays"
    assert requests.get(f"{server.url}/brats/models", timeout=30).json()["versions"] == versions_before, "no version made"
    assert after["retrain"]["runs"][-1]["outcome"] == "failed"
    assert after["retrain"]["new_labels"] == 4, "a failed training gives its labels back to the count"
