"""A folder of studies becomes cases: every layout, every convention, and bad input named, never lost."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lib.config import CHANNELS
from lib.errors import InvalidInput, NotAllowed
from lib.studies.folder_datastore import StudyFolderDatastore
from lib.studies.folder_layout import find_studies
from synthetic import generate_study
from tests.conftest import make_studies

CASE = "BraTS-GLI-00000-000"


def _save(array, affine, path: Path) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _datastore(studies: Path, tmp_path: Path) -> StudyFolderDatastore:
    return StudyFolderDatastore(studies, tmp_path / "workspace")


def _problem(ds, study_id):
    return next(p.reason for p in ds.problems() if p.study_id == study_id)


# --- layouts and conventions ------------------------------------------------------------------------


def test_brats2023_folder_lists_each_study_as_one_four_channel_case(studies_copy, tmp_path):
    ds = _datastore(studies_copy, tmp_path)
    assert len(ds.list_images()) == 6 and ds.problems() == []
    assert len(ds.get_labeled_images()) == 4 and len(ds.get_unlabeled_images()) == 2
    volume = nib.load(ds.get_image_uri(CASE))
    assert volume.shape == (120, 120, 78, 4)
    study = generate_study(11, 0, spacing_mm=2.0)
    data = np.asarray(volume.dataobj)
    for i, modality in enumerate(CHANNELS):
        assert np.array_equal(data[..., i], study.images[modality]), f"channel {i} is {modality}"
    assert np.allclose(volume.affine, study.affine)
    label = np.asarray(nib.load(ds.get_label_uri(CASE, "final")).dataobj)
    assert np.array_equal(label, study.label)
    assert ds.get_label_info(CASE, "final")["source"] == "imported"


def test_brats2021_labels_are_mapped_on_import(tmp_path):
    studies = make_studies(tmp_path / "s", cases=1, labelled=1, seed=11, layout="brats2021")
    ds = _datastore(studies, tmp_path)
    label = np.asarray(nib.load(ds.get_label_uri("BraTS2021_00000", "final")).dataobj)
    assert set(np.unique(label)) == {0, 1, 2, 3}
    assert np.array_equal(label, generate_study(11, 0, spacing_mm=2.0).label)
    assert ds.get_label_info("BraTS2021_00000", "final")["convention"] == "brats2021"


def test_msd_task01_layout_and_label_convention(tmp_path):
    studies = make_studies(tmp_path / "s", cases=2, labelled=1, seed=11, layout="msd")
    ds = _datastore(studies, tmp_path)
    assert ds.list_images() == ["BRATS_000", "BRATS_001"] and ds.get_labeled_images() == ["BRATS_000"]
    study = generate_study(11, 0, spacing_mm=2.0)
    data = np.asarray(nib.load(ds.get_image_uri("BRATS_000")).dataobj)
    for i, modality in enumerate(CHANNELS):
        assert np.array_equal(data[..., i], study.images[modality]), "reordered from FLAIR, T1w, t1gd, T2w"
    label = np.asarray(nib.load(ds.get_label_uri("BRATS_000", "final")).dataobj)
    assert np.array_equal(label, study.label), "MSD 1 edema / 2 non-enhancing swapped to ours"


# --- bad studies are reported with a reason ------------------------------------------------------------


def test_study_missing_a_modality_is_reported(studies_copy, tmp_path):
    (studies_copy / CASE / f"{CASE}-t2f.nii.gz").unlink()
    ds = _datastore(studies_copy, tmp_path)
    assert CASE not in ds.list_images() and len(ds.list_images()) == 5
    reason = _problem(ds, CASE)
    assert "missing FLAIR" in reason and "-t2f" in reason


def test_unreadable_file_and_duplicate_modality_are_reported(studies_copy, tmp_path):
    (studies_copy / CASE / f"{CASE}-t1c.nii.gz").write_bytes(b"not a nifti")
    other = "BraTS-GLI-00001-000"
    shutil.copy(studies_copy / other / f"{other}-t2w.nii.gz", studies_copy / other / f"{other}-t2.nii.gz")
    ds = _datastore(studies_copy, tmp_path)
    assert "not a readable NIfTI" in _problem(ds, CASE)
    assert "more than one file for T2" in _problem(ds, other)
    assert len(ds.list_images()) == 4


def test_ground_truth_with_unknown_values_is_reported_and_the_study_stays_usable(studies_copy, tmp_path):
    seg = studies_copy / CASE / f"{CASE}-seg.nii.gz"
    image = nib.load(str(seg))
    data = np.asarray(image.dataobj).copy()
    data[0, 0, 0] = 7
    _save(data, image.affine, seg)
    ds = _datastore(studies_copy, tmp_path)
    assert CASE in ds.list_images() and CASE in ds.get_unlabeled_images()
    assert "[7]" in _problem(ds, CASE)


# --- labels: validated, atomic, with history ----------------------------------------------------------


def test_saved_label_replaces_current_and_keeps_history(studies_copy, tmp_path):
    ds = _datastore(studies_copy, tmp_path)
    original = np.asarray(nib.load(ds.get_label_uri(CASE, "final")).dataobj)
    corrected = original.copy()
    corrected[corrected == 2] = 0
    upload = _save(corrected, nib.load(ds.get_label_uri(CASE, "final")).affine, tmp_path / "upload.nii.gz")
    assert ds.save_label(CASE, str(upload), "final", {"user": "dr_a", "client_id": "slicer"}) == CASE
    assert np.array_equal(np.asarray(nib.load(ds.get_label_uri(CASE, "final")).dataobj), corrected)
    info = ds.get_label_info(CASE, "final")
    assert info["user"] == "dr_a" and info["voxels"]["edema"] == 0
    history = ds.label_history(CASE)
    assert [(h["source"], h.get("user")) for h in history] == [("imported", None), ("submitted", "dr_a")]
    versions = sorted((ds.workspace / "label_store" / CASE).glob("*/label.nii.gz"))
    assert np.array_equal(np.asarray(nib.load(str(versions[0])).dataobj), original), "the first version is kept"
    assert not list((ds.workspace / "label_store" / CASE).glob(".commit-*")), "no temporary folders left behind"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a[:, :, :-1], "not on the study's grid"),
        (lambda a: np.where(a == 3, 4, a), "values 4"),
        (lambda a: a.astype(np.float32) + 0.5, "values 0.5"),
    ],
    ids=["wrong-shape", "brats2021-value", "fractional"],
)
def test_bad_label_is_refused_and_nothing_changes(studies_copy, tmp_path, change, message):
    ds = _datastore(studies_copy, tmp_path)
    before = Path(ds.get_label_uri(CASE, "final")).read_bytes()
    history_before = ds.label_history(CASE)
    label = np.asarray(nib.load(ds.get_label_uri(CASE, "final")).dataobj)
    upload = _save(change(label), nib.load(ds.get_label_uri(CASE, "final")).affine, tmp_path / "bad.nii.gz")
    with pytest.raises(InvalidInput, match=message) as error:
        ds.save_label(CASE, str(upload), "final", {})
    assert error.value.status_code == 422
    assert Path(ds.get_label_uri(CASE, "final")).read_bytes() == before
    assert ds.label_history(CASE) == history_before


def test_label_in_another_orientation_is_refused(studies_copy, tmp_path):
    ds = _datastore(studies_copy, tmp_path)
    image = nib.load(ds.get_label_uri(CASE, "final"))
    flipped = nib.as_closest_canonical(image).slicer[::-1, :, :]
    upload = tmp_path / "flipped.nii.gz"
    nib.save(flipped, str(upload))
    with pytest.raises(InvalidInput, match="not on the study's grid"):
        ds.save_label(CASE, str(upload), "final", {})


def test_removing_a_label_keeps_its_history_and_studies_cannot_be_deleted(studies_copy, tmp_path):
    ds = _datastore(studies_copy, tmp_path)
    ds.remove_label(CASE, "final")
    assert CASE in ds.get_unlabeled_images()
    assert len(list((ds.workspace / "label_store" / CASE).glob("*/label.nii.gz"))) == 1
    assert [("removed_at" in h) for h in ds.label_history(CASE)] == [False, True]
    with pytest.raises(NotAllowed):
        ds.remove_image(CASE)
    assert (studies_copy / CASE).is_dir()


def test_annotator_label_survives_restart_and_is_not_overwritten_by_ground_truth(studies_copy, tmp_path):
    ds = _datastore(studies_copy, tmp_path)
    label = np.asarray(nib.load(ds.get_label_uri(CASE, "final")).dataobj).copy()
    label[label == 1] = 3
    upload = _save(label, nib.load(ds.get_label_uri(CASE, "final")).affine, tmp_path / "u.nii.gz")
    ds.save_label(CASE, str(upload), "final", {"user": "dr_b"})
    again = _datastore(studies_copy, tmp_path)
    assert np.array_equal(np.asarray(nib.load(again.get_label_uri(CASE, "final")).dataobj), label)
    assert again.get_label_info(CASE, "final")["user"] == "dr_b"


# --- the 4-channel cache -------------------------------------------------------------------------------


def test_changed_source_file_is_never_served_stale(studies_copy, tmp_path):
    ds = _datastore(studies_copy, tmp_path)
    first = np.asarray(nib.load(ds.get_image_uri(CASE)).dataobj)[..., 3].copy()
    path = studies_copy / CASE / f"{CASE}-t2f.nii.gz"
    image = nib.load(str(path))
    changed = np.asarray(image.dataobj) // 2
    time.sleep(0.01)
    _save(changed, image.affine, path)
    os.utime(path)
    ds.refresh()
    served = np.asarray(nib.load(ds.get_image_uri(CASE)).dataobj)[..., 3]
    assert np.array_equal(served, changed) and not np.array_equal(served, first)


def test_uploaded_four_channel_image_becomes_a_study(studies_copy, tmp_path):
    ds = _datastore(studies_copy, tmp_path)
    upload = tmp_path / "new.nii.gz"
    shutil.copy(ds.get_image_uri(CASE), tmp_path / "new.nii")
    nib.save(nib.load(str(tmp_path / "new.nii")), str(upload))
    assert ds.add_image("uploaded-1", str(upload), {"source": "test"}) == "uploaded-1"
    assert "uploaded-1" in ds.get_unlabeled_images()
    assert np.array_equal(np.asarray(nib.load(ds.get_image_uri("uploaded-1")).dataobj), np.asarray(nib.load(str(upload)).dataobj))
    with pytest.raises(InvalidInput, match="4D NIfTI"):
        ds.add_image("uploaded-2", str(studies_copy / CASE / f"{CASE}-t1c.nii.gz"), {})


def test_find_studies_ignores_the_workspace(studies_copy, tmp_path):
    _datastore(studies_copy, studies_copy / ".brats_label")
    sources, problems = find_studies(studies_copy)
    assert len(sources) == 6 and problems == []


def test_history_is_in_the_order_labels_were_saved_and_removed(studies_copy, tmp_path):
    ds = _datastore(studies_copy, tmp_path)
    label = np.asarray(nib.load(ds.get_label_uri(CASE, "final")).dataobj)
    upload = _save(label, nib.load(ds.get_label_uri(CASE, "final")).affine, tmp_path / "u.nii.gz")
    ds.remove_label(CASE, "final")
    ds.save_label(CASE, str(upload), "final", {"user": "dr_c"})
    ds.remove_label(CASE, "final")
    ds.save_label(CASE, str(upload), "final", {"user": "dr_d"})
    events = [("removed" if "removed_at" in h else h.get("user") or h["source"]) for h in ds.label_history(CASE)]
    assert events == ["imported", "removed", "dr_c", "removed", "dr_d"]
    times = [h.get("saved_at") or h["removed_at"] for h in ds.label_history(CASE)]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert ds.get_label_info(CASE, "final")["user"] == "dr_d"


def test_a_client_cannot_set_the_fields_the_server_computes(studies_copy, tmp_path):
    """Source, Dice against the pre-label, the pre-label's model and the archive state are the server's to say."""
    ds = _datastore(studies_copy, tmp_path)
    label = np.asarray(nib.load(ds.get_label_uri(CASE, "final")).dataobj)
    upload = _save(label, nib.load(ds.get_label_uri(CASE, "final")).affine, tmp_path / "u.nii.gz")
    forged = {"user": "dr_e", "source": "imported", "dice_tc": 1.0, "hd95_wt": 0.0, "lesion_dice_et": 1.0, "prelabel_model_version": "v9", "archive": "stored", "saved_at": "2000"}
    ds.save_label(CASE, str(upload), "final", forged)
    info = ds.get_label_info(CASE, "final")
    assert info["source"] == "submitted" and info["user"] == "dr_e"
    assert not {"dice_tc", "hd95_wt", "lesion_dice_et", "prelabel_model_version", "archive"} & set(info)
    assert info["saved_at"] > "2026"
    ds.update_label_info(CASE, "final", {"source": "imported", "user": "dr_forger", "note": "checked"})
    info = ds.get_label_info(CASE, "final")
    assert info["source"] == "submitted" and info["user"] == "dr_e" and info["note"] == "checked", "who saved it stays"


@pytest.mark.parametrize("label_id", ["../../model/serving", "..", "a/b", ".hidden", "x" * 300])
def test_a_label_id_never_becomes_a_path_outside_the_labels(studies_copy, tmp_path, label_id):
    ds = _datastore(studies_copy, tmp_path)
    for call in (lambda: ds.get_label_info(label_id, "final"), lambda: ds.remove_label(label_id, "final"), lambda: ds.update_label_info(label_id, "final", {"a": 1})):
        with pytest.raises(InvalidInput, match="not a valid study id"):
            call()
    with pytest.raises(InvalidInput, match="tag"):
        ds.get_label_info(CASE, "../final")


def test_labels_from_the_earlier_layout_are_moved_into_the_store_in_order(studies_copy, tmp_path):
    """A workspace written before the label store (labels/final, labels/history) keeps every version."""
    workspace = tmp_path / "ws"
    history = workspace / "labels" / "history" / CASE
    history.mkdir(parents=True)
    label = np.asarray(nib.load(str(next((studies_copy / CASE).glob("*-seg.nii.gz")))).dataobj).astype(np.uint8)
    affine = nib.load(str(next((studies_copy / CASE).glob("*-seg.nii.gz")))).affine
    _save(label, affine, history / "20261101T100000000000Z_final.nii.gz")
    (history / "20261101T100000000000Z_final.json").write_text(json.dumps({"tag": "final", "saved_at": "2026-11-01T10:00:00.000000Z", "user": "dr_old"}))
    (history / "2026-11-02T100000.000000Z_final_removed.json").write_text(json.dumps({"tag": "final", "removed_at": "2026-11-02T10:00:00.000000Z"}))
    ds = StudyFolderDatastore(studies_copy, workspace)
    events = [h.get("user") or ("removed" if "removed_at" in h else h["source"]) for h in ds.label_history(CASE)]
    assert events == ["dr_old", "removed"], "the removal stays, so the shipped ground truth is not imported over it"
    assert CASE in ds.get_unlabeled_images()
    assert StudyFolderDatastore(studies_copy, workspace).label_history(CASE) == ds.label_history(CASE), "moved once"


def test_a_study_with_nan_voxels_is_a_listed_problem_and_the_others_stay(studies_copy, tmp_path):
    path = next((studies_copy / CASE).glob("*-t2w.nii.gz"))
    image = nib.load(str(path))
    data = np.asarray(image.dataobj, dtype=np.float32).copy()
    data[10, 10, 10] = np.nan
    data[11, 10, 10] = np.inf
    _save(data, image.affine, path)
    ds = _datastore(studies_copy, tmp_path)
    with pytest.raises(InvalidInput, match="2 NaN or infinite"):
        ds.get_image_uri(CASE)
    assert CASE not in ds.list_images() and "T2 volume has 2 NaN" in _problem(ds, CASE)
    listing = json.loads(json.dumps(ds.json(), allow_nan=False))  # what /datastore/ answers
    assert CASE not in listing["objects"] and len(listing["objects"]) == len(ds.list_images()) > 0
    ds.refresh()
    assert CASE not in ds.list_images(), "not served again until its files change"
