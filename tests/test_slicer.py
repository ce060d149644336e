"""3D Slicer's MONAI Label module, step by step, with the client it ships (not MONAI Label's own).

The module's client is ``MONAILabelLib/client.py`` inside the monailabel package's Slicer plugin. The
sequence below is what the module does on each button (MONAILabel.py: fetchInfo, onNextSampleButton,
onClickSegmentation, onSaveLabel, onTraining); Slicer itself cannot run here, so its two file formats
are written the way it writes them: a label map whose values follow the segments' order, sent with
``label_info`` naming each value, and a ``.seg.nrrd`` (slicerio, the Slicer team's reader/writer).
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import slicerio

from tests.conftest import LOOP_PATCH

pytestmark = pytest.mark.server

SLICER_CLIENT = Path(sys.prefix) / "monailabel" / "plugins" / "slicer" / "MONAILabel" / "MONAILabelLib" / "client.py"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _slicer_client_module():
    assert SLICER_CLIENT.exists(), f"the monailabel package no longer ships the Slicer client at {SLICER_CLIENT}"
    spec = importlib.util.spec_from_file_location("slicer_monailabel_client", SLICER_CLIENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def slicer_api():
    return _slicer_client_module()


@pytest.fixture(scope="module")
def server(studies_2mm, trained_weights, server_factory, tmp_path_factory):
    import shutil

    studies = tmp_path_factory.mktemp("slicer") / "studies"
    shutil.copytree(studies_2mm, studies, ignore=shutil.ignore_patterns(".brats_label"))
    return server_factory(studies, pretrained_weights=trained_weights, max_epochs=1, retrain_after_labels=0, patch_size=LOOP_PATCH)


@pytest.fixture(scope="module")
def client(server, slicer_api, tmp_path_factory):
    return slicer_api.MONAILabelClient(server.url, tmpdir=str(tmp_path_factory.mktemp("slicer_tmp")), client_id="slicer-test")


@pytest.fixture(scope="module")
def sample(client, server, tmp_path_factory):
    """Next Sample: the case the module loads, and the image it downloads (SampleData's plain GET)."""
    sample = client.next_sample("random", {})
    answer = requests.get(f"{server.url}/datastore/image", params={"image": sample["id"]}, timeout=120)
    assert answer.status_code == 200
    filename = answer.headers["content-disposition"].split("filename=")[-1].strip('"')
    assert filename.endswith((".nii", ".nii.gz")), "Slicer picks its reader by the file name"
    path = tmp_path_factory.mktemp("download") / filename
    path.write_bytes(answer.content)
    return sample, nib.load(str(path))


def test_info_names_the_labels_as_slicer_colours_and_imports_them(client):
    info = client.info()
    # Slicer creates one segment per name, and imports label value i as the i-th name: order must follow value
    model = info["models"]["segmentation"]
    assert model["labels"] == {"necrotic_core": 1, "edema": 2, "enhancing_tumour": 3} and model["type"] == "segmentation"
    assert info["labels"] == sorted(model["labels"], key=model["labels"].get), "names in value order: the i-th name is value i"
    assert {"random", "uncertainty"} <= set(info["strategies"]) and "segmentation" in info["trainers"]


def test_next_sample_is_an_unlabelled_study_the_module_can_load(client, sample):
    sample, image = sample
    listing = client.datastore()["objects"]
    assert "final" not in listing[sample["id"]]["labels"], "Next Sample never hands out a labelled study"
    assert image.shape[:3] == tuple(listing[sample["id"]]["image"]["info"]["shape"][:3]) and image.shape[3] == 4


def test_run_segments_the_sample_with_the_names_slicer_shows(client, sample):
    sample, image = sample
    label_file, params = client.infer("segmentation", sample["id"], {})
    label = nib.load(label_file)
    assert label.shape == image.shape[:3] and np.allclose(label.affine, image.affine, atol=1e-3)
    values = set(np.unique(np.asarray(label.dataobj)).astype(int).tolist())
    assert values <= {0, 1, 2, 3} and values - {0}, "the trained model finds tumour"
    assert {"necrotic_core", "edema", "enhancing_tumour"} <= set(params["volumes_ml"])


def _final_label(server, study: str) -> np.ndarray:
    answer = requests.get(f"{server.url}/datastore/label", params={"label": study, "tag": "final"}, timeout=60)
    assert answer.status_code == 200
    path = Path(tempfile.mkdtemp()) / answer.headers["content-disposition"].split("filename=")[-1].strip('"')
    path.write_bytes(answer.content)
    return np.asarray(nib.load(str(path)).dataobj)


def test_submit_label_map_with_a_deleted_segment_keeps_each_region(client, server, sample, tmp_path):
    """The annotator deleted the (empty) necrotic core: Slicer exports edema as 1 and enhancing as 2."""
    sample, image = sample
    truth = np.zeros(image.shape[:3], np.uint8)
    truth[40:56, 40:56, 30:40] = 2
    truth[45:50, 45:50, 33:37] = 3
    exported = np.select([truth == 2, truth == 3], [1, 2], 0).astype(np.uint8)
    path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(exported, image.affine), str(path))
    client.save_label(sample["id"], str(path), params={"label_info": [{"name": "edema", "idx": 1}, {"name": "enhancing_tumour", "idx": 2}]})
    assert np.array_equal(_final_label(server, sample["id"]), truth)


