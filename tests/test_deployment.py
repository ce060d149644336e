"""The deployment files: docker-compose.yml is valid and wires the server to Orthanc; the Orthanc
script starts the archive from Debian's packages with the project's configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import time

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
