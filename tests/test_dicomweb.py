"""Studies in a real Orthanc: import, the study-level DICOMweb datastore, SEG in and out, bad input.

Every test talks to Orthanc (Debian's package, DICOMweb plugin) over HTTP; DICOM objects are checked
with dciodvfy from dicom3tools.
"""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from lib.config import BRATS_2023, CHANNELS, REFERENCE_CHANNEL
from lib.dicom.mr_series import StudyTags, uid_from, volume_to_mr_series
from lib.dicom.seg import label_to_seg
from lib.dicom.series_volume import slice_stack
from lib.dicom.study_import import content_seed, instance_count, study_datasets
from lib.errors import InvalidInput
from lib.studies.dicomweb_datastore import DicomWebStudyDatastore
from lib.studies.folder_layout import find_studies
from scripts.import_studies import import_studies
from tests.conftest import dciodvfy_errors, make_studies

FILE_SUFFIX = {"t1c": "t1c", "t1": "t1n", "t2": "t2w", "flair": "t2f"}


def canonical(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    return nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine))


def study_files(folder: Path) -> dict:
    case = folder.name
    return {c: nib.load(str(folder / f"{case}-{s}.nii.gz")) for c, s in FILE_SUFFIX.items()}


def case_of(datastore: DicomWebStudyDatastore, patient_id: str) -> str:
    """The case of a test patient: the archive knows the patient, the server only the StudyInstanceUID."""
    uid = datastore._archive.client.search_for_studies(search_filters={"PatientID": patient_id})[0]["0020000D"]["Value"][0]
    assert uid in datastore.list_images(), f"{patient_id} ({uid}) not listed"
    return uid


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return make_studies(tmp_path_factory.mktemp("dicom_sample"), cases=2, labelled=1, seed=21)


@pytest.fixture(scope="module")
def imported(orthanc, sample):
    counts = import_studies(sample, orthanc.archive(), progress=False)
    assert counts == {"imported": 2, "already there": 0, "refused": 0}
    return sample


def datastore(orthanc, tmp_path) -> DicomWebStudyDatastore:
    return DicomWebStudyDatastore(orthanc.archive(), tmp_path / "workspace", refresh_s=0)


def test_reimport_does_not_duplicate(orthanc, imported):
    before = orthanc.get("/statistics").json()
    assert import_studies(imported, orthanc.archive(), progress=False) == {"imported": 0, "already there": 2, "refused": 0}
    after = orthanc.get("/statistics").json()
    assert (after["CountStudies"], after["CountSeries"], after["CountInstances"]) == (before["CountStudies"], before["CountSeries"], before["CountInstances"])


def test_imported_study_has_one_mr_series_per_modality_and_its_ground_truth_as_seg(orthanc, imported):
    ds = datastore(orthanc, Path(imported) / ".." / "ws_series")
    labelled = sorted(p.name for p in imported.iterdir() if (p / f"{p.name}-seg.nii.gz").exists())[0]
    case = case_of(ds, labelled)
    info = ds.get_image_info(case)
    assert set(info["series"]) == set(CHANNELS)
    assert len({s["uid"] for s in info["series"].values()}) == 4
    label = np.asarray(nib.load(ds.get_label_uri(case, "final")).dataobj)
    truth = np.asarray(nib.load(str(imported / labelled / f"{labelled}-seg.nii.gz")).dataobj)
    assert np.array_equal(label, truth)
    assert ds.get_label_info(case, "final")["source"] == "imported", "shipped ground truth: nobody's correction, not counted for retraining"


def _import_variant(orthanc, source: Path, target: Path, transform) -> str:
    """Copy a study with its affine/axes changed by ``transform`` and import it; return its patient id."""
    case = target.name
    target.mkdir(parents=True)
    for channel, image in study_files(source).items():
        data, affine = transform(np.asarray(image.dataobj), image.affine)
        nib.save(nib.Nifti1Image(data, affine), str(target / f"{case}-{FILE_SUFFIX[channel]}.nii.gz"))
    import_studies(target.parent, orthanc.archive(), progress=False)
    return case


