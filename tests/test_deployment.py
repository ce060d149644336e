"""The deployment files: docker-compose.yml is valid and wires the server to Orthanc; the Orthanc
script starts the archive from Debian's packages with the project's configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import requests
import yaml

from scripts.local_orthanc import free_port
from tests.conftest import REPO

DEMO_ENV = {"ORTHANC_USER": "demo", "ORTHANC_PASSWORD": "demo-only-change-me"}


def compose_config(env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORTHANC_")}
    return subprocess.run(["docker-compose", "config"], cwd=REPO, env={**clean, **env}, capture_output=True, text=True)


def test_compose_file_is_valid_and_wires_the_server_to_orthanc():
    result = compose_config(DEMO_ENV)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    orthanc, server = config["services"]["orthanc"], config["services"]["server"]
    assert orthanc["network_mode"] == server["network_mode"] == "host", "loopback only, as the scripts"
    assert server["environment"]["MONAI_LABEL_DICOMWEB_USERNAME"] == orthanc["environment"]["ORTHANC_USER"]
    assert server["environment"]["MONAI_LABEL_DICOMWEB_PASSWORD"] == orthanc["environment"]["ORTHANC_PASSWORD"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "http://127.0.0.1:8042/dicom-web" in dockerfile and "ORTHANC_HTTP_PORT=8042" in (REPO / "orthanc" / "Dockerfile").read_text()


def test_compose_refuses_to_start_without_credentials():
    result = compose_config({})
    assert result.returncode != 0 and "set ORTHANC_USER" in result.stderr


def test_orthanc_script_starts_the_archive_with_dicomweb_and_authentication(tmp_path):
    port = free_port()
    env = {**os.environ, **DEMO_ENV, "ORTHANC_HTTP_PORT": str(port), "ORTHANC_DICOM_PORT": str(free_port())}
    log = open(tmp_path / "orthanc.log", "w")
    process = subprocess.Popen(["bash", "scripts/orthanc.sh", str(tmp_path / "storage")], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(f"{url}/system", auth=("demo", "demo-only-change-me"), timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        else:
            raise AssertionError((tmp_path / "orthanc.log").read_text())
        assert requests.get(f"{url}/dicom-web/studies", timeout=5).status_code == 401, "no anonymous access"
        assert requests.get(f"{url}/dicom-web/studies", auth=("demo", "demo-only-change-me"), timeout=5).json() == []
        assert (tmp_path / "storage").is_dir()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


TEAM_ENV = {
    **DEMO_ENV,
    "BRATS_LABEL_HOSTNAME": "brats-label.lab.example.org",
    "KEYCLOAK_ADMIN": "kcadmin",
    "KEYCLOAK_ADMIN_PASSWORD": "from-the-environment",
    "KEYCLOAK_DB_PASSWORD": "also-from-the-environment",
    "TLS_CERT": "/etc/ssl/brats/server.crt",
    "TLS_KEY": "/etc/ssl/brats/server.key",
    "TLS_CA": "/etc/ssl/brats/ca.pem",
}


def team_compose_config(env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in TEAM_ENV}
    return subprocess.run(["docker-compose", "-f", "docker-compose.yml", "-f", "docker-compose.team.yml", "config"], cwd=REPO, env={**clean, **env}, capture_output=True, text=True)


def test_the_team_deployment_turns_authentication_on_behind_tls():
    result = team_compose_config(TEAM_ENV)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    server = services["server"]["environment"]
    assert server["MONAI_LABEL_AUTH_ENABLE"] == "true"
    assert server["MONAI_LABEL_AUTH_REALM_URI"] == "https://brats-label.lab.example.org/idp/realms/brats"
    assert services["keycloak"]["image"].startswith("quay.io/keycloak/keycloak:") and "--import-realm" in services["keycloak"]["command"]
    assert services["keycloak"]["environment"]["KC_HTTP_HOST"] == "127.0.0.1", "Keycloak only behind the proxy"
    assert services["tls-proxy"]["build"]["context"].endswith("deploy/nginx")
    realm = json.loads((REPO / "deploy" / "keycloak" / "brats-realm.json").read_text())
    roles = {r["name"] for r in realm["roles"]["realm"]}
    assert {"monailabel-user", "monailabel-annotator", "monailabel-reviewer", "monailabel-admin"} <= roles
    client = realm["clients"][0]
    assert client["clientId"] == "monailabel-app" and any(m["protocolMapper"] == "oidc-audience-mapper" for m in client["protocolMappers"])
    assert "password" not in result.stdout.lower().replace("_password", ""), "no secret is written in the files"


@pytest.mark.parametrize("missing", ["KEYCLOAK_ADMIN_PASSWORD", "KEYCLOAK_DB_PASSWORD", "BRATS_LABEL_HOSTNAME", "TLS_CERT"])
def test_the_team_deployment_refuses_to_start_without_its_secrets(missing):
    result = team_compose_config({k: v for k, v in TEAM_ENV.items() if k != missing})
    assert result.returncode != 0 and f"set {missing}" in result.stderr


def test_orthanc_takes_dicom_only_from_the_modalities_it_names(tmp_path):
    """A study sent with dcmtk's storescu: refused from an AE title the deployment did not register, or sent to
    another called AE title; stored from the registered modality."""
    import numpy as np
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from scripts.local_orthanc import ORTHANC_AET, LocalOrthanc

    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = "1.2.840.10008.5.1.4.1.1.4", generate_uid(), ExplicitVRLittleEndian
    ds = pydicom.dataset.FileDataset(str(tmp_path / "mr.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "MR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = generate_uid(), generate_uid(), "STORESCU-TEST"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel, ds.PhotometricInterpretation = 16, 16, 15, 0, 1, "MONOCHROME2"
    ds.PixelData = np.zeros((4, 4), np.uint16).tobytes()
    ds.save_as(str(tmp_path / "mr.dcm"), write_like_original=False)

    archive = LocalOrthanc(tmp_path / "storage", tmp_path / "orthanc.log", modalities={"SCANNER": ["MRI_SCANNER", "127.0.0.1", free_port()]})
    try:

        def send(calling: str, called: str = ORTHANC_AET) -> subprocess.CompletedProcess:
            return subprocess.run(
                ["storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(archive.dicom_port), str(tmp_path / "mr.dcm")], capture_output=True, text=True, timeout=60
            )

        intruder = send("INTRUDER")
        assert intruder.returncode != 0 and "calling ae title not recogni" in intruder.stderr.lower()
        wrong_called = send("MRI_SCANNER", "ANY-SCP")
        assert wrong_called.returncode != 0 and "called ae title not recogni" in wrong_called.stderr.lower()
        assert archive.get("/instances").json() == [], "nothing stored from an unregistered sender"
        registered = send("MRI_SCANNER")
        assert registered.returncode == 0, registered.stderr
        assert len(archive.get("/instances").json()) == 1
    finally:
        archive.stop()


def test_the_postgresql_profile_puts_orthancs_index_in_postgresql():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORTHANC_")}
    env = {**clean, **DEMO_ENV, "ORTHANC_DB_PASSWORD": "from-the-environment"}
    command = ["docker-compose", "-f", "docker-compose.yml", "-f", "docker-compose.postgresql.yml", "config"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    orthanc = services["orthanc"]["environment"]
    assert orthanc["ORTHANC_INDEX"] == "postgresql" and orthanc["ORTHANC_POSTGRESQL_PASSWORD"] == "from-the-environment"
    assert services["orthanc-db"]["image"].startswith("postgres:")
    assert "postgresql.json" in (REPO / "orthanc" / "Dockerfile").read_text(), "the image holds the PostgreSQL configuration"
    missing = subprocess.run(command, cwd=REPO, env={**clean, **DEMO_ENV}, capture_output=True, text=True)
    assert missing.returncode != 0 and "set ORTHANC_DB_PASSWORD" in missing.stderr
