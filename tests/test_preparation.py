"""Studies as the scanner wrote them are prepared as BraTS prepares its data before the model sees them: the
series aligned to the T1c by their images, the brain extracted; a study that cannot be aligned is refused with
its reason, and one already prepared costs only a check."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from monai.transforms import Compose
from monailabel.client import MONAILabelClient
from scipy.spatial.transform import Rotation

from lib.config import CHANNELS, PROFILES, REGIONS
from lib.studies.case_preparation import ArrivalPreparation
from lib.studies.dicomweb_datastore import DicomWebStudyDatastore
from lib.studies.folder_datastore import StudyFolderDatastore
from lib.trainers.evaluation import evaluation_transforms
from scripts.import_studies import import_studies
from synthetic.head import generate_raw_study
from synthetic.layouts import write_raw_study

CASE = "BraTS-GLI-00000-000"


def _move(path: Path, degrees: float, shift_mm: float) -> None:
    """Rewrite a series' header as if the patient had turned ``degrees`` about S and moved ``shift_mm`` along R."""
    image = nib.load(str(path))
    centre = image.affine @ np.append((np.asarray(image.shape[:3]) - 1) / 2.0, 1.0)
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("z", degrees, degrees=True).as_matrix()
    motion[:3, 3] = centre[:3] - motion[:3, :3] @ centre[:3] + [shift_mm, 0.0, 0.0]
    moved = nib.Nifti1Image(np.asarray(image.dataobj), motion @ image.affine)
    nib.save(moved, str(path))


def _channel(ds: StudyFolderDatastore, study: str, name: str) -> np.ndarray:
    return np.asarray(nib.load(ds.get_image_uri(study)).dataobj)[..., CHANNELS.index(name)].astype(np.float32)


def test_a_series_the_patient_moved_in_is_aligned_to_the_t1c_and_the_correction_is_shown(studies_copy, tmp_path):
    untouched = StudyFolderDatastore(studies_copy, tmp_path / "before")
    truth = _channel(untouched, CASE, "t1")
    _move(studies_copy / CASE / f"{CASE}-t1n.nii.gz", degrees=5.0, shift_mm=4.0)
    ds = StudyFolderDatastore(studies_copy, tmp_path / "ws")
    assert CASE in ds.list_images(), "a series on its own grid is prepared, not refused"
    aligned = _channel(ds, CASE, "t1")
    brain = truth > 0
    assert np.corrcoef(aligned[brain], truth[brain])[0, 1] > 0.97, "the T1 lands where the T1c's anatomy is"
    found = ds.get_image_info(CASE)["preparation"]["alignment"]["t1"]
    assert found["method"].startswith("rigid registration") and abs(found["rotation_deg"] - 5.0) < 1.0
    assert found["translation_mm"] > 2.0 and "metric" in found
    assert ds.get_image_info(CASE)["preparation"]["alignment"]["t2"]["method"].startswith("none"), "a series on the T1c's grid is not registered"


def test_a_series_on_another_grid_with_thick_slices_is_prepared_instead_of_refused(studies_copy, tmp_path):
    path = studies_copy / CASE / f"{CASE}-t2w.nii.gz"
    image = nib.load(str(path))
    thick = np.asarray(image.dataobj)[:, :, ::2]  # 4 mm slices, as a 2D T2 is acquired
    affine = image.affine.copy()
    affine[:3, 2] *= 2
    nib.save(nib.Nifti1Image(thick, affine), str(path))
    ds = StudyFolderDatastore(studies_copy, tmp_path / "ws")
    t2 = _channel(ds, CASE, "t2")
    assert t2.shape == tuple(ds.geometry(CASE).shape), "on the T1c's grid"
    found = ds.get_image_info(CASE)["preparation"]["alignment"]["t2"]
    assert found["rotation_deg"] < 1.0 and found["translation_mm"] < 1.0, "nothing moved: nothing corrected"


def test_a_series_beyond_what_a_patient_moves_is_a_listed_problem_and_the_others_are_served(studies_copy, tmp_path):
    _move(studies_copy / CASE / f"{CASE}-t2f.nii.gz", degrees=60.0, shift_mm=0.0)
    ds = StudyFolderDatastore(studies_copy, tmp_path / "ws")
    with pytest.raises(Exception, match="FLAIR series"):
        ds.get_image_uri(CASE)
    reason = next(p.reason for p in ds.problems() if p.study_id == CASE)
    assert "FLAIR series" in reason and ("beyond what a patient moves" in reason or "failed" in reason), reason
    assert CASE not in ds.list_images(), "never served unaligned"
    others = [s for s in ds.list_images()]
    assert len(others) == 5 and ds.get_image_uri(others[0])


def test_a_study_as_brats_delivers_it_costs_only_a_check(studies_copy, tmp_path):
    ds = StudyFolderDatastore(studies_copy, tmp_path / "ws")
    ds.get_image_uri(CASE)
    preparation = ds.get_image_info(CASE)["preparation"]
    assert preparation["seconds"] == 0.0
    assert all(v["method"].startswith("none") for v in preparation["alignment"].values())
    assert preparation["brain"]["method"].startswith("none: skull-stripped") and 800 < preparation["brain"]["volume_ml"] < 2000


