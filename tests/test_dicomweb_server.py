"""The running MONAI Label server on studies in a real Orthanc, driven with MONAI Label's own client.

What an annotator's viewer does: list the studies, pre-segment one from the series on screen (OHIF
sends a SeriesInstanceUID), save the corrected label, and find it in the archive as a DICOM SEG that
decodes to exactly what was saved, on the study's grid. And what happens when the archive stops.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from lib.config import BRATS_2023, CHANNELS, PROFILES, REFERENCE_CHANNEL
from lib.dicom.measurement_report import volumes_from_report
from lib.dicom.seg import referenced_series, seg_to_label
from lib.model.network import build_network
from lib.model.transforms import region_volumes_ml, voxel_volume_ml
from scripts.import_studies import import_studies
from tests.conftest import dciodvfy_errors, make_studies

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    return make_studies(tmp_path_factory.mktemp("dicomweb_server_studies"), cases=3, labelled=1, seed=31)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Untrained weights: enough to run the whole path; what the model predicts is not under test here."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "untrained.pt"
    torch.save(build_network(PROFILES["cpu"]).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def server(orthanc, studies, weights, server_factory, tmp_path_factory):
    import_studies(studies, orthanc.archive(), progress=False)
    workspace = tmp_path_factory.mktemp("dicomweb_workspace")
    # prepare_on_arrival off: the outage test needs a study the server has never fetched (test_preparation.py covers
    # the server opening studies by itself)
    return server_factory(orthanc.dicomweb, env=orthanc.credentials_env, workspace=workspace, pretrained_weights=weights, dicomweb_refresh_s=0, prepare_on_arrival="false")


@pytest.fixture(scope="module")
def client(server, tmp_path_factory) -> MONAILabelClient:
    return MONAILabelClient(server.url, tmpdir=str(tmp_path_factory.mktemp("client")), client_id="pytest")


def _listing(client) -> dict:
    return client.datastore()["objects"]


def _case(client, patient: str, orthanc) -> tuple:
    """A test patient's case and its info: the server lists studies by StudyInstanceUID, never by patient."""
    case = orthanc.study_uid_of(patient)
    listing = _listing(client)
    assert case in listing, f"{patient} ({case}) not listed"
    return case, listing[case]["image"]["info"]


def test_studies_in_the_archive_are_listed_as_cases(client, studies, orthanc):
    patients = sorted(p.name for p in studies.iterdir() if p.is_dir() and not p.name.startswith("."))
    listing = _listing(client)
    assert sorted(listing) == sorted(orthanc.study_uid_of(p) for p in patients)
    assert not any("patient" in key.lower() for e in listing.values() for key in e["image"]["info"]), "patient attributes in the listing"
    labelled = [e for e in listing.values() if "final" in e["labels"]]
    assert len(labelled) == 1 and labelled[0]["labels"]["final"]["info"]["source"] == "imported"


def test_next_case_comes_from_the_archive_and_is_unlabelled(client):
    listing = _listing(client)
    unlabelled = {c for c, e in listing.items() if "final" not in e["labels"]}
    for _ in range(2):
        answer = MONAILabelClient(client._server_url, client_id=f"annotator-{_}").next_sample("uncertainty", {})
        assert answer["id"] in unlabelled
        unlabelled.discard(answer["id"])  # handed out: the next annotator gets another case


