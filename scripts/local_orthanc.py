"""A local Orthanc process (Debian's package) on free loopback ports, for tests, benchmarks and the demo.

Uses the project's one configuration (``orthanc/orthanc.json``) with storage, ports and credentials
from the environment, exactly as ``scripts/orthanc.sh`` does for users.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

import requests

REPO = Path(__file__).resolve().parents[1]
ORTHANC_CONFIG = REPO / "orthanc" / "orthanc.json"
ORTHANC_POSTGRESQL_CONFIG = REPO / "orthanc" / "postgresql.json"
ORTHANC_START_TIMEOUT_S = 30
ORTHANC_AET = "BRATSLABEL"


class LocalOrthanc:
    """A real Orthanc (Debian's package, with its DICOMweb plugin) on free loopback ports."""

    def __init__(
        self,
        storage: Path,
        log_path: Path,
        user: str = "brats",
        password: Optional[str] = None,
        http_port: Optional[int] = None,
        dicom_port: Optional[int] = None,
        modalities: Optional[dict] = None,
        postgresql_env: Optional[dict] = None,
    ):
        """``modalities``: Orthanc's DicomModalities (name -> [AE title, host, port]); only these may store over DICOM.
        ``postgresql_env``: the index in PostgreSQL (``orthanc/postgresql.json`` added to the configuration, its
        settings from this environment, e.g. ``LocalPostgres.orthanc_env``), instead of SQLite."""
        self.storage = storage
        self.log_path = log_path
        self.http_port, self.dicom_port = http_port or free_port(), dicom_port or free_port()
        self.user, self.password = user, password or f"pw-{os.getpid()}-{self.http_port}"
        self.aet, self.modalities = ORTHANC_AET, modalities or {}
        self.postgresql_env = postgresql_env
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.process: Optional[subprocess.Popen] = None
        self.start()

    @property
    def credentials_env(self) -> dict:
        return {"MONAI_LABEL_DICOMWEB_USERNAME": self.user, "MONAI_LABEL_DICOMWEB_PASSWORD": self.password}

    def start(self) -> None:
        env = {
            **os.environ,
            "ORTHANC_STORAGE": str(self.storage),
            "ORTHANC_HTTP_PORT": str(self.http_port),
            "ORTHANC_DICOM_PORT": str(self.dicom_port),
            "ORTHANC_USER": self.user,
            "ORTHANC_PASSWORD": self.password,
            "ORTHANC_AET": self.aet,
            "ORTHANC_DICOM_MODALITIES": json.dumps(self.modalities),
        }
        config = ORTHANC_CONFIG
        if self.postgresql_env is not None:  # Orthanc merges every .json of a configuration folder
            config = self.log_path.parent / f"orthanc-config-{self.http_port}"
            config.mkdir(exist_ok=True)
            for source in (ORTHANC_CONFIG, ORTHANC_POSTGRESQL_CONFIG):
                shutil.copyfile(source, config / source.name)
            env.update(self.postgresql_env)
        log = open(self.log_path, "a")
        self.process = subprocess.Popen(["Orthanc", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + ORTHANC_START_TIMEOUT_S
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/system", auth=(self.user, self.password), timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"Orthanc did not answer within {ORTHANC_START_TIMEOUT_S} s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def archive(self):
        import sys

        sys.path.insert(0, str(REPO / "apps" / "brats_label"))
        from lib.dicom.archive import Archive

        return Archive(self.dicomweb, self.user, self.password)

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.url}{path}", auth=(self.user, self.password), timeout=30)

    def study_uid_of(self, patient_id: str) -> str:
        """The StudyInstanceUID of a patient's one study (the server lists studies by UID, never by patient)."""
        found = requests.get(f"{self.dicomweb}/studies", params={"PatientID": patient_id}, auth=(self.user, self.password), timeout=30).json()
        if len(found) != 1:
            raise LookupError(f"{len(found)} studies in the archive for patient {patient_id}")
        return found[0]["0020000D"]["Value"][0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
