"""The post-treatment label set (``--conf labels brats2024_post``): BraTS 2024's non-enhancing tumour core, surrounding
FLAIR hyperintensity, enhancing tissue and resection cavity, through the generator, the regions, the SEG and its
measurement report, a pre-operative model widened to start one, and the server (listing, inference, saving,
audit, timeline, training)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from lib.config import BRATS_2023, BRATS_2024_POST, PROFILES
from lib.dicom.measurement_report import measurement_report, volumes_from_report
from lib.dicom.mr_series import StudyTags, uid_from, volume_to_mr_series
from lib.dicom.seg import label_to_seg, seg_to_label
from lib.model.network import build_network, with_outputs_of
from lib.model.transforms import region_volumes_ml
from synthetic.__main__ import main as generate
from synthetic.post_treatment import ENHANCING_TISSUE, RESECTION_CAVITY, SURROUNDING_FLAIR, generate_post_treatment
from tests.conftest import dciodvfy_errors, put_final_label

POST = BRATS_2024_POST
SEED = "post-treatment-test"


def test_a_post_operative_study_has_a_cavity_of_fluid_a_thin_enhancing_rim_and_flair_hyperintensity():
    study = generate_post_treatment(0, 3, 1, 2.0)
    label, t1c, t2, flair = study.label, study.images["t1c"], study.images["t2"], study.images["flair"]
    cavity, rim, snfh = label == RESECTION_CAVITY, label == ENHANCING_TISSUE, label == SURROUNDING_FLAIR
    assert cavity.sum() * 8 / 1000 > 5.0 and rim.any() and snfh.any()
    white = (label == 0) & (flair > 0)
    assert np.median(t2[cavity]) > np.median(t2[white]) and np.median(flair[cavity]) < np.median(flair[white]), "fluid: bright T2, dark FLAIR"
    assert np.median(t1c[rim]) > np.median(t1c[white]), "the rim enhances"
    assert np.median(flair[snfh]) > np.median(flair[white]), "FLAIR hyperintensity"
    later = generate_post_treatment(0, 3, 2, 2.0)
    assert later.case_id.endswith("-002") and (later.label == RESECTION_CAVITY).sum() <= cavity.sum() * 1.05, "the cavity does not grow"


def test_regions_and_labels_round_trip_and_tumour_is_never_hidden_under_the_cavity():
    label = np.array([[0, 1, 2, 3, 4]], np.uint8)
    regions = POST.to_regions(label)
    assert [region.name for region in POST.regions] == ["TC", "WT", "ET", "RC"] and regions.shape == (4, 1, 5)
    assert np.array_equal(POST.to_label(regions), label)
    both = np.stack([[[1]], [[1]], [[1]], [[1]]])  # the network calls one voxel enhancing tissue and cavity
    assert POST.to_label(both)[0, 0] == ENHANCING_TISSUE
    assert [region.name for region in POST.regions[:3]] == list(BRATS_2023.region_values), "the pre-operative regions come first"
    assert POST.volumes_ml(label, 1.0) == {
        "non_enhancing_tumour_core": 1.0,
        "surrounding_flair_hyperintensity": 1.0,
        "enhancing_tissue": 1.0,
        "resection_cavity": 1.0,
        "TC": 2.0,
        "WT": 3.0,
    }


def test_the_seg_names_the_four_segments_and_the_report_gives_the_cavitys_volume(tmp_path):
    study = generate_post_treatment(0, 5, 1, 2.0)
    box = tuple(slice(int(a) - 2, int(b) + 3) for a, b in zip(*(lambda w: (w.min(0), w.max(0)))(np.argwhere(study.label > 0))))
    label = study.label[box]
    tags = StudyTags("POST-OP", "Post^Op", uid_from(SEED, "study"), "1", "20240408", "101500")
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    series = volume_to_mr_series(study.images["t1c"][box], affine, tags, "T1 POST GAD", 3, f"{SEED}-t1c", uid_from(SEED, "frame"))
    seg = label_to_seg(label, series, SEED, "test", POST)
    assert [(int(s.SegmentNumber), str(s.SegmentLabel)) for s in seg.SegmentSequence] == [
        (1, "non_enhancing_tumour_core"),
        (2, "surrounding_flair_hyperintensity"),
        (3, "enhancing_tissue"),
        (4, "resection_cavity"),
    ]
    assert np.array_equal(seg_to_label(seg, affine, label.shape, POST), label), "the SEG reads back as the label"
    volumes = region_volumes_ml(label, 0.008, POST)
    sr = measurement_report(seg, series, volumes, SEED, "test", POST)
    assert volumes_from_report(sr, POST) == pytest.approx(volumes, abs=1e-3)
    seg_path, sr_path = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    seg.save_as(str(seg_path), write_like_original=False)
    sr.save_as(str(sr_path), write_like_original=False)
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []


def test_a_pre_operative_model_starts_a_post_treatment_one_answering_as_before_on_its_regions():
    profile = PROFILES["cpu"]
    post_profile = dataclasses.replace(profile, label_set=POST)
    pre = build_network(profile).eval()
    widened = with_outputs_of(pre.state_dict(), post_profile, 0.02)
    assert widened is not None
    post = build_network(post_profile).eval()
    post.load_state_dict(widened)
    image = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        before, after = torch.sigmoid(pre(image)), torch.sigmoid(post(image))
    assert after.shape[1] == 4 and torch.allclose(after[:, :3], before, atol=1e-6)
    assert torch.allclose(after[:, 3], torch.full_like(after[:, 3], 0.02), atol=1e-4), "the cavity's output starts at the prior"
    assert with_outputs_of(pre.state_dict(), profile, 0.02) is None, "a model of the set itself is used as it is"


@pytest.fixture(scope="module")
def post_studies(tmp_path_factory) -> Path:
    """Three patients' first post-operative scans at 2 mm (two labelled) and a later scan of each, with patients.csv."""
    folder = tmp_path_factory.mktemp("post_treatment")
    generate(["--out", str(folder / "studies"), "--cases", "3", "--labelled", "2", "--spacing", "2", "--post-treatment", "--follow-ups", "1", "--workers", "1"])
    return folder / "studies"


