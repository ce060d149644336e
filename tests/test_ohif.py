"""The OHIF viewer served by the server, in a real Chromium, on a study from a real Orthanc.

An annotator opens the MONAI Label mode on a study: OHIF lists the four MR series (and the imported
ground-truth SEG) through the server's DICOMweb proxy, renders an image, the MONAI Label panel connects
to the server, and its Auto-Segmentation loads the server's result as a segmentation with our segment names. Screenshots are kept in test-artifacts/ (the README's user guide shows them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib.config import IMPORT_SERIES, PROFILES
from lib.network import build_network
from scripts.import_studies import import_studies
from tests.conftest import ARTIFACTS, REPO, make_studies

pytestmark = pytest.mark.server

BROWSER_DIR = REPO / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
BRAIN_GREY = 60  # viewport pixels brighter than this are image, not background or overlay text
MIN_IMAGE_FRACTION = 0.02


@pytest.fixture(scope="module")
def server(orthanc, server_factory, tmp_path_factory):
    assert CHROMIUM.exists(), "Debian's chromium is missing: run scripts/system_packages.sh"
    assert (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(), "run: npm install --prefix tests/browser"
    studies = make_studies(tmp_path_factory.mktemp("ohif_studies"), cases=2, labelled=1, seed=41)
    import_studies(studies, orthanc.archive(), progress=False)
    weights = tmp_path_factory.mktemp("weights") / "untrained.pt"
    torch.save(build_network(PROFILES["cpu"]).state_dict(), weights)
    workspace = tmp_path_factory.mktemp("ohif_workspace")
    ARTIFACTS.mkdir(exist_ok=True)
    return server_factory(orthanc.dicomweb, env=orthanc.credentials_env, workspace=workspace, pretrained_weights=weights, dicomweb_refresh_s=0)


def _open_in_ohif(server, study: str, out: Path) -> dict:
    run = subprocess.run(
        ["node", "ohif_open_study.mjs", server.url, study, str(out)], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_monai_label_mode_shows_the_four_sequences_renders_connects_and_segments(server, tmp_path):
    import requests

    labelled = [k for k, v in requests.get(f"{server.url}/datastore/?output=all", timeout=60).json()["objects"].items() if "final" in v["labels"]]
    study = labelled[0]  # the one with a ground-truth SEG
    result = _open_in_ohif(server, study, tmp_path)
    assert result["errors"] == []

    mr = sorted(s["description"] for s in result["series"] if s["modality"] == "MR")
    assert mr == sorted(name for _, name in IMPORT_SERIES.values()), "all four sequences are listed"
    assert [s["modality"] for s in result["series"]].count("SEG") == 1, "the label is listed as a DICOM SEG"
    assert result["connected"] and result["info"]["models"]["segmentation"]["labels"] == {"necrotic_core": 1, "edema": 2, "enhancing_tumour": 3}
    assert result["panel"], "the MONAI Label panel lists Active Learning and Auto-Segmentation once connected"

    # Auto-Segmentation > Run: OHIF asks for the series on screen; the server resolves it to the study
    mr_uids = {s["uid"] for s in result["series"] if s["modality"] == "MR"}
    assert result["infer"]["status"] == 200 and result["infer"]["image"] in mr_uids
    assert [sorted(labels) for labels in result["segmentations"]] == [["edema", "enhancing_tumour", "necrotic_core"]], "the result is loaded, segments named"

    viewport = np.asarray(Image.open(tmp_path / "ohif_viewport.png").convert("L"))
    assert (viewport > BRAIN_GREY).mean() > MIN_IMAGE_FRACTION, "the viewport shows an image, not a black square"
    for picture in ("ohif_monai_label_mode.png", "ohif_viewport.png", "ohif_after_autosegmentation.png"):
        shutil.copyfile(tmp_path / picture, ARTIFACTS / picture)


def test_study_list_shows_the_archive_studies(server, tmp_path):
    run = subprocess.run(["node", "ohif_study_list.mjs", server.url, str(tmp_path)], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["errors"] == [] and result["rows"] == 2
    assert "BraTS-GLI-00000-000" in result["text"] and "BraTS-GLI-00001-000" in result["text"], "patients listed by name"
    shutil.copyfile(tmp_path / "ohif_study_list.png", ARTIFACTS / "ohif_study_list.png")
