"""Label files as viewers write them: a plain NRRD labelmap (OHIF's Submit label) in the viewer's own axis
order, named by segment, lands on the study's grid voxel for voxel; anything off the grid is refused."""

from __future__ import annotations

import nrrd
import numpy as np
import pytest

from lib.config import LABELS
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
    assert np.array_equal(read_uploaded_label(tmp_path / "ohif.nrrd", STUDY, params), label)


def test_the_server_nrrd_reads_back_exactly(tmp_path):
    label = _label()
    write_nrrd_label(label, STUDY.affine, tmp_path / "result.nrrd")
    assert np.array_equal(read_uploaded_label(tmp_path / "result.nrrd", STUDY, {}), label)


def test_a_labelmap_half_a_voxel_off_the_grid_is_refused(tmp_path):
    study_lps = np.linalg.inv(LPS_TO_RAS) @ STUDY.affine
    shifted = study_lps.copy()
    shifted[:3, 3] += study_lps[:3, 2] * 0.5
    params = _viewer_nrrd(tmp_path / "off.nrrd", _label(), shifted, {1: "necrotic_core", 2: "edema", 3: "enhancing_tumour"})
    with pytest.raises(LabelError, match="not on the study's voxel grid"):
        read_uploaded_label(tmp_path / "off.nrrd", STUDY, params)