def test_submit_seg_nrrd_decodes_to_the_same_label_values(client, server, studies_2mm, tmp_path):
    """A .seg.nrrd as Slicer saves it: LPS geometry, cropped to the segments' extent, one segment per region."""
    study = sorted(k for k, v in client.datastore()["objects"].items() if "final" not in v["labels"])[0]
    reference = nib.load(str(server.studies / study / f"{study}-t1c.nii.gz"))
    truth = np.zeros(reference.shape, np.uint8)
    truth[30:60, 35:62, 25:45] = 2
    truth[38:52, 40:55, 30:40] = 1
    truth[42:48, 44:50, 33:37] = 3
    start, stop = np.array([30, 35, 25]), np.array([60, 62, 45])  # the cropped extent
    crop_to_ras = reference.affine @ np.vstack([np.hstack([np.eye(3), start[:, None]]), [0, 0, 0, 1]])
    segmentation = slicerio.create_segmentation(tuple(stop - start), RAS_TO_LPS @ crop_to_ras)
    cropped = truth[tuple(slice(a, b) for a, b in zip(start, stop))]
    for name, value in (("Necrotic core", 1), ("edema", 2), ("enhancing_tumour", 3)):
        slicerio.add_segment(segmentation, cropped == value, {"id": name, "name": name})
    path = tmp_path / "Segmentation.seg.nrrd"
    slicerio.write_segmentation(str(path), segmentation)

    client.save_label(study, str(path), params={"label_info": [{"name": "Necrotic core", "idx": 1}]})
    assert np.array_equal(_final_label(server, study), truth)


def test_seg_nrrd_with_a_segment_the_server_does_not_know_is_refused_with_its_name(client, slicer_api, server, tmp_path):
    study = sorted(client.datastore()["objects"])[0]
    before = client.datastore()["objects"][study]["labels"].get("final")
    reference = nib.load(str(server.studies / study / f"{study}-t1c.nii.gz"))
    segmentation = slicerio.create_segmentation(reference.shape, RAS_TO_LPS @ reference.affine)
    mask = np.zeros(reference.shape, bool)
    mask[40:45, 40:45, 30:35] = True
    slicerio.add_segment(segmentation, mask, {"id": "Segment_1", "name": "Segment_1"})
    path = tmp_path / "Segmentation.seg.nrrd"
    slicerio.write_segmentation(str(path), segmentation)
    with pytest.raises(slicer_api.MONAILabelClientException) as refused:
        client.save_label(study, str(path))
    assert "Segment_1" in refused.value.msg and "enhancing_tumour" in refused.value.msg
    assert client.datastore()["objects"][study]["labels"].get("final") == before, "the stored label is untouched"