@pytest.mark.server
def test_a_server_on_the_post_treatment_set_segments_saves_audits_trains_and_follows_volumes(post_studies, trained_weights, server_factory, tmp_path):
    server = server_factory(post_studies, labels="brats2024_post", pretrained_weights=str(trained_weights), retrain_after_labels=0)
    info = requests.get(f"{server.url}/info/", timeout=60).json()
    assert info["labels"] == list(POST.foreground)
    assert info["models"]["segmentation"]["labels"] == POST.foreground and "refinement" not in info["models"], "clicks know the pre-operative set only"
    imported = requests.get(f"{server.url}/datastore/label/info", params={"label": "BraTS-GLI-00000-001", "tag": "final"}, timeout=60).json()
    assert imported["voxels"]["resection_cavity"] > 0, "ground truth with label 4 is imported as the cavity"

    unlabelled = "BraTS-GLI-00002-001"
    answer = requests.post(f"{server.url}/infer/segmentation", params={"image": unlabelled, "output": "json"}, json={}, timeout=300)
    assert answer.status_code == 200, answer.text
    volumes = answer.json()["volumes_ml"]
    assert set(volumes) == set(POST.volume_names()), "the cavity's volume with the others"

    reference = nib.load(str(post_studies / unlabelled / f"{unlabelled}-t1c.nii.gz"))
    drawn = np.zeros(reference.shape, np.uint8)
    drawn[30:40, 40:50, 30:38] = RESECTION_CAVITY
    drawn[30:40, 40:50, 38:40] = ENHANCING_TISSUE
    saved = put_final_label(server, unlabelled, drawn, reference.affine, tmp_path, {"user": "dr_post"})
    assert saved.status_code == 200, saved.text
    audit = [row for row in requests.get(f"{server.url}/brats/audit", timeout=60).json() if row["case"] == unlabelled]
    assert audit and audit[-1]["voxels_resection_cavity"] == 800 and "dice_rc" in audit[-1], "the audit scores the cavity too"
    wrong = drawn.copy()
    wrong[0, 0, 0] = 5
    refused = put_final_label(server, unlabelled, wrong, reference.affine, tmp_path, {})
    assert refused.status_code == 422 and "resection cavity" in refused.text, "the error names the set's labels"

    timeline = requests.get(f"{server.url}/brats/timeline/BraTS-GLI-00000-002", timeout=120).json()
    assert [row["case"] for row in timeline["studies"]] == ["BraTS-GLI-00000-001", "BraTS-GLI-00000-002"]
    assert "resection_cavity" in timeline["studies"][0]["volumes_ml"]

    run = requests.post(f"{server.url}/train/segmentation", json={"max_epochs": 2, "patch_size": "48,48,48", "seed": 0}, timeout=60)
    assert run.status_code == 200, run.text
    assert server.wait_training(timeout_s=600)["status"] == "DONE"
    newest = requests.get(f"{server.url}/brats/models", timeout=60).json()["versions"][-1]
    assert {"tc", "wt", "et", "rc"} <= set(newest["validation_dice"]), f"the cavity is validated as a region of its own: {newest}"
