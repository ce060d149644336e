"""Label files as viewers write them: a plain NRRD labelmap (OHIF's Submit label) in the viewer's own axis
order, named by segment, lands on the study's grid voxel for voxel; anything off the grid is refused."""

from __future__ import annotations

import nrrd
import numpy as np
import pytest

from lib.config import BRATS_2023, LABELS
from lib.labels.conventions import LabelError
from lib.labels.label_files import LPS_TO_RAS, read_uploaded_label, write_nrrd_label
from lib.studies.folder_layout import Geometry

STUDY = Geometry((12, 10, 8), np.array([[-2.0, 0, 0, 40], [0, -2.0, 0, 30], [0, 0, 3.0, -12], [0, 0, 0, 1]]))


def _label() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 4, STUDY.shape).astype(np.uint8)


def _viewer_nrrd(path, voxels, ijk_to_lps, names_by_value):
    header = {"space": "left-posterior-superior", "space directions": ijk_to_lps[:3, :3].T, "space origin": ijk_to_lps[:3, 3]}
    nrrd.write(str(path), voxels, header, index_order="F")
    return {"label_info": [{"idx": v, "name": n} for v, n in names_by_value.items()]}


def test_a_viewer_labelmap_in_reversed_slice_order_with_its_own_values_decodes_onto_the_study(tmp_path):
    label = _label()
    study_lps = np.linalg.inv(LPS_TO_RAS) @ STUDY.affine
    # a viewer's volume: slices from the other end, columns and rows swapped, segments numbered alphabetically
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, 0], ijk_to_lps[:3, 1], ijk_to_lps[:3, 2] = study_lps[:3, 1], study_lps[:3, 0], -study_lps[:3, 2]
    ijk_to_lps[:3, 3] = study_lps[:3, 3] + study_lps[:3, 2] * (STUDY.shape[2] - 1)
    ours_to_viewer = {LABELS["edema"]: 1, LABELS["enhancing_tumour"]: 2, LABELS["necrotic_core"]: 3}
    viewer_values = np.zeros_like(label)
    for ours, theirs in ours_to_viewer.items():
        viewer_values[label == ours] = theirs
    voxels = np.flip(viewer_values, 2).transpose(1, 0, 2)
    params = _viewer_nrrd(tmp_path / "ohif.nrrd", voxels, ijk_to_lps, {1: "edema", 2: "enhancing_tumour", 3: "necrotic_core"})
    assert np.array_equal(read_uploaded_label(tmp_path / "ohif.nrrd", STUDY, params, BRATS_2023), label)


def test_the_server_nrrd_reads_back_exactly(tmp_path):
    label = _label()
    write_nrrd_label(label, STUDY.affine, tmp_path / "result.nrrd")
    assert np.array_equal(read_uploaded_label(tmp_path / "result.nrrd", STUDY, {}, BRATS_2023), label)


def test_a_labelmap_half_a_voxel_off_the_grid_is_refused(tmp_path):
    study_lps = np.linalg.inv(LPS_TO_RAS) @ STUDY.affine
    shifted = study_lps.copy()
    shifted[:3, 3] += study_lps[:3, 2] * 0.5
    params = _viewer_nrrd(tmp_path / "off.nrrd", _label(), shifted, {1: "necrotic_core", 2: "edema", 3: "enhancing_tumour"})
    with pytest.raises(LabelError, match="not on the study's voxel grid"):
        read_uploaded_label(tmp_path / "off.nrrd", STUDY, params, BRATS_2023)


def test_a_labelmap_drawn_on_a_moved_sagittal_series_of_the_study_is_saved_on_the_study_grid(tmp_path):
    """OHIF segments the series on screen: a label drawn on the study's sagittal FLAIR, which the patient moved before
    (registered to the T1c: ``to_study``), lands on the study's grid where its anatomy is."""
    from scipy import ndimage
    from scipy.spatial.transform import Rotation

    from lib.labels.label_files import SeriesGrid

    study = Geometry((48, 48, 40), np.array([[-1.0, 0, 0, 24], [0, -1.0, 0, 24], [0, 0, 1.0, -20], [0, 0, 0, 1]]))
    world = np.stack(np.meshgrid(*[np.arange(n) for n in study.shape], indexing="ij"), -1) @ study.affine[:3, :3].T + study.affine[:3, 3]
    truth = np.zeros(study.shape, np.uint8)
    truth[np.linalg.norm(world - [2.0, -3.0, 1.0], axis=-1) <= 12] = LABELS["edema"]
    truth[np.linalg.norm(world - [2.0, -3.0, 1.0], axis=-1) <= 5] = LABELS["enhancing_tumour"]
    # the FLAIR as stored: sagittal 1 x 1 x 1.2 mm, the patient turned 5 degrees and shifted 4 mm before it
    sagittal = np.array([[0, 0, -1.2, 30], [-1.0, 0, 0, 28], [0, -1.0, 0, 24], [0, 0, 0, 1]])
    series = Geometry((56, 48, 50), sagittal)
    to_study = np.eye(4)
    to_study[:3, :3] = Rotation.from_euler("z", 5, degrees=True).as_matrix()
    to_study[:3, 3] = [4.0, 0.0, -1.0]
    # what the annotator draws on that series: the anatomy it shows there
    series_to_study_voxels = np.linalg.inv(study.affine) @ to_study @ sagittal
    drawn = ndimage.affine_transform(truth, series_to_study_voxels[:3, :3], series_to_study_voxels[:3, 3], output_shape=series.shape, order=0)
    params = _viewer_nrrd(tmp_path / "flair.nrrd", drawn, np.linalg.inv(LPS_TO_RAS) @ sagittal, {2: "edema", 3: "enhancing_tumour"})

    with pytest.raises(LabelError, match="not on the study's voxel grid"):
        read_uploaded_label(tmp_path / "flair.nrrd", study, params, BRATS_2023)  # the study's other series not known: refused
    elsewhere = sagittal.copy()
    elsewhere[0, 3] += 5.0
    other = SeriesGrid(Geometry(series.shape, elsewhere), np.eye(4))
    with pytest.raises(LabelError, match="not on the study's voxel grid"):
        read_uploaded_label(tmp_path / "flair.nrrd", study, params, BRATS_2023, lambda: [other])  # nor on any series' grid
    saved = read_uploaded_label(tmp_path / "flair.nrrd", study, params, BRATS_2023, lambda: [other, SeriesGrid(series, to_study)])
    for value in (LABELS["edema"], LABELS["enhancing_tumour"]):
        dice = 2 * ((saved == value) & (truth == value)).sum() / ((saved == value).sum() + (truth == value).sum())
        assert dice > 0.9, (value, dice)
    unmoved = read_uploaded_label(tmp_path / "flair.nrrd", study, params, BRATS_2023, lambda: [SeriesGrid(series, np.eye(4))])
    assert ((unmoved > 0) & (truth > 0)).sum() < 0.9 * (truth > 0).sum(), "the series' placement is what puts it right"