def _sagittal(data, affine):
    return np.ascontiguousarray(data.transpose(1, 2, 0)), affine[:, [1, 2, 0, 3]]


def _oblique(data, affine):
    rotated = affine.copy()
    rotation = np.eye(4)
    rotation[:3, :3] = Rotation.from_euler("xyz", [17, -8, 25], degrees=True).as_matrix()
    return data, rotation @ rotated


@pytest.mark.parametrize("acquisition,transform", [("axial", lambda d, a: (d, a)), ("sagittal", _sagittal), ("oblique", _oblique)])
def test_round_trip_matches_voxels_and_affine(orthanc, imported, tmp_path, acquisition, transform):
    source = sorted(p for p in imported.iterdir() if p.is_dir() and not p.name.startswith("."))[0]
    patient = _import_variant(orthanc, source, tmp_path / acquisition / f"RT-{acquisition}", transform)
    ds = datastore(orthanc, tmp_path)
    stacked = nib.load(ds.get_image_uri(case_of(ds, patient)))
    originals = study_files(tmp_path / acquisition / patient)
    for index, channel in enumerate(CHANNELS):
        expected = canonical(originals[channel].dataobj, originals[channel].affine)
        got = canonical(np.asarray(stacked.dataobj)[..., index], stacked.affine)
        assert got.shape == expected.shape
        assert np.allclose(got.affine, expected.affine, atol=1e-4), f"{channel}: affine differs"
        assert np.array_equal(np.asarray(got.dataobj), np.asarray(expected.dataobj)), f"{channel}: voxels differ"


def _write_series(orthanc, study: StudyTags, channels: dict, frame: str, edit=None) -> None:
    """Store series straight from volumes (a study the NIfTI layouts cannot hold); ``edit`` may change instances."""
    numbers = {"t1c": (3, "AX T1 POST GAD"), "t1": (2, "AX T1"), "t2": (4, "t2_tse_tra"), "flair": (5, "FLAIR_3D")}
    for channel, (data, affine) in channels.items():
        number, description = numbers[channel]
        instances = volume_to_mr_series(data, affine, study, description, number, f"{study.study_instance_uid}/{channel}", frame)
        if edit:
            instances = edit(channel, instances)
        orthanc.archive().store(instances)


def _study(patient: str) -> StudyTags:
    return StudyTags(patient, f"{patient}^", uid_from("test", patient), "1", "20260101", "120000")


def test_modalities_at_different_resolutions_are_registered_onto_the_reference_grid(orthanc, imported, tmp_path):
    source = sorted(p for p in imported.iterdir() if p.is_dir() and not p.name.startswith("."))[0]
    files = study_files(source)
    channels = {c: (np.asarray(i.dataobj), i.affine) for c, i in files.items()}
    flair, affine = channels["flair"]
    thick = affine.copy()
    thick[:3, 2] *= 2  # FLAIR acquired with slices twice as thick: every other slice of the reference
    channels["flair"] = (np.ascontiguousarray(flair[:, :, ::2]), thick)
    _write_series(orthanc, _study("RT-resolution"), channels, uid_from("test", "resolution-frame"))
    ds = datastore(orthanc, tmp_path)
    stacked = nib.load(ds.get_image_uri(case_of(ds, "RT-resolution")))
    data = np.asarray(stacked.dataobj)
    assert np.allclose(stacked.affine, files[REFERENCE_CHANNEL].affine, atol=1e-4)
    assert data.shape[:3] == files[REFERENCE_CHANNEL].shape
    aligned = ds.get_image_info(case_of(ds, "RT-resolution"))["preparation"]["alignment"]["flair"]
    assert aligned["method"].startswith("rigid registration") and aligned["rotation_deg"] < 0.5 and aligned["translation_mm"] < 0.5, "nothing moved"
    coincident = data[:, :, ::2, CHANNELS.index("flair")]
    brain = flair[:, :, ::2] > 0
    assert np.corrcoef(coincident[brain], flair[:, :, ::2][brain])[0, 1] > 0.99, "FLAIR slices that coincide with reference slices keep their values"
    between = data[:, :, 1:-1:2, CHANNELS.index("flair")]
    interpolated = (flair[:, :, 0:-2:2].astype(np.float32) + flair[:, :, 2::2]) / 2
    assert np.corrcoef(between[interpolated > 0], interpolated[interpolated > 0])[0, 1] > 0.98, "and slices between are interpolated"


