"""OHIF's Point Prompts on a sagittal series, in a real Chromium, against a real Orthanc and the refinement model.

A whole-head study as a scanner writes it (axial T1c, thick axial T1 and T2, a sagittal FLAIR, the patient moved
between series) is in the archive. The annotator opens its FLAIR alone in the MONAI Label mode, opens Point Prompts,
chooses the refinement model and *edema*, clicks once in the sagittal viewport and presses Run: OHIF sends the click as
voxel indices of the FLAIR as cornerstone built it, the server places it in the world through the FLAIR's own grid
(MONAI Label's DeepEdit puts clicks on the wrong side of non-RAS images, its issue #1407) and answers on that grid,
which OHIF draws over the series; Submit label stores the result as the study's label on the T1c's grid.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest
import requests

from lib.config import FOREGROUND_LABELS
from scripts.import_studies import import_studies
from synthetic.head import generate_raw_study
from synthetic.layouts import write_raw_study
from tests.conftest import ARTIFACTS, REPO

pytestmark = pytest.mark.server

BROWSER_DIR = REPO / "tests" / "browser"
CLICKED_LABEL = "edema"
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])  # cornerstone's world is DICOM's patient space (LPS); the server's is RAS


@pytest.fixture(scope="module")
def server(orthanc, server_factory, trained_weights, tmp_path_factory):
    assert (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(), "run: npm install --prefix tests/browser"
    folder = tmp_path_factory.mktemp("raw_head")
    raw = generate_raw_study(seed=5, index=0, case_id="RAW-00000")
    write_raw_study(raw, folder / "studies", with_label=True)
    counts = import_studies(folder / "studies", orthanc.archive(), progress=False)
    assert counts["refused"] == 0, counts
    server = server_factory(orthanc.dicomweb, env=orthanc.credentials_env, pretrained_weights=trained_weights, dicomweb_refresh_s=0, max_epochs=1)
    # offered from the segmentation model's weights until one is trained: what a lab has on its first day
    assert requests.get(f"{server.url}/info/", timeout=60).json()["models"]["refinement"]["type"] == "deepedit"
    server.raw = raw  # the truth: how the patient moved before each series
    return server


def test_a_point_prompt_on_a_sagittal_series_lands_where_clicked_and_the_answer_is_drawn_on_that_series(server, orthanc, tmp_path):
    archive = orthanc.archive()
    [study] = requests.get(f"{server.url}/datastore/?output=all", timeout=60).json()["objects"]
    series = requests.get(f"{server.url}/datastore/?output=all", timeout=60).json()["objects"][study]["image"]["info"]["series"]
    flair, t1c = series["flair"]["uid"], series["t1c"]["uid"]
    run = subprocess.run(
        ["node", "ohif_point_prompts.mjs", server.url, study, flair, "mpr-sagittal", CLICKED_LABEL, str(tmp_path)], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["errors"] == [], result
    assert set(result["shown"]) == {flair}, "only the FLAIR is on screen"
    assert result["connected"]

    # OHIF sent one click, for the label chosen, as indices of the series on screen
    [clicked_world_lps] = result["click"]
    assert result["request"]["image"] == flair and result["infer"]["status"] == 200, result
    params = result["request"]["params"]
    assert len(params[CLICKED_LABEL]) == 1 and params["background"] == []

    # the server puts that click on the anatomy the annotator clicked: cornerstone's world point of the click is where
    # the scanner placed the FLAIR; undoing the patient's true motion before it gives the same anatomy in the study
    answer = requests.post(f"{server.url}/infer/refinement", params={"image": flair, "output": "json"}, files={"params": (None, json.dumps(params))}, timeout=600)
    answer.raise_for_status()
    placed = np.asarray(answer.json()["clicks_ras_mm"][CLICKED_LABEL][0])
    clicked_ras = np.asarray(clicked_world_lps) * LPS_TO_RAS
    anatomy = (np.linalg.inv(server.raw.motion["flair"]) @ np.append(clicked_ras, 1.0))[:3]
    # within the rounding to a voxel centre (1 x 1 x 1.2 mm) and the registration's error
    assert np.abs(placed - anatomy).max() <= 1.5, (placed, anatomy)
    assert np.abs(clicked_ras - anatomy).max() > 2.0, "the patient's motion before the FLAIR is what is corrected"

    # the answer is drawn on the FLAIR's own grid, where the panel keeps the segmentation of the series on screen
    assert result["after"]["dimensions"] == result["image"]["dimensions"]
    assert result["after"]["labelled"] > 0, "the model's answer is drawn over the series"

    # Submit label: stored as the study's label, on the T1c's grid as every label of the study is
    assert result["submit"]["status"] == 200 and result["submit"]["outcome"]["state"] == "saved", result["submit"]
    saved = tmp_path / "final.nii.gz"
    saved.write_bytes(requests.get(f"{server.url}/datastore/label", params={"label": study, "tag": "final"}, timeout=60).content)
    label = nib.load(str(saved))
    assert label.shape[2] == len(archive.instance_uids(study, t1c)), "on the T1c's slices"
    saved_ml = (np.asarray(label.dataobj) == FOREGROUND_LABELS[CLICKED_LABEL]).sum() * np.prod(label.header.get_zooms()[:3]) / 1000
    shown_ml = result["after"]["ofLabel"] * np.prod(result["image"]["spacing"]) / 1000
    assert shown_ml > 0 and saved_ml == pytest.approx(shown_ml, rel=0.05), "the edema on screen is the edema saved, in mL"

    ARTIFACTS.mkdir(exist_ok=True)
    for picture in ("ohif_point_prompts_click.png", "ohif_point_prompts_answer.png"):
        shutil.copyfile(tmp_path / picture, ARTIFACTS / picture)