@pytest.fixture(scope="module")
def raw_head_study(tmp_path_factory):
    """One whole-head study as a scanner writes it (1 mm, four planes and thicknesses, motion, bias), labelled."""
    folder = tmp_path_factory.mktemp("raw")
    raw = generate_raw_study(seed=5, index=0, case_id="RAW-00000")
    write_raw_study(raw, folder / "studies", with_label=True, truth_dir=folder / "truth")
    return folder, raw


def test_a_whole_head_is_prepared_skull_off_series_aligned_and_the_label_stays_on_the_t1c(raw_head_study, tmp_path):
    folder, raw = raw_head_study
    ds = StudyFolderDatastore(folder / "studies", tmp_path / "ws")
    assert ds.list_images() == ["RAW-00000"], [p.reason for p in ds.problems()]
    volume = np.asarray(nib.load(ds.get_image_uri("RAW-00000")).dataobj)
    info = ds.get_image_info("RAW-00000")
    assert volume.shape[:3] == raw.series["t1c"][0].shape, "the T1c's grid, as stored"
    preparation = info["preparation"]
    assert set(preparation["alignment"]) == {"t1", "t2", "flair"}
    for channel, found in preparation["alignment"].items():
        true_degrees = np.degrees(Rotation.from_matrix(raw.motion[channel][:3, :3]).magnitude())
        assert abs(found["rotation_deg"] - true_degrees) < 1.0, (channel, found, true_degrees)
    mask = np.asarray(nib.load(str(tmp_path / "ws" / "cases" / "RAW-00000.brain.nii.gz")).dataobj) > 0
    dice = 2 * (mask & raw.brain).sum() / (mask.sum() + raw.brain.sum())
    assert dice >= 0.95, f"brain mask Dice {dice:.3f}"
    assert abs(preparation["brain"]["volume_ml"] - raw.brain.sum() / 1000) / (raw.brain.sum() / 1000) < 0.05
    assert not volume[~mask].any(), "scalp, skull, eyes and neck are out of the model's input"
    assert ((raw.label > 0) & ~mask).sum() == 0, "no tumour cut away"
    label = np.asarray(nib.load(ds.get_label_uri("RAW-00000", "final")).dataobj)
    assert np.array_equal(label, raw.label), "the label stays on the T1c's grid as stored"
    assert json.loads(json.dumps(preparation)) == preparation
    item = ds.training_item("RAW-00000")
    image, label_file = nib.load(item["image"]), nib.load(item["label"])
    assert image.shape[:3] == label_file.shape and np.allclose(image.affine, label_file.affine), "label and prepared input share the T1c's grid"
    seen = Compose(evaluation_transforms(PROFILES["cpu"]))({"image": item["image"], "label": item["label"]})
    for index, region in enumerate(REGIONS):  # what training and validation see at 2 mm: the same volumes
        scanner_ml = np.isin(label, REGIONS[region]).sum() / 1000
        model_ml = float(seen["label"][index].sum()) * 8 / 1000
        assert abs(model_ml - scanner_ml) <= 0.01 * scanner_ml + 0.05, (region, model_ml, scanner_ml)


def _world_corners(affine: np.ndarray, shape) -> np.ndarray:
    """The grid's 8 corner voxel centres in the world, in a fixed order whatever the grid's axis order."""
    corners = [(affine @ np.array([*np.multiply(c, np.subtract(shape, 1)), 1.0]))[:3] for c in np.ndindex(2, 2, 2)]
    return np.array(sorted(tuple(np.round(c, 2)) for c in corners))


def test_a_raw_study_in_the_archive_is_opened_prepared_on_its_t1c_grid(raw_head_study, orthanc, tmp_path):
    """The same whole head sent to Orthanc as DICOM (axial T1c, thick axial T1 and T2, sagittal FLAIR)."""
    folder, raw = raw_head_study
    counts = import_studies(folder / "studies", orthanc.archive(), progress=False)
    assert counts["refused"] == 0, counts
    ds = DicomWebStudyDatastore(orthanc.archive(), tmp_path / "ws", refresh_s=0)
    [study] = ds.list_images()
    assert ds.get_image_info(study)["series"]["flair"]["instances"] == raw.series["flair"][0].shape[2], "the sagittal FLAIR, slice by slice"
    volume = np.asarray(nib.load(ds.get_image_uri(study)).dataobj)
    assert volume.shape[:3] == raw.series["t1c"][0].shape
    preparation = ds.get_image_info(study)["preparation"]
    for channel in ("t1", "t2", "flair"):
        true_degrees = np.degrees(Rotation.from_matrix(raw.motion[channel][:3, :3]).magnitude())
        assert abs(preparation["alignment"][channel]["rotation_deg"] - true_degrees) < 1.0, (channel, preparation["alignment"][channel])
    assert preparation["brain"]["method"].startswith("atlas") and abs(preparation["brain"]["volume_ml"] - raw.brain.sum() / 1000) < 0.05 * raw.brain.sum() / 1000

    # OHIF's Point Prompts click on the series on screen: each series' own grid, the sagittal FLAIR's included, placed
    # where its anatomy lies in the T1c's space (the patient moved before it: a click lands on the anatomy clicked)
    series = ds.get_image_info(study)["series"]
    for channel in ("t1c", "flair"):
        data, affine = raw.series[channel]
        grid = ds.clicked_grid(series[channel]["uid"])
        assert sorted(grid.shape) == sorted(data.shape), (channel, grid.shape, data.shape)
        anatomy = np.linalg.inv(raw.motion[channel]) @ affine  # the true motion undone
        error = np.abs(_world_corners(grid.affine, grid.shape) - _world_corners(anatomy, data.shape)).max()
        assert error <= 1.5, f"{channel}: a corner voxel {error:.2f} mm from the anatomy it shows"
        if channel == "flair":
            moved = np.abs(_world_corners(affine, data.shape) - _world_corners(anatomy, data.shape)).max()
            assert moved > 3.0, f"the FLAIR's motion ({moved:.1f} mm at a corner) is what is corrected"
    assert ds.clicked_grid(study).shape == ds.geometry(study).shape


