"""Multi-frame MR series open as their single-frame originals do, and labels on them go back as SEG.

The sample study is imported single-frame, then stored again (new UIDs) with T1c and FLAIR as one Legacy
Converted Enhanced MR instance each (highdicom's converter: geometry in the shared and per-frame functional
groups) and T2 split over two such instances. The server lists it, opens it to the same voxels, and a label
saved on it becomes a SEG that refers to the multi-frame T1c and decodes back to the label.
"""

from __future__ import annotations

import copy

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
import requests

from lib.config import BRATS_2023
from lib.dicom.mr_series import uid_from
from lib.dicom.seg import seg_to_label
from lib.studies.dicomweb_datastore import DicomWebStudyDatastore
from scripts.import_studies import import_studies
from tests.conftest import make_studies

pytestmark = pytest.mark.server


def _renamed(datasets, seed: str):
    out = []
    for ds in datasets:
        ds = copy.deepcopy(ds)
        ds.StudyInstanceUID = uid_from(seed, "study")
        ds.SeriesInstanceUID = uid_from(seed, str(ds.SeriesDescription))
        ds.SOPInstanceUID = uid_from(seed, ds.SOPInstanceUID)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = "MULTIFRAME"
        out.append(ds)
    return out


def _enhanced(datasets, seed: str, parts: int = 1):
    """The series as Legacy Converted Enhanced MR, in ``parts`` instances."""
    datasets = sorted(datasets, key=lambda d: int(d.InstanceNumber))
    chunks = np.array_split(np.arange(len(datasets)), parts)
    return [
        hd.legacy.LegacyConvertedEnhancedMRImage(
            legacy_datasets=[datasets[i] for i in chunk],
            series_instance_uid=datasets[0].SeriesInstanceUID,
            series_number=int(datasets[0].SeriesNumber),
            sop_instance_uid=uid_from(seed, f"enhanced-{datasets[0].SeriesDescription}-{n}"),
            instance_number=n + 1,
        )
        for n, chunk in enumerate(chunks)
    ]


@pytest.fixture(scope="module")
def studies(orthanc, tmp_path_factory):
    sample = make_studies(tmp_path_factory.mktemp("multiframe"), cases=1, labelled=0, seed=17)
    import_studies(sample, orthanc.archive(), progress=False)
    archive = orthanc.archive()
    original = archive.studies()[0]["study_uid"]
    converted = []
    for series in archive.series(original):
        datasets = _renamed(archive.retrieve_series(original, series.series_uid), "mf")
        if series.description in ("T1 POST GAD", "T2 FLAIR"):
            datasets = _enhanced(datasets, "mf")
        elif series.description == "T2":
            datasets = _enhanced(datasets, "mf", parts=2)
        converted += datasets
    archive.store(converted)
    return original, uid_from("mf", "study")


def test_a_study_of_multi_frame_series_opens_to_the_same_voxels(orthanc, studies, tmp_path):
    original, multiframe = studies
    ds = DicomWebStudyDatastore(orthanc.archive(), tmp_path / "workspace", refresh_s=0)
    assert multiframe in ds.list_images(), [p.reason for p in ds.problems()]
    assert {s["instances"] for c, s in ds.get_image_info(multiframe)["series"].items() if c in ("t1c", "flair")} == {1}
    expected = nib.load(ds.get_image_uri(original))
    got = nib.load(ds.get_image_uri(multiframe))
    assert np.allclose(got.affine, expected.affine, atol=1e-4)
    assert np.array_equal(np.asarray(got.dataobj), np.asarray(expected.dataobj))


def test_a_label_on_a_multi_frame_study_goes_to_the_archive_as_a_seg_referring_to_its_frames(orthanc, studies, tmp_path):
    _, multiframe = studies
    ds = DicomWebStudyDatastore(orthanc.archive(), tmp_path / "workspace", refresh_s=0)
    geometry = ds.geometry(multiframe)
    label = np.zeros(geometry.shape, np.uint8)
    label[40:50, 42:52, 20:30] = 3
    label[40:50, 42:52, 30:33] = 1
    path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, geometry.affine), str(path))
    ds.save_label(multiframe, str(path), "final", {"user": "dr_mf"})
    info = ds.get_label_info(multiframe, "final")
    assert info["archive"] == "stored", info
    archive = orthanc.archive()
    seg = archive.retrieve_instance(multiframe, info["seg_series_uid"], info["seg_sop_instance_uid"])
    t1c = ds.get_image_info(multiframe)["series"]["t1c"]["uid"]
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == t1c and len(referenced.ReferencedInstanceSequence) == 1, "the one multi-frame T1c instance"
    assert np.array_equal(seg_to_label(seg, geometry.affine, geometry.shape, BRATS_2023), label)
    assert requests.get(f"{orthanc.url}/system", auth=(orthanc.user, orthanc.password), timeout=10).ok
