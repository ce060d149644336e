"""The tumour-volume Measurement Report (TID 1500 SR) of a saved label: values, references, validity.

A small MR series is written with the importer's own writer, a label with known voxel counts is saved as a
SEG with ``label_to_seg`` and reported; the SR is checked with dciodvfy (dicom3tools) and read back with
dsrdump (DCMTK) as well as with ``volumes_from_report``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lib.config import BRATS_2023, FOREGROUND_LABELS, REGIONS
from lib.dicom.measurement_report import SERIES_NUMBER, measurement_report, volumes_from_report
from lib.dicom.measurement_report import reported as reported_by
from lib.dicom.mr_series import StudyTags, uid_from, volume_to_mr_series
from lib.dicom.seg import label_to_seg
from lib.model.transforms import region_volumes_ml
from tests.conftest import dciodvfy_errors

SPACING_MM = (1.5, 1.2, 3.0)  # anisotropic, so a wrong axis would change the volume
SHAPE = (24, 20, 8)
VOXEL_ML = float(np.prod(SPACING_MM)) / 1000.0
SEED = "measurement-report-test"
REPORTED = reported_by(BRATS_2023)  # volumes_ml key -> (abbreviation, name): the tracking identifier "ABBR: name"


def _label() -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[10:20, 5:15, 2:6] = 2  # edema around the core
    label[2:6, 2:6, 1:3] = 1  # necrotic core: 32 voxels
    label[12:15, 7:10, 3:5] = 3  # enhancing tumour: 18 voxels, inside the edema
    return label


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("measurement_report")
    affine = np.diag([*SPACING_MM, 1.0])
    affine[:3, 3] = (-18.0, -12.0, -10.0)
    image = np.random.default_rng(3).integers(0, 800, SHAPE).astype(np.int16)
    study = StudyTags("SR-VOLUMES", "Volumes^Test", uid_from(SEED, "study"), "1", "20240102", "101500")
    series = volume_to_mr_series(image, affine, study, "T1 POST GAD", 3, f"{SEED}-t1c", uid_from(SEED, "frame-of-reference"))
    label = _label()
    seg = label_to_seg(label, series, SEED, "test", BRATS_2023)
    volumes = region_volumes_ml(label, VOXEL_ML, BRATS_2023)
    sr = measurement_report(seg, series, volumes, SEED, "test", BRATS_2023)
    path = folder / "sr.dcm"
    sr.save_as(str(path), write_like_original=False)
    return {"series": series, "label": label, "seg": seg, "volumes": volumes, "sr": sr, "path": path}


def _groups(sr: pydicom.Dataset) -> dict:
    """Measurement groups by tracking identifier."""
    measurements = next(item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010")
    groups = {}
    for group in measurements.ContentSequence:
        tracking = next(item for item in group.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "112039")
        groups[str(tracking.TextValue)] = group
    return groups


def _images(group: pydicom.Dataset, code: str) -> list:
    return [item for item in group.ContentSequence if item.ValueType == "IMAGE" and item.ConceptNameCodeSequence[0].CodeValue == code]


def _segment_numbers(reference: pydicom.Dataset) -> list:
    numbers = reference.ReferencedSegmentNumber  # an int when it holds one value
    return sorted(int(n) for n in (numbers if isinstance(numbers, (list, pydicom.multival.MultiValue)) else [numbers]))


def _expected_ml(label: np.ndarray) -> dict:
    expected = {name: int((label == value).sum()) * VOXEL_ML for name, value in FOREGROUND_LABELS.items()}
    expected.update({name: int(np.isin(label, values).sum()) * VOXEL_ML for name, values in REGIONS.items()})
    return expected


def test_tracking_identifiers_name_each_label_and_region_the_brats_way():
    assert REPORTED == {
        "necrotic_core": ("NCR", "necrotic tumour core"),
        "edema": ("ED", "peritumoural edema"),
        "enhancing_tumour": ("ET", "enhancing tumour"),
        "TC": ("TC", "tumour core"),
        "WT": ("WT", "whole tumour"),
    }


def test_volumes_are_voxel_counts_times_voxel_volume(case):
    expected = _expected_ml(case["label"])
    assert expected["necrotic_core"] == pytest.approx(32 * VOXEL_ML) and expected["enhancing_tumour"] == pytest.approx(18 * VOXEL_ML)
    reported = volumes_from_report(case["sr"], BRATS_2023)
    assert set(reported) == set(REPORTED) == set(case["volumes"]), "the keys RegionVolumesd gives"
    for name in FOREGROUND_LABELS:
        assert reported[name] == pytest.approx(expected[name], abs=1e-3), name
    for region in ("TC", "WT"):
        assert reported[region] == pytest.approx(expected[region], abs=1e-3), region
    assert REGIONS["ET"] == (FOREGROUND_LABELS["enhancing_tumour"],)
    assert reported["enhancing_tumour"] == pytest.approx(expected["ET"], abs=1e-3), "ET is the enhancing tumour's group"


def test_volumes_round_trip_through_a_file(case):
    from_file = volumes_from_report(pydicom.dcmread(str(case["path"])), BRATS_2023)
    assert from_file == pytest.approx(case["volumes"], abs=1e-9)
    assert volumes_from_report(case["sr"], BRATS_2023) == pytest.approx(from_file, abs=1e-9)


def test_report_references_the_seg_segments_and_source_series(case):
    sr, seg, series = pydicom.dcmread(str(case["path"])), case["seg"], case["series"]
    source_uid = str(series[0].SeriesInstanceUID)
    assert sr.Modality == "SR" and int(sr.SeriesNumber) == SERIES_NUMBER
    assert sr.StudyInstanceUID == seg.StudyInstanceUID == series[0].StudyInstanceUID
    assert (sr.PatientID, str(sr.PatientName)) == (series[0].PatientID, str(series[0].PatientName)), "the source's patient, nothing added"
    current = [
        (s.SeriesInstanceUID, i.ReferencedSOPInstanceUID) for e in sr.CurrentRequestedProcedureEvidenceSequence for s in e.ReferencedSeriesSequence for i in s.ReferencedSOPSequence
    ]
    assert current == [(seg.SeriesInstanceUID, seg.SOPInstanceUID)], "the SEG, referenced in the content tree"
    other = {(s.SeriesInstanceUID, i.ReferencedSOPInstanceUID) for e in sr.PertinentOtherEvidenceSequence for s in e.ReferencedSeriesSequence for i in s.ReferencedSOPSequence}
    assert other == {(source_uid, ds.SOPInstanceUID) for ds in series}, "every instance of the source series"

    numbers = {str(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
    groups = _groups(sr)
    assert set(groups) == {f"{abbreviation}: {name}" for abbreviation, name in REPORTED.values()}
    for key, value in FOREGROUND_LABELS.items():
        group = groups["{}: {}".format(*REPORTED[key])]
        (segment,) = _images(group, "121191")  # Referenced Segment (TID 1411)
        reference = segment.ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert int(reference.ReferencedSegmentNumber) == numbers[BRATS_2023.segment(value).name]
        (series_item,) = [item for item in group.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121232"]
        assert series_item.UID == source_uid, "Source Series for Segmentation"
        assert group.ContentTemplateSequence[0].TemplateIdentifier == "1411"
    for region in ("TC", "WT"):
        group = groups["{}: {}".format(*REPORTED[region])]
        (source,) = _images(group, "260753009")  # Source (TID 1501)
        reference = source.ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert _segment_numbers(reference) == sorted(numbers[BRATS_2023.segment(v).name] for v in REGIONS[region])
        assert group.ContentTemplateSequence[0].TemplateIdentifier == "1501"


def test_report_passes_dciodvfy(case):
    assert dciodvfy_errors(case["path"]) == []


def test_dsrdump_prints_each_regions_volume(case):
    dump = subprocess.run(["dsrdump", str(case["path"])], capture_output=True, text=True, check=True).stdout
    printed = {}
    for block in dump.split('CONTAINER:(,,"Measurement Group")')[1:]:
        tracking = re.search(r'"Tracking Identifier"\)="([^"]+)"', block)
        volume = re.search(r'NUM:\(,,"Volume"\)="([-0-9.eE+]+)" \(ml,UCUM,"milliliter"\)', block)
        assert tracking and volume, block
        printed[tracking.group(1).split(":")[0]] = float(volume.group(1))
    expected = _expected_ml(case["label"])
    by_abbreviation = {abbreviation: key for key, (abbreviation, _) in REPORTED.items()}
    assert set(printed) == set(by_abbreviation)
    for abbreviation, value in printed.items():
        key = by_abbreviation[abbreviation]
        assert value == pytest.approx(expected[key], abs=1e-3), abbreviation


def test_uids_follow_the_seed(case):
    again = measurement_report(case["seg"], case["series"], case["volumes"], SEED, "test", BRATS_2023)
    other = measurement_report(case["seg"], case["series"], case["volumes"], SEED + "-2", "test", BRATS_2023)
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (case["sr"].SOPInstanceUID, case["sr"].SeriesInstanceUID)
    assert other.SOPInstanceUID != again.SOPInstanceUID and other.SeriesInstanceUID != again.SeriesInstanceUID


def test_inconsistent_or_incomplete_volumes_are_refused(case):
    volumes = dict(case["volumes"])
    with pytest.raises(ValueError, match="enhancing_tumour"):
        measurement_report(case["seg"], case["series"], {**volumes, "ET": volumes["enhancing_tumour"] + 1.0}, SEED, "test", BRATS_2023)
    del volumes["WT"]
    with pytest.raises(ValueError, match="WT"):
        measurement_report(case["seg"], case["series"], volumes, SEED, "test", BRATS_2023)


def test_report_of_a_label_with_an_empty_segment(tmp_path: Path, case):
    label = case["label"].copy()
    label[label == 1] = 0  # no necrosis
    seg = label_to_seg(label, case["series"], SEED + "-empty", "test", BRATS_2023)
    sr = measurement_report(seg, case["series"], region_volumes_ml(label, VOXEL_ML, BRATS_2023), SEED + "-empty", "test", BRATS_2023)
    path = tmp_path / "empty.dcm"
    sr.save_as(str(path), write_like_original=False)
    reported = volumes_from_report(pydicom.dcmread(str(path)), BRATS_2023)
    assert reported["necrotic_core"] == 0.0
    assert reported["TC"] == pytest.approx(_expected_ml(label)["TC"], abs=1e-3)
    assert dciodvfy_errors(path) == []

    # a viewer that drops the empty segment from the SEG: necrosis is still reported (0 mL), with nothing to point at
    seg_path = tmp_path / "seg.dcm"
    seg.save_as(str(seg_path), write_like_original=False)
    dropped = pydicom.dcmread(str(seg_path))
    dropped.SegmentSequence = [s for s in dropped.SegmentSequence if str(s.SegmentLabel) != "necrotic_core"]
    sr = measurement_report(dropped, case["series"], region_volumes_ml(label, VOXEL_ML, BRATS_2023), SEED + "-dropped", "test", BRATS_2023)
    sr.save_as(str(path), write_like_original=False)
    assert volumes_from_report(pydicom.dcmread(str(path)), BRATS_2023) == pytest.approx(reported, abs=1e-9)
    (source,) = _images(_groups(sr)["TC: tumour core"], "260753009")
    assert _segment_numbers(source.ReferencedSOPSequence[0]) == [3], "TC made of what the SEG has"
    assert dciodvfy_errors(path) == []
    with pytest.raises(ValueError, match="no segment for necrotic_core"):
        measurement_report(dropped, case["series"], case["volumes"], SEED, "test", BRATS_2023)