@pytest.mark.server
def test_next_sample_never_hands_out_a_study_that_cannot_be_prepared(studies_copy, server_factory, tmp_path):
    """Two unlabelled studies, one of them with a FLAIR no registration can align: every annotator asking for the
    next study gets the other one, and the refused study is listed as a problem with its reason."""
    unlabelled = sorted(p.name for p in studies_copy.iterdir() if not (p / f"{p.name}-seg.nii.gz").exists())
    assert len(unlabelled) == 2
    refused, usable = unlabelled
    _move(studies_copy / refused / f"{refused}-t2f.nii.gz", degrees=60.0, shift_mm=0.0)
    server = server_factory(studies_copy, retrain_after_labels=0, prepare_on_arrival="false")  # Next Sample meets it first
    for annotator in range(3):
        answer = MONAILabelClient(server.url, client_id=f"annotator-{annotator}").next_sample("random", {})
        assert answer.get("id") in (usable, None), answer
        assert answer.get("id") != refused
    listing = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30).json()
    problem = next(p["reason"] for p in listing["problems"] if p["study_id"] == refused)
    assert "FLAIR series" in problem, problem


@pytest.mark.server
def test_studies_are_prepared_as_they_arrive_while_the_server_is_idle(studies_copy, server_factory):
    """Nobody opens anything: the server prepares every study by itself, a moved series aligned, and the study
    that cannot be aligned is a listed problem before anyone is handed it."""
    unlabelled = sorted(p.name for p in studies_copy.iterdir() if not (p / f"{p.name}-seg.nii.gz").exists())
    refused, moved = unlabelled
    _move(studies_copy / refused / f"{refused}-t2f.nii.gz", degrees=60.0, shift_mm=0.0)
    _move(studies_copy / moved / f"{moved}-t1n.nii.gz", degrees=4.0, shift_mm=3.0)
    server = server_factory(studies_copy, retrain_after_labels=0, prepare_on_arrival="true")  # the product's default
    client = MONAILabelClient(server.url)
    deadline = time.time() + 180
    while time.time() < deadline:
        arrival = client.info()["arrival_preparation"]
        if arrival["opened"] == 6 and len(arrival["recent"]) == 6:
            break
        time.sleep(1)
    outcomes = {r["study"]: r["outcome"] for r in arrival["recent"]}
    assert arrival["on"] and len(outcomes) == 6, arrival
    assert outcomes[moved] == "prepared" and outcomes[refused].startswith("failed") and "FLAIR series" in outcomes[refused]
    listing = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30).json()
    assert refused in {p["study_id"] for p in listing["problems"]} and refused not in listing["objects"]
    found = listing["objects"][moved]["image"]["info"]["preparation"]["alignment"]["t1"]
    assert abs(found["rotation_deg"] - 4.0) < 1.0, found


def test_a_batch_of_arrivals_is_prepared_back_to_back_and_waits_while_the_server_is_busy():
    """The interval is how often the server looks for new studies, not a pause between them: 100 studies arriving
    at once must not take 100 intervals. An auto-segmentation running (not idle) still holds the next one back."""
    waiting = ["S-3", "S-1", "S-2"]
    opened: dict = {}
    busy = {"now": False}

    def open_study(study: str) -> None:
        opened[study] = time.monotonic()
        waiting.remove(study)
        busy["now"] = study == "S-2"  # an annotator asks for an auto-segmentation while S-2 is prepared

    arrival = ArrivalPreparation(lambda: list(waiting), open_study, lambda: not busy["now"], interval_s=1.0)
    arrival.start()
    try:
        deadline = time.monotonic() + 10
        while len(opened) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)
        assert list(opened) == ["S-1", "S-2"], "in the order listed (names break ties), and nothing while the server is busy"
        assert opened["S-2"] - opened["S-1"] < 0.5, "the second study of a batch does not wait an interval"
        busy["now"] = False
        while len(opened) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(opened) == ["S-1", "S-2", "S-3"] and arrival.status()["opened"] == 3
    finally:
        arrival.stop()
