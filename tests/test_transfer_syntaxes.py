"""Studies stored compressed, as archives keep MR: each transfer syntax opens to the same voxels.

One sample study is imported uncompressed, then stored again (new UIDs) in each syntax: JPEG Lossless SV1
(dcmtk's dcmcjpeg), JPEG-LS lossless (dcmcjpls), RLE (dcmcrle), deflated explicit little endian (dcmconv)
and JPEG 2000 lossless (GDCM's gdcmconv). The server asks Orthanc to send them uncompressed (WADO-RS
transfer-syntax), which Orthanc 1.10 does with DCMTK for all but JPEG 2000; that one, and any series from an
archive that cannot transcode, is decoded here (pydicom with pylibjpeg). Debian's orthanc-gdcm 1.5 plugin
(for JPEG 2000) is not enabled: with it loaded, Orthanc 1.10.1 crashed on the first transcoded series
retrieval of these tests, and on ``/modify`` with ``Transcode`` to JPEG 2000.
"""

from __future__ import annotations

import io
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests
from requests_toolbelt.multipart.decoder import MultipartDecoder

from lib.dicom.archive import ACCEPT_AS_STORED
from lib.dicom.mr_series import uid_from
from lib.dicom.series_volume import series_volume
from lib.studies.dicomweb_datastore import DicomWebStudyDatastore
from scripts.import_studies import import_studies
from tests.conftest import make_studies

pytestmark = pytest.mark.server

SYNTAXES = {  # name: (transfer syntax UID, the tool that writes it)
    "jpeg-lossless-sv1": ("1.2.840.10008.1.2.4.70", ["dcmcjpeg", "+e1"]),
    "jpeg-ls-lossless": ("1.2.840.10008.1.2.4.80", ["dcmcjpls", "+el"]),
    "rle": ("1.2.840.10008.1.2.5", ["dcmcrle"]),
    "deflated": ("1.2.840.10008.1.2.1.99", ["dcmconv", "+td"]),
    "jpeg2000-lossless": ("1.2.840.10008.1.2.4.90", ["gdcmconv", "--j2k"]),
}


def _new_uids(ds: pydicom.Dataset, syntax: str) -> None:
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, uid_from(f"syntax-{syntax}", str(getattr(ds, keyword))))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = f"SYNTAX-{syntax}"


@pytest.fixture(scope="module")
def compressed(orthanc, tmp_path_factory):
    """{syntax: study UID} of the same study stored in each syntax, and the uncompressed study's UID."""
    folder = tmp_path_factory.mktemp("syntaxes")
    studies = make_studies(folder / "studies", cases=1, labelled=0, seed=13)
    import_studies(studies, orthanc.archive(), progress=False)
    auth = (orthanc.user, orthanc.password)
    original = requests.get(f"{orthanc.url}/studies", auth=auth, timeout=30).json()[0]
    study_uid = requests.get(f"{orthanc.url}/studies/{original}", auth=auth, timeout=30).json()["MainDicomTags"]["StudyInstanceUID"]
    instances = requests.get(f"{orthanc.url}/studies/{original}/instances", auth=auth, timeout=30).json()
    files = [requests.get(f"{orthanc.url}/instances/{instance['ID']}/file", auth=auth, timeout=30).content for instance in instances]

    def encode(name: str, number: int) -> pydicom.Dataset:
        syntax, tool = SYNTAXES[name]
        ds = pydicom.dcmread(io.BytesIO(files[number]))
        _new_uids(ds, name)
        plain, packed = folder / f"{name}-{number}-plain.dcm", folder / f"{name}-{number}-packed.dcm"
        ds.save_as(str(plain), write_like_original=False)
        subprocess.run([*tool, str(plain), str(packed)], check=True, capture_output=True)
        ds = pydicom.dcmread(str(packed))
        assert ds.file_meta.TransferSyntaxUID == syntax
        return ds

    made = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:  # one encoder process per instance: run them side by side
        for name in SYNTAXES:
            stored = list(pool.map(encode, [name] * len(files), range(len(files))))
            orthanc.archive().store(stored)
            made[name] = stored[0].StudyInstanceUID
    return study_uid, made


@pytest.mark.parametrize("name", list(SYNTAXES))
def test_a_study_stored_in_each_syntax_opens_to_the_same_voxels(orthanc, compressed, name, tmp_path):
    original, made = compressed
    ds = DicomWebStudyDatastore(orthanc.archive(), tmp_path / "workspace", refresh_s=0)
    assert made[name] in ds.list_images(), [p.reason for p in ds.problems()]
    expected = np.asarray(nib.load(ds.get_image_uri(original)).dataobj)
    got = np.asarray(nib.load(ds.get_image_uri(made[name])).dataobj)
    assert np.array_equal(got, expected), f"{name}: lossless, so the same voxels"


@pytest.mark.parametrize("name", list(SYNTAXES))
def test_a_series_sent_as_stored_is_decoded_here(orthanc, compressed, name):
    """The fallback for archives that cannot transcode: pydicom with pylibjpeg decodes each syntax."""
    original, made = compressed
    archive = orthanc.archive()
    series = next(s for s in archive.series(made[name]) if s.modality == "MR")
    reference = next(s for s in archive.series(original) if s.description == series.description)
    answer = archive.client._session.get(f"{archive.url}/studies/{made[name]}/series/{series.series_uid}", headers={"Accept": ACCEPT_AS_STORED})
    datasets = [pydicom.dcmread(io.BytesIO(p.content)) for p in MultipartDecoder(answer.content, answer.headers["Content-Type"]).parts]
    assert {str(d.file_meta.TransferSyntaxUID) for d in datasets} == {SYNTAXES[name][0]}, "sent compressed, as stored"
    got, _ = series_volume(datasets, name)
    expected, _ = series_volume(archive.retrieve_series(original, reference.series_uid), "uncompressed")
    assert np.array_equal(got, expected)


def test_the_archive_is_asked_for_uncompressed_series(orthanc, compressed):
    _, made = compressed
    archive = orthanc.archive()
    series = next(s for s in archive.series(made["jpeg-ls-lossless"]) if s.modality == "MR")
    datasets = archive.retrieve_series(made["jpeg-ls-lossless"], series.series_uid)
    assert {str(d.file_meta.TransferSyntaxUID) for d in datasets} == {"1.2.840.10008.1.2.1"}, "Orthanc transcoded"


def test_how_each_syntax_reaches_the_server(orthanc, compressed):
    """Orthanc 1.10 (DCMTK) transcodes JPEG Lossless, JPEG-LS, RLE and deflated; JPEG 2000 it sends as stored
    (its GDCM plugin would transcode it, but crashed Orthanc on the first series: not enabled), decoded here."""
    _, made = compressed
    archive = orthanc.archive()
    received = {}
    for name, study in made.items():
        series = next(s for s in archive.series(study) if s.modality == "MR")
        received[name] = {str(d.file_meta.TransferSyntaxUID) for d in archive.retrieve_series(study, series.series_uid)}
    transcoded = {name for name, syntaxes in received.items() if syntaxes == {"1.2.840.10008.1.2.1"}}
    assert transcoded >= {"jpeg-lossless-sv1", "jpeg-ls-lossless", "rle", "deflated"}