def test_every_object_written_passes_dciodvfy(imported, tmp_path):
    sources, _ = find_studies(imported)
    labelled = next(s for s in sources if s.ground_truth is not None)
    datasets = study_datasets(labelled, content_seed(labelled), "test")
    assert len(datasets) == instance_count(labelled)
    by_series = {}
    for ds in datasets:
        by_series.setdefault(str(ds.SeriesInstanceUID), ds)
    assert len(by_series) == 5  # four MR series and the ground-truth SEG
    assert len({str(ds.SOPInstanceUID) for ds in datasets}) == len(datasets), "SOP Instance UIDs are unique"
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in datasets)
    assert len({str(ds.StudyInstanceUID) for ds in datasets}) == 1
    for index, ds in enumerate(by_series.values()):
        path = tmp_path / f"{index}_{ds.Modality}.dcm"
        ds.save_as(str(path), write_like_original=False)
        assert dciodvfy_errors(path) == [], f"{ds.Modality} {ds.get('SeriesDescription')}"


# --- bad input -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken(orthanc, imported):
    """Studies that must be refused, each with its reason, next to the good ones."""
    source = sorted(p for p in imported.iterdir() if p.is_dir() and not p.name.startswith("."))[0]
    channels = {c: (np.asarray(i.dataobj), i.affine) for c, i in study_files(source).items()}

    def frame(name):
        return uid_from("test", name, "frame")

    _write_series(orthanc, _study("BAD-missing-flair"), {c: v for c, v in channels.items() if c != "flair"}, frame("missing"))
    _write_series(orthanc, _study("BAD-missing-slice"), channels, frame("gap"), lambda c, i: i[:30] + i[31:] if c == "t2" else i)

    def duplicate(channel, instances):
        if channel != "t1":
            return instances
        copy = deepcopy(instances[20])
        copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = uid_from("duplicate")
        return instances + [copy]

    _write_series(orthanc, _study("BAD-duplicate-slice"), channels, frame("dup"), duplicate)

    def not_mr(channel, instances):
        if channel == "t1":
            for ds in instances:
                ds.Modality = "CT"
        return instances

    _write_series(orthanc, _study("BAD-not-mr"), channels, frame("ct"), not_mr)

    def undecodable(channel, instances):
        if channel == "t2":
            instances[10].PixelData = instances[10].PixelData[:100]
        return instances

    _write_series(orthanc, _study("BAD-undecodable"), channels, frame("undecodable"), undecodable)
    return channels


@pytest.mark.parametrize(
    "patient,reason",
    [
        ("BAD-missing-flair", "no series for flair"),
        ("BAD-missing-slice", "not evenly spaced"),
        ("BAD-duplicate-slice", "duplicated slice"),
        ("BAD-not-mr", "no series for t1"),
    ],
)
def test_broken_study_is_listed_with_its_reason_not_as_a_case(orthanc, broken, tmp_path, patient, reason):
    ds = datastore(orthanc, tmp_path)
    problems = {p.study_id: p.reason for p in ds.problems()}
    uid = uid_from("test", patient)  # the StudyInstanceUID of _study(patient)
    assert uid in problems and reason in problems[uid], problems
    assert patient not in str([p.__dict__ for p in ds.problems()]), "problems name studies by UID, never by patient"
    assert orthanc.study_uid_of(patient) not in ds.list_images()


def test_non_mr_series_is_named_as_ignored(orthanc, broken, tmp_path):
    ds = datastore(orthanc, tmp_path)
    reason = next(p.reason for p in ds.problems() if p.study_id == uid_from("test", "BAD-not-mr"))
    assert "no series for t1" in reason and "'AX T1': modality CT, not MR" in reason, "the CT series is named, with why it is not taken"


