"""A ``monailabel start_server`` of this app on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import requests

from scripts.local_orthanc import free_port

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "apps" / "brats_label"
SERVER_START_TIMEOUT_S = 180


class LocalServer:
    """A running ``monailabel start_server`` on a free loopback port."""

    def __init__(self, studies, conf: dict, log_path: Path, env: Optional[dict] = None, headers: Optional[dict] = None, app_dir: Path = APP_DIR, port: Optional[int] = None):
        """``app_dir``: another build of the app (a benchmark's baseline), else this checkout's; ``port``: a free one if not given."""
        self.port = port or free_port()
        self.headers = headers or {}  # e.g. a bearer token when authentication is on
        self.url = f"http://127.0.0.1:{self.port}"
        self.studies = studies
        self.conf = dict(conf)
        self.log_path = log_path
        args = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app_dir), "--studies", str(studies)]
        for key, value in conf.items():
            args += ["--conf", key, str(value)]
        args += ["--host", "127.0.0.1", "--port", str(self.port)]
        env = {**os.environ, **(env or {})}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.time() + SERVER_START_TIMEOUT_S
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                if requests.get(f"{self.url}/info/", headers=self.headers, timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)  # ready is noticed within a quarter second: the suite starts about 70 servers
        self.stop()
        raise RuntimeError(f"server did not answer within {SERVER_START_TIMEOUT_S} s:\n{self.log_path.read_text()[-4000:]}")

    def wait_training(self, timeout_s: float = 600) -> dict:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            status = requests.get(f"{self.url}/train/", headers=self.headers, timeout=10).json()
            if status.get("status") in ("DONE", "ERROR", "STOPPED"):
                return status
            time.sleep(2)
        raise TimeoutError(f"training did not finish within {timeout_s} s")

    def workers(self, marker: str) -> list:
        """The server's live worker processes whose command line contains ``marker``: one that has
        ended (a zombie not yet reaped, or gone) is not a worker any more."""
        import psutil

        found = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if marker in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:  # ZombieProcess is one
                continue
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