def test_infer_from_the_series_on_screen_and_save_the_correction_as_seg(client, server, orthanc, studies, tmp_path):
    patient = sorted(p.name for p in studies.iterdir() if p.is_dir() and not (p / f"{p.name}-seg.nii.gz").exists())[0]
    case, info = _case(client, patient, orthanc)
    flair_series = info["series"]["flair"]["uid"]  # what OHIF sends: the series on screen
    label_file, params = client.infer("segmentation", flair_series, {})
    params = json.loads(params) if isinstance(params, str) else params
    reference = nib.load(str(studies / patient / f"{patient}-t1c.nii.gz"))
    result = nib.load(label_file)
    assert result.shape == reference.shape and np.allclose(result.affine, reference.affine, atol=1e-4)

    correction = np.asarray(result.dataobj).astype(np.uint8)
    correction[50:60, 50:60, 35:40] = 3  # the annotator paints enhancing tumour
    correction[62:66, 50:60, 35:40] = 1
    upload = tmp_path / "correction.nii.gz"
    nib.save(nib.Nifti1Image(correction, result.affine), str(upload))
    answer = client.save_label(flair_series, str(upload), tag="final", params={"user": "dr_dicom"})
    assert answer["label"] == case

    label_info = _listing(client)[case]["labels"]["final"]["info"]
    assert label_info["archive"] == "stored" and label_info["user"] == "dr_dicom"
    seg_series = label_info["seg_series_uid"]
    archive = orthanc.archive()
    seg = archive.retrieve_instance(case, seg_series, label_info["seg_sop_instance_uid"])
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == case
    assert referenced_series(seg) == info["series"][REFERENCE_CHANNEL]["uid"]
    assert np.array_equal(seg_to_label(seg, reference.affine, reference.shape, BRATS_2023), correction)
    seg.save_as(str(tmp_path / "saved_seg.dcm"), write_like_original=False)
    assert dciodvfy_errors(tmp_path / "saved_seg.dcm") == []

    # beside the SEG, the label's volumes as a measurement report that refers to it
    report = archive.retrieve_instance(case, label_info["sr_series_uid"], label_info["sr_sop_instance_uid"])
    assert report.Modality == "SR" and report.StudyInstanceUID == case
    expected = region_volumes_ml(correction, voxel_volume_ml(reference.affine), BRATS_2023)
    assert volumes_from_report(report, BRATS_2023) == pytest.approx(expected, abs=1e-3) and expected["enhancing_tumour"] > 0
    evidence = {
        str(item.ReferencedSOPInstanceUID) for series in report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence for item in series.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence, "the report names the SEG it measures"
    report.save_as(str(tmp_path / "saved_sr.dcm"), write_like_original=False)
    assert dciodvfy_errors(tmp_path / "saved_sr.dcm") == []

    # a corrected version writes a new report; the first is kept in the archive and superseded in the records
    correction[50:60, 50:60, 35:40] = 2
    nib.save(nib.Nifti1Image(correction, result.affine), str(upload))
    client.save_label(flair_series, str(upload), tag="final", params={"user": "dr_dicom"})
    second = _listing(client)[case]["labels"]["final"]["info"]
    assert second["sr_sop_instance_uid"] != label_info["sr_sop_instance_uid"]
    newer = archive.retrieve_instance(case, second["sr_series_uid"], second["sr_sop_instance_uid"])
    assert volumes_from_report(newer, BRATS_2023)["enhancing_tumour"] < volumes_from_report(report, BRATS_2023)["enhancing_tumour"]
    records = json.loads((Path(server.conf["workspace"]) / "seg_registry.json").read_text())
    assert records[label_info["sr_sop_instance_uid"]]["status"] == "superseded" and records[label_info["sr_sop_instance_uid"]]["superseded_by"] == newer.SOPInstanceUID
    assert records[newer.SOPInstanceUID]["status"] == "current"
    assert archive.retrieve_instance(case, label_info["sr_series_uid"], label_info["sr_sop_instance_uid"]).SOPInstanceUID == report.SOPInstanceUID


def test_a_seg_written_by_another_client_becomes_the_label(client, orthanc, studies, tmp_path):
    patient = sorted(p.name for p in studies.iterdir() if p.is_dir() and not (p / f"{p.name}-seg.nii.gz").exists())[-1]
    case, info = _case(client, patient, orthanc)
    archive = orthanc.archive()
    from lib.dicom.seg import label_to_seg
    from lib.dicom.series_volume import slice_stack

    reference = archive.retrieve_series(case, info["series"][REFERENCE_CHANNEL]["uid"])
    stack = slice_stack(reference)
    label = np.zeros(stack.shape, np.uint8)
    label[40:52, 44:50, 30:36] = 2
    label[44:48, 45:49, 32:34] = 3
    seg = label_to_seg(label, [reference[i] for i in stack.order], "other-viewer", "9.9", BRATS_2023, "Segmentation from a viewer")
    seg.Manufacturer = "Another viewer"
    archive.store([seg])
    entry = _listing(client)[case]["labels"]["final"]
    assert entry["info"]["seg_manufacturer"] == "Another viewer"
    downloaded = requests.get(f"{client._server_url}/datastore/label", params={"label": case, "tag": "final"}, timeout=30)
    (tmp_path / "label.nii.gz").write_bytes(downloaded.content)
    saved = nib.load(str(tmp_path / "label.nii.gz"))
    assert np.array_equal(nib.as_closest_canonical(saved).get_fdata(), nib.as_closest_canonical(nib.Nifti1Image(label, stack.affine)).get_fdata())


def test_a_seg_stored_through_the_viewer_proxy_is_the_label_or_is_refused_with_the_reason(client, server, orthanc, studies):
    """What OHIF's Submit label does: STOW a SEG through the server's /proxy/dicom/wado (dicomweb-client here)."""
    from dicomweb_client.api import DICOMwebClient
    from requests.exceptions import HTTPError

    from lib.dicom.seg import label_to_seg
    from lib.dicom.series_volume import slice_stack

    patient = sorted(p.name for p in studies.iterdir() if p.is_dir() and (p / f"{p.name}-seg.nii.gz").exists())[0]
    case, info = _case(client, patient, orthanc)
    archive = orthanc.archive()
    reference = archive.retrieve_series(case, info["series"][REFERENCE_CHANNEL]["uid"])
    stack = slice_stack(reference)
    viewer = DICOMwebClient(url=f"{server.url}/proxy/dicom/wado")
    segs_in_archive = lambda: sum(len(archive.instance_uids(case, s.series_uid)) for s in archive.series(case) if s.modality == "SEG")  # noqa: E731
    before_label, before_segs = _listing(client)[case]["labels"]["final"]["info"], segs_in_archive()

    label = np.zeros(stack.shape, np.uint8)
    label[40:50, 40:50, 30:34] = 2
    wrong = label_to_seg(label, [reference[i] for i in stack.order], "viewer-wrong", "1", BRATS_2023, "From a viewer")
    wrong.SegmentSequence[0].SegmentLabel = "Tumour remnant"
    wrong.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue = "999999"
    with pytest.raises(HTTPError) as refused:
        viewer.store_instances([wrong])
    assert refused.value.response.status_code == 422 and "Tumour remnant" in refused.value.response.json()["detail"]
    assert _listing(client)[case]["labels"]["final"]["info"] == before_label and segs_in_archive() == before_segs, "nothing stored"

    good = label_to_seg(label, [reference[i] for i in stack.order], "viewer-good", "1", BRATS_2023, "From a viewer")
    ohif = DICOMwebClient(url=f"{server.url}/proxy/dicom/wado", headers={"Referer": f"{server.url}/ohif/monai-label"})
    with pytest.raises(HTTPError) as from_ohif:  # OHIF's own SEG export puts frames in the wrong slice order
        ohif.store_instances([good])
    assert from_ohif.value.response.status_code == 422 and "Submit label" in from_ohif.value.response.json()["detail"]
    assert _listing(client)[case]["labels"]["final"]["info"] == before_label and segs_in_archive() == before_segs

    answer = viewer.store_instances([good])  # a STOW-RS answer any DICOMweb client reads
    assert answer.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == good.SOPInstanceUID
    after = _listing(client)[case]["labels"]["final"]["info"]
    assert after["submitted_seg_sop_instance_uid"] == good.SOPInstanceUID and after["archive"] == "stored"
    assert after["voxels"] == {"necrotic_core": 0, "edema": int(label.astype(bool).sum()), "enhancing_tumour": 0}
    assert segs_in_archive() == before_segs + 1, "the server's own SEG of the label, once"

    # annotators store labels through the server, nothing else (here an MR instance)
    with pytest.raises(HTTPError) as not_a_seg:
        viewer.store_instances([reference[stack.order[0]]])
    assert not_a_seg.value.response.status_code == 422 and "only DICOM SEG" in not_a_seg.value.response.json()["detail"]


def test_the_proxy_forwards_qido_queries_as_asked(server, orthanc, studies):
    patients = sorted(p.name for p in studies.iterdir() if p.is_dir() and not p.name.startswith("."))
    proxy = f"{server.url}/proxy/dicom/qido/studies"
    everything = requests.get(proxy, timeout=30).json()
    assert len(everything) == len(patients)
    one = requests.get(proxy, params={"PatientID": patients[1]}, timeout=30).json()
    assert [s["0020000D"]["Value"][0] for s in one] == [orthanc.study_uid_of(patients[1])], "matching keys reach the archive"
    assert len(requests.get(proxy, params={"limit": 1}, timeout=30).json()) == 1
    assert len(requests.get(proxy, params={"limit": 2, "offset": len(patients) - 1}, timeout=30).json()) == 1
    for query in (
        {"PatientName": f"{patients[1]}^", "fuzzymatching": "true"},
        {"StudyDate": "19000101-"},
        {"ModalitiesInStudy": "MR", "includefield": "00081030,StudyDescription"},
    ):
        uids = lambda answer: sorted(s["0020000D"]["Value"][0] for s in answer.json())  # noqa: E731
        direct = requests.get(f"{orthanc.dicomweb}/studies", params=query, auth=(orthanc.user, orthanc.password), timeout=30)
        assert uids(requests.get(proxy, params=query, timeout=30)) == uids(direct), f"{query}: the proxy answers what the archive answers"
    wildcard = requests.get(f"{proxy}?PatientID={patients[1][:12]}*", timeout=30).json()  # as OHIF's search sends it: '*' unencoded
    assert len(wildcard) == len([p for p in patients if p.startswith(patients[1][:12])]) > 0
    series = requests.get(f"{server.url}/proxy/dicom/qido/studies/{one[0]['0020000D']['Value'][0]}/series", params={"Modality": "MR"}, timeout=30).json()
    assert len(series) == 4 and {s["00080060"]["Value"][0] for s in series} == {"MR"}


@pytest.mark.parametrize(
    "method, path, params",
    [
        ("GET", "/proxy/dicom/qido/patients", {}),  # Orthanc's REST resources under the DICOMweb root
        ("GET", "/proxy/dicom/qido/studies", {"expand": ""}),  # not a QIDO key
        ("GET", "/proxy/dicom/qido/studies", {"limit": "1; DROP"}),
        ("GET", "/proxy/dicom/qido/studies", {"includefield": "../../patients"}),
        ("GET", "/proxy/dicom/wado/studies/1.2.3/series/4.5.6/instances/7.8.9/file", {}),
        ("GET", "/proxy/dicom/wado/studies/1.2.3/archive", {}),
        ("GET", "/proxy/dicom/wado/studies/1.2.3", {"url": "http://evil.example/"}),
        ("GET", "/proxy/dicom/qido/http:/evil.example/studies", {}),
        ("GET", "/proxy/dicom/tools/find", {}),
        ("POST", "/proxy/dicom/tools/reset", {}),
        ("POST", "/proxy/dicom/tools/shutdown", {}),
        ("GET", "/proxy/dicom/patients", {"expand": ""}),
        ("GET", "/proxy/dicom/stow/studies", {}),
        ("POST", "/proxy/dicom/qido/studies", {}),
    ],
)
def test_the_proxy_refuses_everything_but_dicomweb(server, orthanc, method, path, params):
    answer = requests.request(method, server.url + path, params=params, timeout=30)
    assert answer.status_code in (400, 403), (answer.status_code, answer.text[:200])
    assert "PatientName" not in answer.text and "00100010" not in answer.text
    assert orthanc.get("/system").status_code == 200, "the archive is still up"


def test_the_proxy_refuses_encoded_paths_before_they_leave_the_server(server, orthanc):
    import http.client

    for target in (
        "/proxy/dicom/..%2Fpatients%3Fexpand",
        "/proxy/dicom/qido/..%2F..%2Ftools%2Ffind",
        "/proxy/dicom/wado/studies%2F..%2F..%2Fpatients",
        "/proxy/dicom/qido/studies%3Fexpand",
    ):
        connection = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
        connection.request("GET", target)
        answer = connection.getresponse()
        body = answer.read().decode()
        assert answer.status == 400 and "encoded" in body, (target, answer.status, body[:200])


def test_archive_stopped_gives_clear_errors_and_the_server_recovers(client, server, orthanc, studies):
    patients = sorted(p.name for p in studies.iterdir() if p.is_dir() and not p.name.startswith("."))
    listing = _listing(client)
    uncached = orthanc.study_uid_of(patients[0])  # the labelled one: not scored
    orthanc.stop()
    try:
        assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200
        during = client.datastore()
        assert during["archive"]["reachable"] is False and "does not answer" in during["archive"]["error"]
        assert set(during["objects"]) == set(listing), "the last listing is still served"
        with pytest.raises(MONAILabelClientException) as error:
            client.infer("segmentation", uncached, {})  # never fetched, so it must come from the archive
        assert "503" in error.value.msg and "does not answer" in error.value.msg
    finally:
        orthanc.start()
    assert client.datastore()["archive"]["reachable"] is True
    label_file, _ = client.infer("segmentation", uncached, {})
    assert nib.load(label_file).shape[:3] == nib.load(str(studies / patients[0] / f"{patients[0]}-t1c.nii.gz")).shape


FOLLOW_UP_PATIENT = "FOLLOWUP-4471"


def test_a_patients_studies_in_the_archive_form_one_timeline_ordered_by_study_date(client, server, orthanc, tmp_path):
    """Two studies of one PatientID, stored newest first: the timeline orders them by StudyDate and StudyTime, the
    earlier one's volumes from its SEG (the final label), the later one's from the pre-label the server made."""
    from lib.dicom.study_import import content_seed, study_datasets
    from lib.studies.folder_layout import find_studies

    sources, _ = find_studies(make_studies(tmp_path / "follow_up", cases=2, labelled=1, seed=47))
    baseline, follow_up = sorted(sources, key=lambda source: source.study_id)  # the first is the labelled one
    archive = orthanc.archive()
    uids = {}
    for source, (date, time_of_day) in ((follow_up, ("20240611", "143000")), (baseline, ("20240105", "081500"))):
        datasets = study_datasets(source, content_seed(source), "test")
        for ds in datasets:
            ds.PatientID, ds.PatientName, ds.StudyDate, ds.StudyTime = FOLLOW_UP_PATIENT, "Follow^Up", date, time_of_day
        archive.store(datasets)
        uids[source.study_id] = str(datasets[0].StudyInstanceUID)
    deadline = time.monotonic() + 120
    while not {*uids.values()} <= set(_listing(client)) and time.monotonic() < deadline:
        time.sleep(1)
    later = uids[follow_up.study_id]
    client.infer("segmentation", later, {})  # its pre-label
    answer = requests.get(f"{server.url}/brats/timeline/{later}", timeout=60)
    assert answer.status_code == 200, answer.text
    rows = answer.json()["studies"]
    assert [row["case"] for row in rows] == [uids[baseline.study_id], later]
    assert [row["acquired"] for row in rows] == ["2024-01-05T08:15:00", "2024-06-11T14:30:00"]
    assert [row["volumes_from"] for row in rows] == ["final label", "pre-label"]
    truth = nib.load(str(baseline.ground_truth))
    expected = region_volumes_ml(np.asarray(truth.dataobj, dtype=np.uint8), voxel_volume_ml(truth.affine), BRATS_2023)
    assert rows[0]["volumes_ml"] == pytest.approx(expected, abs=1e-2)
    assert set(rows[1]["change"]["WT"]) == {"previous", "baseline", "nadir"}
    assert FOLLOW_UP_PATIENT not in answer.text and "Follow^Up" not in answer.text
    for case in set(_listing(client)) - set(uids.values()):  # every other study is its own patient's only one
        assert [row["case"] for row in requests.get(f"{server.url}/brats/timeline/{case}", timeout=60).json()["studies"]] == [case]


def test_no_patient_identifier_in_anything_the_server_wrote(server, studies):
    """After the whole module's run (listing, inference, saves, STOW, archive outage): the test patients' IDs
    and names appear in none of the server's logs and none of the files in its workspace."""
    patients = sorted(p.name for p in studies.iterdir() if p.is_dir() and not p.name.startswith(".")) + [FOLLOW_UP_PATIENT]
    written = [server.log_path, *(p for p in Path(server.conf["workspace"]).rglob("*") if p.is_file())]
    found = []
    for path in written:
        content = path.read_bytes()
        found += [(str(path), patient) for patient in patients if patient.encode() in content]
    print(f"{len(written)} files the server wrote checked for {len(patients)} patients' IDs and names")
    assert not found, found


def test_the_proxy_answers_in_the_encoding_the_client_accepts(server):
    import http.client

    port = int(server.url.rsplit(":", 1)[1])
    for accept, expected in ((None, None), ("gzip", "gzip")):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/proxy/dicom/qido/studies", headers={"Accept-Encoding": accept} if accept else {})
        answer = connection.getresponse()
        body = answer.read()
        assert answer.status == 200 and answer.getheader("Content-Encoding") == expected
        if expected is None:
            assert isinstance(json.loads(body), list), "plain JSON for a client that accepts no compression"


def test_a_study_opened_in_the_viewer_is_prepared_for_its_auto_segmentation(client, server, orthanc, studies):
    """OHIF opening a study from the study list asks the proxy for its series' metadata: the server then prepares
    that study's auto-segmentation, once, and ignores a UID it does not list."""
    patient = next(p.name for p in sorted(studies.iterdir()) if (p / f"{p.name}-seg.nii.gz").exists())  # never handed out (opened last by the outage test)
    case, info = _case(client, patient, orthanc)
    for channel in CHANNELS:
        answer = requests.get(f"{server.url}/proxy/dicom/wado/studies/{case}/series/{info['series'][channel]['uid']}/metadata", timeout=60)
        assert answer.status_code == 200 and answer.json(), "the viewer's answer is the archive's, as before"
    unknown = "1.2.826.0.1.3680043.8.498.1"
    requests.get(f"{server.url}/proxy/dicom/wado/studies/{unknown}/metadata", timeout=60)
    deadline = time.time() + 120
    while time.time() < deadline:
        recent = client.info()["case_preparation"]["recent"]
        if any(r["study"] == case for r in recent):
            break
        time.sleep(0.5)
    mine = [r for r in recent if r["study"] == case]
    assert [(r["why"], r["outcome"]) for r in mine] == [("viewed", "prepared")], recent
    assert not any(r["study"] == unknown for r in recent)