def test_undecodable_instance_is_a_clear_error_and_then_listed(orthanc, broken, tmp_path):
    ds = datastore(orthanc, tmp_path)
    case = case_of(ds, "BAD-undecodable")  # metadata is fine: only the pixels are broken
    with pytest.raises(InvalidInput, match="cannot be decoded"):
        ds.get_image_uri(case)
    assert not [p.name for p in (tmp_path / "workspace" / "cases").iterdir() if p.suffix == ".nii"], "no partly written volume is left"
    assert any(p.study_id == case and "cannot be decoded" in p.reason for p in ds.problems())
    ds.refresh()
    assert case not in ds.list_images(), "not offered as a case again until its series change"
    assert any(p.study_id == case and "cannot be decoded" in p.reason for p in ds.problems())


def test_seg_off_the_study_grid_is_refused_and_the_stored_label_kept(orthanc, imported, tmp_path):
    ds = datastore(orthanc, tmp_path)
    labelled = sorted(p.name for p in imported.iterdir() if (p / f"{p.name}-seg.nii.gz").exists())[0]
    case = case_of(ds, labelled)
    before = np.asarray(nib.load(ds.get_label_uri(case, "final")).dataobj).copy()
    study = ds._source(case)
    reference = orthanc.archive().retrieve_series(case, study.channels[REFERENCE_CHANNEL].series_uid)
    stack = slice_stack(reference)
    shifted = [reference[i] for i in stack.order]
    for instance in shifted:
        instance.ImagePositionPatient = [float(v) + 1.3 for v in instance.ImagePositionPatient]
    label = np.zeros(stack.shape, np.uint8)
    label[40:50, 40:50, 30:35] = 2
    orthanc.archive().store([label_to_seg(label, shifted, "shifted-seg", "test", BRATS_2023, "Shifted by another tool")])
    ds.refresh()
    assert any(p.study_id == case and "not on a slice of the study's grid" in p.reason for p in ds.problems())
    assert np.array_equal(np.asarray(nib.load(ds.get_label_uri(case, "final")).dataobj), before)


def test_orthanc_down_keeps_the_listing_and_a_label_saved_meanwhile_reaches_it_later(orthanc, imported, tmp_path):
    ds = datastore(orthanc, tmp_path)
    unlabelled = sorted(p.name for p in imported.iterdir() if p.is_dir() and not (p / f"{p.name}-seg.nii.gz").exists())[0]
    case = case_of(ds, unlabelled)
    reference = nib.load(str(imported / unlabelled / f"{unlabelled}-t1c.nii.gz"))
    label = np.zeros(reference.shape, np.uint8)
    label[30:40, 30:40, 20:30] = 2
    upload = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, reference.affine), str(upload))
    cases = ds.list_images()
    orthanc.stop()
    try:
        assert ds.list_images() == cases
        assert any("does not answer" in p.reason for p in ds.problems())
        ds.save_label(case, str(upload), "final", {"user": "dr_offline"})
        assert ds.get_label_info(case, "final")["archive"] == "pending"
        assert np.array_equal(np.asarray(nib.load(ds.get_label_uri(case, "final")).dataobj), label), "kept on the server meanwhile"
    finally:
        orthanc.start()
    ds = datastore(orthanc, tmp_path)  # as after a restart (or a kill): the pending send is part of the committed label
    assert not any("does not answer" in p.reason for p in ds.problems())
    info = ds.get_label_info(case, "final")
    assert info["archive"] == "stored" and info["user"] == "dr_offline"
    assert orthanc.archive().instance_uids(case, info["seg_series_uid"]) == [info["seg_sop_instance_uid"]]