def _train_and_wait(client, model: str, params: dict) -> None:
    """The module's Train button, then its status polled until the run ends; it must end DONE."""
    started = client.train_start(model, params)
    assert started.get("id")
    deadline = time.time() + 600
    status = client.train_status()
    while status["status"] not in ("DONE", "ERROR", "STOPPED") and time.time() < deadline:
        time.sleep(2)
        status = client.train_status()
    assert status["status"] == "DONE", status


def test_train_starts_and_reports_its_status(client, server):
    info = client.info()
    params = dict(info["trainers"]["segmentation"]["config"], max_epochs=1)  # the module sends the config it shows
    _train_and_wait(client, "segmentation", params)
    progress = requests.get(f"{server.url}/brats/training", timeout=30).json()["progress"]
    assert progress["phase"] == "finished" and progress["epoch"] == 1


def _preparations(client, study: str, settle_s: float = 120.0) -> list:
    deadline = time.time() + settle_s
    while True:
        mine = [(r["why"], r["outcome"]) for r in client.info()["case_preparation"]["recent"] if r["study"] == study]
        if mine or time.time() > deadline:
            return mine
        time.sleep(0.5)


def test_a_downloaded_study_is_prepared_for_its_auto_segmentation(client, server, sample):
    """Slicer opening a study by its id downloads the volume first: the server prepares the study's auto-segmentation
    then, once; its existence check (HEAD) and a study it does not hold prepare nothing."""
    handed_out = sample[0]["id"]
    downloaded, checked = sorted(c for c in client.datastore()["objects"] if c != handed_out)[:2]
    assert requests.head(f"{server.url}/datastore/image", params={"image": checked}, timeout=60).status_code == 200
    for _ in range(2):
        answer = requests.get(f"{server.url}/datastore/image", params={"image": downloaded}, timeout=120)
        assert answer.status_code == 200 and answer.content, "the download is MONAI Label's, as before"
    assert requests.get(f"{server.url}/datastore/image", params={"image": "no_such_study"}, timeout=60).status_code == 404
    assert _preparations(client, downloaded) == [("downloaded", "prepared")], "prepared once for two downloads"
    assert _preparations(client, checked, settle_s=0) == [] and _preparations(client, "no_such_study", settle_s=0) == []


def test_deepedit_points_on_the_refinement_model_then_submit_label(client, server, sample):
    """The module's DeepEdit section with several labels (MONAILabel.py, onUpdateDeepgrow): the refinement model is
    listed as type deepedit (from the segmentation model until trained); each segment's control points go as IJK of
    the volume node, one list per label of /info/; the answer lies on that volume and Submit Label stores it."""
    sample, image = sample
    info = client.info()
    assert info["models"]["refinement"]["type"] == "deepedit"
    _train_and_wait(client, "refinement", dict(info["trainers"]["refinement"]["config"], max_epochs=1))
    info = client.info()
    assert info["models"]["refinement"]["type"] == "deepedit"

    # a control point placed at a RAS position; Slicer rounds the volume node's RAS-to-IJK of it
    ras = image.affine @ np.array([*(np.array(image.shape[:3]) // 2), 1.0])
    ijk = [int(round(v)) for v in (np.linalg.inv(image.affine) @ ras)[:3]]
    params = {name: [] for name in info["labels"]}
    params["enhancing_tumour"] = [ijk]
    params["label"] = "enhancing_tumour"
    label_file, result = client.infer("refinement", sample["id"], params)
    label = nib.load(label_file)
    assert label.shape == image.shape[:3] and np.allclose(label.affine, image.affine, atol=1e-3)
    assert result["model"]["path"].endswith("refinement.pt")

    answer = np.asarray(label.dataobj).astype(np.uint8)
    client.save_label(sample["id"], label_file, params={"label_info": [{"name": n, "idx": i} for n, i in (("necrotic_core", 1), ("edema", 2), ("enhancing_tumour", 3))]})
    assert np.array_equal(_final_label(server, sample["id"]), answer)
