"""The README's main command, as a new user runs it: Orthanc with the sample imported, the server, the OHIF
URL (which shows the sample in a real Chromium), the first training followed to its end, and the first
pre-segmentation. The sample ships enough labels to reach the automatic retrain threshold, so a demo that
took its ground truth for annotators' corrections would meet a training it did not start."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
import requests

from scripts.local_orthanc import free_port
from tests.conftest import REPO

pytestmark = pytest.mark.server

BROWSER_DIR = REPO / "tests" / "browser"
STARTUP_TIMEOUT_S = 600
FIRST_MODEL_TIMEOUT_S = 900
CASES = 6
LABELLED = 5  # the app's default retrain_after_labels


def _wait_for(pattern: str, log_path, demo: subprocess.Popen, timeout_s: float) -> re.Match:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = re.search(pattern, log_path.read_text())
        if found or demo.poll() is not None:
            break
        time.sleep(2)
    assert found, f"'{pattern}' not printed (demo exit code {demo.poll()}):\n" + log_path.read_text()[-4000:]
    return found


def test_the_demo_brings_up_the_stack_trains_its_first_model_and_presegments(tmp_path):
    port, orthanc_port = free_port(), free_port()
    command = ["bash", "scripts/demo.sh", "--studies", str(tmp_path / "sample"), "--cases", str(CASES), "--labelled", str(LABELLED),
               "--spacing", "2", "--port", str(port), "--orthanc-port", str(orthanc_port), "--epochs", "1"]  # fmt: skip
    log_path = tmp_path / "demo.log"
    log = open(log_path, "w+")
    demo = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        ohif = _wait_for(r"OHIF viewer:\s+(\S+)", log_path, demo, STARTUP_TIMEOUT_S).group(1)
        assert ohif == f"{url}/ohif/"
        text = log_path.read_text()
        assert f"Slicer server:  {url}" in text and "sample in Orthanc" in text

        run = subprocess.run(["node", "ohif_study_list.mjs", url, str(tmp_path)], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["errors"] == [] and result["rows"] == CASES, result

        _wait_for(r"pre-segmented \S+ in", log_path, demo, FIRST_MODEL_TIMEOUT_S)
        assert demo.poll() is None, "the demo should keep serving after its first pre-segmentation"
        assert "Traceback" not in log_path.read_text()
        assert (tmp_path / "demo_presegmentation.png").stat().st_size > 0

        training = requests.get(f"{url}/brats/training", timeout=10).json()
        # the sample's own ground truth (5 SEGs written by the import) is nobody's correction
        assert training["retrain"]["new_labels"] == 0, training["retrain"]
        assert [r["reason"] for r in training["retrain"]["runs"]] == ["requested"], training["retrain"]
        assert training["progress"]["phase"] == "finished" and training["serving"] == "v0", training
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGTERM)  # the demo stops its server and Orthanc, as on Ctrl-C
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
        log.close()
    assert demo.returncode == 0, log_path.read_text()[-3000:]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/info/", timeout=5)  # the server went with the demo


def test_the_demo_stops_what_it_started_when_the_server_cannot_start(tmp_path):
    """Port already taken: the demo says what happened and leaves no Orthanc behind."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port, orthanc_port = taken.getsockname()[1], free_port()
    # no whole head: what is tested is the stop, not the sample (the first demo test imports and prepares one)
    command = ["bash", "scripts/demo.sh", "--studies", str(tmp_path / "sample"), "--cases", "2", "--labelled", "1", "--raw", "0",
               "--spacing", "2", "--port", str(port), "--orthanc-port", str(orthanc_port)]  # fmt: skip
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S)
    finally:
        taken.close()
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "The demo stopped: the server stopped" in done.stderr, done.stderr[-2000:]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{orthanc_port}/system", timeout=5)  # Orthanc was stopped too
