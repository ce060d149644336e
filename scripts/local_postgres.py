"""A PostgreSQL cluster of its own (Debian's postgresql) on a free loopback port, for Orthanc's index.

Made with ``initdb`` in a folder of its own, as the ``postgres`` user when run as root (PostgreSQL refuses to
run as root), trust authentication on loopback only, one database. Used by the tests and the ingest benchmark;
a deployment uses its own PostgreSQL (``docker-compose.postgresql.yml``).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List

from scripts.local_orthanc import free_port

POSTGRES_START_TIMEOUT_S = 60
DATABASE = "orthanc"
USER = "orthanc"


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is missing: run scripts/system_packages.sh (Debian's postgresql)")
    return found


class LocalPostgres:
    def __init__(self) -> None:
        """The cluster lives in a folder of its own under the system's temporary folder (the ``postgres`` user
        must reach it, which a root-only pytest folder does not allow); ``stop`` removes it."""
        self.folder = Path(tempfile.mkdtemp(prefix="brats_label_postgres_"))
        self.data = self.folder / "data"
        self.port = free_port()
        self._as_postgres: List[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(_binary("initdb"), "-D", str(self.data), "--auth=trust", f"--username={USER}", "--encoding=UTF8", "--no-instructions")
        self.start()
        self._run(_binary("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE)

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as_postgres, *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder}"
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "postgres.log"), "-o", options, "-w", "-t", str(POSTGRES_START_TIMEOUT_S), "start")

    def stop(self) -> None:
        try:
            self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        except RuntimeError:
            pass  # not running
        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def orthanc_env(self) -> dict:
        """What orthanc/postgresql.json reads from the environment."""
        return {
            "ORTHANC_POSTGRESQL_HOST": "127.0.0.1",
            "ORTHANC_POSTGRESQL_PORT": str(self.port),
            "ORTHANC_POSTGRESQL_DATABASE": DATABASE,
            "ORTHANC_POSTGRESQL_USER": USER,
            "ORTHANC_POSTGRESQL_PASSWORD": "",
        }
