"""The README's main command on a small sample: it brings up Orthanc with the studies imported and the
server, prints the OHIF URL, and that URL shows the sample studies in a real Chromium."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from scripts.local_orthanc import free_port
from tests.conftest import REPO

pytestmark = pytest.mark.server

BROWSER_DIR = REPO / "tests" / "browser"
STARTUP_TIMEOUT_S = 600
CASES = 3


def test_the_demo_command_brings_up_the_stack_and_its_ohif_url_lists_the_sample(tmp_path):
    port, orthanc_port = free_port(), free_port()
    command = ["bash", "scripts/demo.sh", "--studies", str(tmp_path / "sample"), "--cases", str(CASES), "--labelled", "2",
               "--spacing", "2", "--port", str(port), "--orthanc-port", str(orthanc_port), "--epochs", "1"]  # fmt: skip
    log = open(tmp_path / "demo.log", "w+")
    demo = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, ohif = time.time() + STARTUP_TIMEOUT_S, None
        while ohif is None and time.time() < deadline and demo.poll() is None:
            time.sleep(2)
            found = re.search(r"OHIF viewer:\s+(\S+)", (tmp_path / "demo.log").read_text())
            ohif = found.group(1) if found else None
        assert ohif == f"http://127.0.0.1:{port}/ohif/", (tmp_path / "demo.log").read_text()[-3000:]
        text = (tmp_path / "demo.log").read_text()
        assert f"Slicer server:  http://127.0.0.1:{port}" in text and "sample in Orthanc" in text

        run = subprocess.run(["node", "ohif_study_list.mjs", ohif.removesuffix("/ohif/"), str(tmp_path)], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["errors"] == [] and result["rows"] == CASES, result
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGTERM)  # the demo stops its server and Orthanc, as on Ctrl-C
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
        log.close()
    assert demo.returncode is not None
