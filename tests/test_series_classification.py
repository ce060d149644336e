"""Series as scanners write them get their channel from the acquisition, then the name; site rules override.

The vendor-style series (``tests/vendor_series.py``) are classified one by one, then stored in a real Orthanc
as whole studies (one per vendor, with localisers, diffusion, ADC, perfusion and reformats beside the four
sequences) and listed by the DICOMweb datastore: each study is one case with the right series, and its info
says why each series was taken.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from lib.config import CHANNELS
from lib.dicom.mr_series import StudyTags, uid_from, volume_to_mr_series
from lib.dicom.series_rules import SeriesRules, SeriesSummary
from lib.studies.dicomweb_datastore import DicomWebStudyDatastore
from tests.conftest import make_studies
from tests.vendor_series import VENDOR_SERIES, acquisition_of

VENDORS = sorted({v for v, *_ in VENDOR_SERIES})


def _summary(description: str, attributes: dict, time: str = "") -> SeriesSummary:
    return SeriesSummary(uid_from("cls", description), "MR", description, description, 100, time=time, acquisition=acquisition_of(attributes))


@pytest.mark.parametrize("vendor, description, attributes, expected", VENDOR_SERIES, ids=[f"{v}:{d}" for v, d, *_ in VENDOR_SERIES])
def test_each_vendor_series_gets_its_channel_from_its_acquisition(vendor, description, attributes, expected):
    channel, why = SeriesRules().channel_of(_summary(description, attributes))
    assert channel == expected, f"{vendor} {description!r}: {channel} ({why})"
    assert why, "the evidence is given"


def test_a_t1_acquired_after_a_contrast_series_is_post_contrast():
    pre = {"ScanningSequence": ["SE"], "RepetitionTime": 500, "EchoTime": 12, "ImageType": ["ORIGINAL", "PRIMARY"]}
    post_named = {**pre, "ContrastBolusAgent": "DOTAREM"}
    series = [_summary("T1 SE", pre, "101500"), _summary("T1 SE dyn", post_named, "102000"), _summary("T1 SE late", pre, "103000")]
    rules = SeriesRules()
    channels = [rules.channel_of(s, after)[0] for s, after in zip(series, (False, False, True))]
    assert channels == ["t1", "t1c", "t1c"]


def test_without_timing_in_the_header_the_name_decides_and_site_rules_override():
    bare = SeriesSummary("1.2.3", "MR", "AX T1 POST GAD", "", 100)
    assert SeriesRules().channel_of(bare)[0] == "t1c" and "name matches" in SeriesRules().channel_of(bare)[1]
    ge_t1_flair = _summary("Ax T1 FLAIR", dict(VENDOR_SERIES[1][2]))
    site = SeriesRules(site_rules=[("flair", r"ax t1 flair")])  # a site that (wrongly) wants it as FLAIR gets its way
    assert site.channel_of(ge_t1_flair)[0] == "flair" and "site's rule" in site.channel_of(ge_t1_flair)[1]


def test_two_candidates_that_nothing_tells_apart_are_refused_naming_both_and_their_evidence():
    t2 = {"ScanningSequence": ["SE"], "RepetitionTime": 5000, "EchoTime": 100, "ImageType": ["ORIGINAL", "PRIMARY"]}
    series = [_summary(n, a) for n, a in [("T2 ax", t2), ("T2 cor", t2)]]
    problem = SeriesRules().assign(series).problem
    assert "'T2 ax'" in problem and "'T2 cor'" in problem and "TE 100 ms" in problem


@pytest.fixture(scope="module")
def vendor_archive(orthanc, tmp_path_factory):
    """One study per vendor in Orthanc, every series of the vendor's protocol, in protocol order."""
    sample = make_studies(tmp_path_factory.mktemp("vendor_sample"), cases=1, labelled=0, seed=5)
    case = next(p for p in sample.iterdir() if p.is_dir())
    volume = nib.load(str(case / f"{case.name}-t1c.nii.gz"))
    data, affine = np.asarray(volume.dataobj), volume.affine
    archive = orthanc.archive()
    studies = {}
    for vendor in VENDORS:
        tags = StudyTags(f"VENDOR-{vendor}", f"{vendor}^Phantom", uid_from("vendor", vendor), "1", "20260301", "100000")
        frame = uid_from("vendor-frame", vendor)
        for number, (_, description, attributes, _expected) in enumerate(s for s in VENDOR_SERIES if s[0] == vendor):
            instances = volume_to_mr_series(data, affine, tags, description, number + 1, f"{vendor}/{description}", frame, attributes.get("ContrastBolusAgent"))
            for ds in instances:
                ds.SeriesTime = f"{10 + number:02d}0000"
                for keyword, value in attributes.items():
                    if keyword not in ("ContrastBolusAgent", "NumberOfTemporalPositions"):
                        setattr(ds, keyword, value)
                if "NumberOfTemporalPositions" in attributes:
                    ds.NumberOfTemporalPositions = attributes["NumberOfTemporalPositions"]
            archive.store(instances)
        studies[vendor] = tags.study_instance_uid
    return studies


@pytest.mark.parametrize("vendor", VENDORS)
def test_vendor_studies_are_cases_with_the_right_series_and_say_why(orthanc, vendor_archive, vendor, tmp_path):
    ds = DicomWebStudyDatastore(orthanc.archive(), tmp_path / "workspace", refresh_s=0)
    study = vendor_archive[vendor]
    problems = {p.study_id: p.reason for p in ds.problems()}
    assert study in ds.list_images(), problems.get(study)
    info = ds.get_image_info(study)
    expected = {channel: description for v, description, _, channel in VENDOR_SERIES if v == vendor and channel}
    if vendor == "GE":  # two post-contrast T1s (2D T1-FLAIR +C, 3D BRAVO C+): the 3D one is taken, the other named
        expected["t1c"] = "Sag 3D BRAVO C+"
    assert {c: info["series"][c]["description"] for c in CHANNELS} == expected
    for channel in CHANNELS:
        assert info["series"][channel]["why"], f"{channel}: the evidence is in the case's info"


def test_of_two_post_contrast_t1s_the_3d_one_is_taken_and_the_other_named():
    ge = [s for s in VENDOR_SERIES if s[0] == "GE"]
    assignment = SeriesRules().assign([_summary(d, a, f"{10 + i:02d}0000") for i, (_, d, a, _) in enumerate(ge)])
    assert assignment.problem is None and assignment.channels["t1c"].description == "Sag 3D BRAVO C+"
    assert ("Ax T1 FLAIR +C", "another t1c candidate; 'Sag 3D BRAVO C+' is a 3D acquisition (thin slices, any plane) and this is not") in assignment.ignored
    assert assignment.channels["t1"].description == "Ax T1 FLAIR" and "TI 860 ms" in assignment.evidence["t1"]


def test_acquisitions_are_asked_once_per_series_and_kept_across_restarts(orthanc, vendor_archive, tmp_path):
    first = DicomWebStudyDatastore(orthanc.archive(), tmp_path / "workspace", refresh_s=0)
    listed = first.list_images()

    class NoAcquisitionQueries(type(orthanc.archive())):  # type: ignore[misc]
        def acquisition(self, study_uid, series_uid):
            raise AssertionError(f"asked again for series {series_uid}")

    archive = orthanc.archive()
    archive.__class__ = NoAcquisitionQueries
    restarted = DicomWebStudyDatastore(archive, tmp_path / "workspace", refresh_s=0)
    assert restarted.list_images() == listed
    assert {s: restarted.get_image_info(s)["series"] for s in listed} == {s: first.get_image_info(s)["series"] for s in listed}
