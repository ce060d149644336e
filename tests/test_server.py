"""The real MONAI Label server on the app, driven with MONAI Label's own client, as a viewer would.

One story, in order: a fresh server with generated studies and no model; the annotator asks for a
pre-segmentation and is told how to get a model; a short training runs in the background; the next
pre-segmentation comes back on the study's grid with region volumes; corrections are saved, bad ones
refused without harming what is stored.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from lib.config import BACKGROUND_NICENESS, BRATS_2023
from lib.model.brats_metrics import brats_scores
from tests.conftest import APP_DIR, LOOP_PATCH

pytestmark = pytest.mark.server

UNLABELLED = "BraTS-GLI-00005-000"
LABELLED = "BraTS-GLI-00000-000"
BROKEN = "BraTS-GLI-00099-000"


@pytest.fixture(scope="module")
def studies(studies_2mm, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("server") / "studies"
    shutil.copytree(studies_2mm, target, ignore=shutil.ignore_patterns(".brats_label"))
    broken = target / BROKEN
    broken.mkdir()
    shutil.copy(target / LABELLED / f"{LABELLED}-t1c.nii.gz", broken / f"{BROKEN}-t1c.nii.gz")
    return target


@pytest.fixture(scope="module")
def server(studies, server_factory):
    return server_factory(studies, max_epochs=2, patch_size=LOOP_PATCH)


@pytest.fixture(scope="module")
def client(server, tmp_path_factory) -> MONAILabelClient:
    return MONAILabelClient(server.url, tmpdir=str(tmp_path_factory.mktemp("client")), client_id="pytest")


def test_info_lists_the_model_and_label_names_before_any_training(client):
    info = client.info()
    assert info["labels"] == ["necrotic_core", "edema", "enhancing_tumour"], "in value order, as a list (OHIF's panel needs a list)"
    model = info["models"]["segmentation"]
    assert model["labels"] == {"necrotic_core": 1, "edema": 2, "enhancing_tumour": 3}
    assert model["trained"] is False and model["profile"] == "cpu"
    assert "segmentation" in info["trainers"]
    problems = {p["study_id"]: p["reason"] for p in info["datastore"]["problems"]}
    assert "missing T1" in problems[BROKEN]
    assert list(info["strategies"]) == ["random", "uncertainty", "power"], "the default (first) is what the experiment found best"


def test_cold_start_infer_says_no_model_yet_and_how_to_get_one(client):
    with pytest.raises(MONAILabelClientException) as error:
        client.infer("segmentation", UNLABELLED, {})
    assert "Status: 409" in error.value.msg
    assert "No model is trained yet" in error.value.msg and "/train/segmentation" in error.value.msg


def test_next_sample_without_a_model_is_random_and_says_so(client):
    answer = client.next_sample("uncertainty", {})
    assert answer["id"].startswith("BraTS-GLI-") and answer["picked_by"] == "random"
    assert answer["reason"] == "random pick: no model yet"
    labelled = {f"BraTS-GLI-{i:05d}-000" for i in range(4)}
    assert answer["id"] not in labelled


def test_datastore_lists_studies_as_cases(client):
    datastore = client.datastore()
    objects = datastore["objects"]
    assert len(objects) == 6 and BROKEN not in objects
    labelled = [k for k, v in objects.items() if "final" in v["labels"]]
    assert sorted(labelled) == [f"BraTS-GLI-{i:05d}-000" for i in range(4)]
    assert objects[UNLABELLED]["image"]["info"]["channels"] == ["t1c", "t1", "t2", "flair"]


def _worker_niceness(server, marker: str, timeout_s: float = 120) -> int:
    """Niceness of the server's worker process whose command line contains ``marker``, once it has
    loaded the app and lowered its priority (or the last value seen, if it ends first)."""
    deadline = time.time() + timeout_s
    seen = None
    while time.time() < deadline:
        for child in server.workers(marker):
            try:
                seen = child.nice()
            except psutil.NoSuchProcess:
                continue
            if seen >= 10:
                return seen
        time.sleep(0.2)
    assert seen is not None, f"no worker process with '{marker}' seen"
    return seen


def test_a_worker_yields_the_cpu_before_it_imports_monai():
    """MONAI Label runs training and scoring as ``python -m monailabel.interfaces.utils.app``. Such a process runs at
    lower priority from the app's first import, before MONAI and the app's modules load (seconds of CPU that doubled
    the answers to an annotator's clicks while a scoring worker started); any other process, the server's, keeps its
    priority."""
    probe = (
        "import os, sys, types\n"
        "if sys.argv[1] == 'worker':\n"
        "    sys.modules['__main__'].__spec__ = types.SimpleNamespace(name='monailabel.interfaces.utils.app')\n"
        f"sys.path.insert(0, {str(APP_DIR)!r})\n"
        "import lib.runtime.worker_priority\n"
        "print(os.getpriority(os.PRIO_PROCESS, 0), 'monai' in sys.modules)\n"
    )
    own = os.getpriority(os.PRIO_PROCESS, 0)
    answers = {kind: subprocess.run([sys.executable, "-c", probe, kind], capture_output=True, text=True, timeout=120, check=True).stdout.split() for kind in ("worker", "server")}
    assert answers["worker"] == [str(max(own, BACKGROUND_NICENESS)), "False"], answers
    assert answers["server"] == [str(own), "False"], answers


def test_short_training_publishes_a_model_with_region_dice(client, server, studies):
    started = client.train_start("segmentation", {"max_epochs": 2})
    assert started["status"] in ("SUBMITTED", "RUNNING")
    assert _worker_niceness(server, "-m train") >= 10, "training runs at lower priority than serving"
    status = server.wait_training(timeout_s=600)
    assert status["status"] == "DONE", status.get("details")
    stats = client.info()["train_stats"]["segmentation"]
    assert stats["epoch"] == 2
    metrics = stats["eval"]["metrics"]
    for region in ("tc", "wt", "et"):
        assert 0.0 <= metrics[f"val_dice_{region}"] <= 1.0
    assert [h["epoch"] for h in stats["history"]] == [1, 2]
    assert client.info()["models"]["segmentation"]["trained"] is True
    curves = list((studies / ".brats_label" / "model" / "train_01").glob("training_curve_*.png"))
    assert len(curves) == 1 and curves[0].read_bytes()[:4] == b"\x89PNG"


def test_new_model_is_scored_in_the_background_and_ranks_the_queue(client, server):
    deadline = time.time() + 300
    while time.time() < deadline:
        queue = requests.get(f"{server.url}/brats/queue", timeout=30).json()
        if queue and all(entry["current"] for entry in queue):
            break
        time.sleep(3)
    else:
        raise AssertionError(f"unlabelled cases not scored for the served model: {queue}")
    assert [e["rank"] for e in queue] == list(range(1, len(queue) + 1))
    assert queue[0]["score"] >= queue[-1]["score"]
    served = queue[0]["model_version"]
    # ``client`` already holds the case it was handed before training; asking again swaps it
    answer = client.next_sample("uncertainty", {})
    assert answer["picked_by"] == "uncertainty" and answer["model_version"] == served, (answer, queue)
    assert answer["id"] == queue[0]["id"] and answer["client_id"] == "pytest", (answer, queue)
    second = MONAILabelClient(server.url, client_id="annotator-2").next_sample("uncertainty", {})
    assert second["id"] == queue[1]["id"], "a case handed to one annotator is not handed to another"
    listing = client.datastore()["objects"][queue[0]["id"]]["image"]["info"]["uncertainty"]
    assert listing["rank"] == 1 and listing["model_version"] == served
    progress = client.info()["scoring_progress"]
    assert progress["model_version"] == served and progress["done"] == progress["total"]


def test_infer_returns_label_on_the_study_grid_with_volumes(client, studies):
    label_file, params = client.infer("segmentation", UNLABELLED, {})
    params = json.loads(params) if isinstance(params, str) else params
    result = nib.load(label_file)
    source = nib.load(str(studies / UNLABELLED / f"{UNLABELLED}-t1c.nii.gz"))
    assert result.shape == source.shape
    assert np.allclose(result.affine, source.affine)
    label = np.asarray(result.dataobj)
    assert set(np.unique(label)) <= {0, 1, 2, 3}
    voxel_ml = abs(np.linalg.det(source.affine[:3, :3])) / 1000
    volumes = params["volumes_ml"]
    for name, value in {"necrotic_core": 1, "edema": 2, "enhancing_tumour": 3}.items():
        assert volumes[name] == pytest.approx((label == value).sum() * voxel_ml, abs=1e-3)
    assert volumes["WT"] == pytest.approx((label > 0).sum() * voxel_ml, abs=1e-3)
    assert volumes["TC"] == pytest.approx(np.isin(label, (1, 3)).sum() * voxel_ml, abs=1e-3)
    assert params["model"]["path"].endswith("segmentation.pt")


def test_the_refinement_model_takes_clicks_on_the_volume_shown_from_the_first_segmentation_model_then_its_own(client, server, studies):
    # offered with the segmentation model: its network until one is trained, the clicks acting through their growth
    source = nib.load(str(studies / UNLABELLED / f"{UNLABELLED}-t1c.nii.gz"))
    centre = [s // 2 for s in source.shape[:3]]
    assert client.info()["models"]["refinement"]["type"] == "deepedit"
    _, untrained = client.infer("refinement", UNLABELLED, {"enhancing_tumour": [centre]})
    untrained = json.loads(untrained) if isinstance(untrained, str) else untrained
    assert untrained["model"]["path"].endswith("segmentation.pt")
    started = client.train_start("refinement", {"max_epochs": 1})
    assert started["status"] in ("SUBMITTED", "RUNNING")
    status = server.wait_training(timeout_s=600)
    assert status["status"] == "DONE", status.get("details")
    model = client.info()["models"]["refinement"]
    assert model["type"] == "deepedit", "the type OHIF's Point Prompts and Slicer's DeepEdit look for"
    assert model["labels"] == {"background": 0, "necrotic_core": 1, "edema": 2, "enhancing_tumour": 3}
    # a version of its own, judged as the segmentation model's are: the first is served
    versions = requests.get(f"{server.url}/brats/models", params={"model": "refinement"}, timeout=30).json()
    assert versions["model"] == "refinement" and [v["reason"] for v in versions["versions"]] == ["first model"]
    assert versions["serving"] == versions["versions"][0]["id"]
    assert requests.get(f"{server.url}/brats/models", timeout=30).json()["model"] == "segmentation"
    assert requests.get(f"{server.url}/brats/models", params={"model": "nonsense"}, timeout=30).status_code == 404

    # once one is trained, a study's auto-segmentation is followed by its answer to no clicks, kept for the first click
    client.infer("segmentation", UNLABELLED, {})
    deadline = time.monotonic() + 120
    while not any(r["study"] == UNLABELLED for r in client.info()["refinement_warm_up"]["recent"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [r["outcome"] for r in client.info()["refinement_warm_up"]["recent"] if r["study"] == UNLABELLED] == ["prepared"]

    # Slicer's DeepEdit: voxel indices of the volume /datastore/image sent, here the study's own grid
    label_file, params = client.infer("refinement", UNLABELLED, {"enhancing_tumour": [centre], "background": [[2, 2, 2]]})
    result = nib.load(label_file)
    assert result.shape == source.shape and np.allclose(result.affine, source.affine)
    assert set(np.unique(np.asarray(result.dataobj))) <= {0, 1, 2, 3}
    params = json.loads(params) if isinstance(params, str) else params
    assert params["model"]["path"].endswith("refinement.pt")
    placed = params["clicks_ras_mm"]  # where the server put each click: the clicked voxel's centre in the world
    assert np.allclose(placed["enhancing_tumour"], [(source.affine @ [*centre, 1.0])[:3]], atol=0.01)
    assert np.allclose(placed["background"], [(source.affine @ [2, 2, 2, 1.0])[:3]], atol=0.01)

    # a click off the volume shown would land where nobody put it: refused, saying what to send
    with pytest.raises(MONAILabelClientException) as error:
        client.infer("refinement", UNLABELLED, {"edema": [[source.shape[0] + 40, 0, 0]]})
    assert "Status: 422" in error.value.msg, error.value.msg
    assert "outside the volume clicked on" in error.value.msg


def test_corrected_label_is_saved_and_counted(client, server, studies, tmp_path):
    truth = nib.load(str(studies / LABELLED / f"{LABELLED}-seg.nii.gz"))
    correction = np.asarray(truth.dataobj).copy()
    correction[correction == 1] = 3
    upload = tmp_path / "correction.nii.gz"
    nib.save(nib.Nifti1Image(correction, truth.affine), str(upload))
    for study in (UNLABELLED, LABELLED):
        answer = client.save_label(study, str(upload), tag="final", params={"user": "dr_test"})
        assert answer["label"] == study
    datastore = client.datastore()
    assert "final" in datastore["objects"][UNLABELLED]["labels"]
    assert datastore["objects"][LABELLED]["labels"]["final"]["info"]["user"] == "dr_test"
    saved = requests.get(f"{server.url}/datastore/label", params={"label": UNLABELLED, "tag": "final"}, timeout=30)
    assert saved.status_code == 200
    (tmp_path / "saved.nii.gz").write_bytes(saved.content)
    assert np.array_equal(np.asarray(nib.load(str(tmp_path / "saved.nii.gz")).dataobj), correction)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if not a.any() and not b.any() else 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_audit_records_who_corrected_which_prelabel_and_how_much(client, server, tmp_path):
    study = "BraTS-GLI-00004-000"
    annotator = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="slicer-ws-3")
    label_file, _ = annotator.infer("segmentation", study, {})
    served = requests.get(f"{server.url}/brats/models", timeout=30).json()["serving"]
    prelabel = nib.load(label_file)
    final = np.asarray(prelabel.dataobj).astype(np.uint8)
    final[40:50, 40:50, 30:35] = 2  # the annotator paints edema over part of the prediction
    upload = tmp_path / "final.nii.gz"
    nib.save(nib.Nifti1Image(final, prelabel.affine), str(upload))
    requests.put(
        f"{server.url}/datastore/label", params={"image": study, "tag": "final"},
        files={"label": ("final.nii.gz", upload.read_bytes())}, data={"params": json.dumps({"client_id": "slicer-ws-3", "user": "dr_audit"})}, timeout=60,
    ).raise_for_status()  # fmt: skip

    rows = [r for r in requests.get(f"{server.url}/brats/audit", timeout=30).json() if r["case"] == study and r["tag"] == "final"]
    assert len(rows) == 1
    row = rows[0]
    assert (row["user"], row["authenticated"], row["client_id"], row["prelabel_model_version"]) == ("dr_audit", False, "slicer-ws-3", served)
    assert served == "v0", "the first training of this server made version v0"
    before = np.asarray(prelabel.dataobj)
    for region, values in {"tc": (1, 3), "wt": (1, 2, 3), "et": (3,)}.items():
        assert row[f"dice_{region}"] == pytest.approx(_dice(np.isin(before, values), np.isin(final, values)), abs=1e-3), region
    expected = brats_scores(before, final, prelabel.header.get_zooms()[:3], BRATS_2023)
    for region in ("tc", "wt", "et"):
        for score in ("hd95", "lesion_dice", "lesion_hd95"):
            assert row[f"{score}_{region}"] == pytest.approx(expected[region][score], abs=1e-3), (score, region)
    csv_text = requests.get(f"{server.url}/brats/audit", params={"format": "csv"}, timeout=30).text
    header, *lines = csv_text.strip().splitlines()
    assert header.startswith("case,tag,saved_at,user,authenticated,claimed_user,client_id") and any(line.startswith(f"{study},final,") and "dr_audit" in line for line in lines)


def test_bad_label_is_refused_with_reason_and_stored_label_is_untouched(client, server, studies, tmp_path):
    before = requests.get(f"{server.url}/datastore/label", params={"label": LABELLED, "tag": "final"}, timeout=30).content
    truth = nib.load(str(studies / LABELLED / f"{LABELLED}-seg.nii.gz"))
    upload = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(truth.dataobj)[:, :, :-2], truth.affine), str(upload))
    with pytest.raises(MONAILabelClientException) as error:
        client.save_label(LABELLED, str(upload), tag="final")
    assert "Status: 422" in error.value.msg and "not on the study's grid" in error.value.msg
    after = requests.get(f"{server.url}/datastore/label", params={"label": LABELLED, "tag": "final"}, timeout=30).content
    assert after == before


def test_unknown_study_is_a_clear_404(server):
    answer = requests.post(f"{server.url}/infer/segmentation", params={"image": "no-such-study"}, timeout=60)
    assert answer.status_code in (404, 422) and "no-such-study" in answer.text


def test_a_path_as_a_label_id_is_refused_and_reads_nothing(server):
    """What the route answers is the domain error's status and message (mapped in one place)."""
    answer = requests.get(f"{server.url}/datastore/label/info", params={"label": "../../model/serving", "tag": "final"}, timeout=30)
    assert answer.status_code == 422 and "not a valid study id" in answer.json()["detail"]


def test_several_server_processes_are_refused_with_the_reason(studies, tmp_path):
    """--workers 2 would make two writers of the same labels: the server does not start, and says why."""
    import subprocess
    import sys

    from scripts.local_server import APP_DIR

    command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR), "--studies", str(studies),
               "--conf", "profile", "cpu", "--conf", "workspace", str(tmp_path / "ws"), "--port", "0", "--workers", "2"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)  # returns: nothing keeps serving
    assert "BraTS Label runs as one server process (--workers 2" in done.stdout + done.stderr