def test_changed_series_is_fetched_again_never_served_stale(orthanc, imported, tmp_path):
    source = sorted(p for p in imported.iterdir() if p.is_dir() and not p.name.startswith("."))[0]
    channels = {c: (np.asarray(i.dataobj), i.affine) for c, i in study_files(source).items()}
    study = _study("CACHE-changes")
    frame = uid_from("test", "cache-frame")
    _write_series(orthanc, study, {c: v if c != "t2" else (v[0][:, :, :-1], v[1]) for c, v in channels.items()}, frame)
    ds = datastore(orthanc, tmp_path)
    case = case_of(ds, "CACHE-changes")
    first = np.asarray(nib.load(ds.get_image_uri(case)).dataobj)[..., CHANNELS.index("t2")]
    assert not first[:, :, -1].any(), "the last T2 slice is missing, so it is resampled from nothing there"
    # the scanner sends the missing last slice: same series, one more instance
    data, affine = channels["t2"]
    full = volume_to_mr_series(data, affine, study, "t2_tse_tra", 4, f"{study.study_instance_uid}/t2", frame)
    orthanc.archive().store([full[-1]])
    ds.refresh()  # what the server's background refresh does every dicomweb_refresh_s
    second = np.asarray(nib.load(ds.get_image_uri(case)).dataobj)[..., CHANNELS.index("t2")]
    assert np.array_equal(second, data), "the cached stack was rebuilt with the new slice (the stale one was registered and interpolated)"
    assert ds.get_image_info(case)["preparation"]["alignment"]["t2"]["method"].startswith("none"), "all on the reference grid now"


def _opens(ds, case: str) -> bool:
    try:
        ds.get_image_uri(case)
    except InvalidInput:
        return False
    return True


def test_no_instance_header_is_kept_and_caches_of_earlier_versions_are_removed(orthanc, imported, tmp_path):
    patient_tags = ("00100010", "00100020", "00100030")  # PatientName, PatientID, PatientBirthDate
    ds = datastore(orthanc, tmp_path)
    case = next(c for c in ds.list_images() if _opens(ds, c))  # a study another test broke on purpose is not this test's
    workspace = tmp_path / "workspace"
    kept = [p for p in workspace.rglob("*") if p.is_file() and p.suffix in (".json", ".sqlite")]
    assert kept and not any(tag.encode() in p.read_bytes() for p in kept for tag in patient_tags)
    # a cache as earlier versions wrote it: whole instance headers, one file per series
    series = ds._source(case).channels["t1c"]
    full = orthanc.archive().series_metadata(case, series.series_uid)
    assert any("00100020" in item for item in full)
    old = workspace / "dicom_metadata" / f"{series.series_uid}_{series.instances}.json"
    old.parent.mkdir(exist_ok=True)
    old.write_text(json.dumps(full))
    datastore(orthanc, tmp_path)  # the server starting on that workspace
    assert not old.exists()


@pytest.mark.parametrize("decoding", ["processes", "threads"])
def test_a_study_whose_series_differ_in_pixel_type_opens_to_its_voxels(orthanc, imported, tmp_path, monkeypatch, decoding):
    """Each series is written into the study's file by whoever decoded it; one stored unsigned among signed ones
    makes the server stack the four itself (as float32), with the same voxels."""
    from lib.dicom import series_fetch

    if decoding == "threads":
        monkeypatch.setattr(series_fetch, "_process_pool", lambda: None)
    source = sorted(p for p in imported.iterdir() if p.is_dir() and not p.name.startswith("."))[0]
    channels = {c: (np.asarray(i.dataobj), i.affine) for c, i in study_files(source).items()}
    assert all(v.min() >= 0 for v, _ in channels.values())

    def unsigned_t2(channel, instances):
        if channel == "t2":
            for ds in instances:
                ds.PixelRepresentation = 0
        return instances

    patient = f"MIXED-{decoding}"
    _write_series(orthanc, _study(patient), channels, uid_from("test", patient, "frame"), unsigned_t2)
    ds = datastore(orthanc, tmp_path)
    stacked = nib.load(ds.get_image_uri(case_of(ds, patient)))
    assert stacked.get_data_dtype() == np.float32
    for index, channel in enumerate(CHANNELS):
        assert np.array_equal(np.asarray(stacked.dataobj)[..., index], channels[channel][0]), f"{channel}: voxels differ"
