"""The OHIF viewer served by the server, in a real Chromium, on a study from a real Orthanc.

An annotator opens the MONAI Label mode on a study: OHIF lists the four MR series (and the imported
ground-truth SEG) through the server's DICOMweb proxy, renders an image, the MONAI Label panel connects
to the server; its Next Sample opens the unlabelled study, Auto-Segmentation loads the server's result as a
segmentation with our segment names, the annotator paints a correction with OHIF's brush and presses
Submit label: the label is stored, audited, counted for retraining and in Orthanc as a SEG. Screenshots
are kept in test-artifacts/ (the README's user guide shows them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from lib.config import BRATS_2023, FOREGROUND_LABELS, IMPORT_SERIES, PROFILES
from lib.dicom.seg import seg_to_label
from lib.model.network import build_network
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
    server = server_factory(orthanc.dicomweb, env=orthanc.credentials_env, workspace=workspace, pretrained_weights=weights, dicomweb_refresh_s=0)
    server.workspace = workspace  # where the server keeps each case's pre-label
    return server


def _annotate_in_ohif(server, study: str, out: Path) -> dict:
    run = subprocess.run(["node", "ohif_annotation_loop.mjs", server.url, study, str(out)], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_an_annotator_opens_segments_corrects_and_submits_in_ohif(server, orthanc, tmp_path):
    import requests

    listing = requests.get(f"{server.url}/datastore/?output=all", timeout=60).json()["objects"]
    labelled = [k for k, v in listing.items() if "final" in v["labels"]]
    unlabelled = [k for k, v in listing.items() if "final" not in v["labels"]]
    counted_before = requests.get(f"{server.url}/brats/training", timeout=60).json()["retrain"]["new_labels"]
    result = _annotate_in_ohif(server, labelled[0], tmp_path)  # the labelled study has a ground-truth SEG
    assert result["errors"] == []

    mr = sorted(s["description"] for s in result["series"] if s["modality"] == "MR")
    assert mr == sorted(name for _, name in IMPORT_SERIES.values()), "all four sequences are listed"
    assert [s["modality"] for s in result["series"]].count("SEG") == 1, "the label is listed as a DICOM SEG"
    assert result["connected"] and result["info"]["models"]["segmentation"]["labels"] == {"necrotic_core": 1, "edema": 2, "enhancing_tumour": 3}
    assert result["panel"], "the MONAI Label panel lists Active Learning and Auto-Segmentation once connected"
    viewport = np.asarray(Image.open(tmp_path / "ohif_viewport.png").convert("L"))
    assert (viewport > BRAIN_GREY).mean() > MIN_IMAGE_FRACTION, "the viewport shows an image, not a black square"

    # Next Sample names the unlabelled study by its DICOM ids, and its OK opens it
    assert result["nextSample"]["id"] == unlabelled[0] and result["nextSample"]["StudyInstanceUID"] == unlabelled[0]
    assert result["opened"] == unlabelled[0]

    # Auto-Segmentation > Run: OHIF asks for the series on screen; the server resolves it to the study
    series = {s.series_uid for s in orthanc.archive().series(unlabelled[0])}
    assert result["infer"]["status"] == 200 and result["infer"]["image"] in series
    # OHIF's panel names its segments after the first model it lists, interactive ones first: the refinement model
    # (type deepedit), whose labels include background for its clicks
    assert [sorted(labels) for labels in result["segmentations"]] == [["background", "edema", "enhancing_tumour", "necrotic_core"]], "the result is loaded, segments named"

    # what OHIF draws is the server's pre-label, slice by slice (not flipped, not shifted)
    prelabel = np.asarray(nib.load(str(server.workspace / "prelabels" / f"{unlabelled[0]}.nii.gz")).dataobj)
    for name, value in FOREGROUND_LABELS.items():
        assert result["overlay"]["perSlice"][name] == (prelabel == value).sum(axis=(0, 1)).tolist(), f"{name} drawn where the model put it"

    # Submit label: the corrected segmentation is the study's final label, audited, counted, and a SEG in Orthanc
    assert result["submit"]["status"] == 200 and result["submit"]["outcome"]["state"] == "saved", result["submit"]
    label = requests.get(f"{server.url}/datastore/?output=all", timeout=60).json()["objects"][unlabelled[0]]["labels"]["final"]["info"]
    assert label["client_id"] == "OHIF" and label["archive"] == "stored"
    downloaded = tmp_path / "final.nii.gz"
    downloaded.write_bytes(requests.get(f"{server.url}/datastore/label", params={"label": unlabelled[0], "tag": "final"}, timeout=60).content)
    final = np.asarray(nib.load(str(downloaded)).dataobj)
    changed = final != prelabel
    assert changed.any() and (final[changed] == FOREGROUND_LABELS[result["corrected"]["segment"]]).all(), "the pre-label, plus the brush stroke, nothing else"
    audit = [r for r in requests.get(f"{server.url}/brats/audit", timeout=60).json() if r["case"] == unlabelled[0]]
    assert len(audit) == 1 and audit[0]["prelabel_model_version"] and audit[0]["client_id"] == "OHIF"
    assert min(audit[0]["dice_tc"], audit[0]["dice_wt"], audit[0]["dice_et"]) < 1.0, "the audit sees the correction"
    archive = orthanc.archive()
    seg_series = [s for s in archive.series(unlabelled[0]) if s.modality == "SEG"]
    assert label["seg_sop_instance_uid"] in [sop for s in seg_series for sop in archive.instance_uids(unlabelled[0], s.series_uid)]
    seg = archive.retrieve_instance(unlabelled[0], label["seg_series_uid"], label["seg_sop_instance_uid"])
    reference = nib.load(str(downloaded))
    assert np.array_equal(seg_to_label(seg, reference.affine, reference.shape, BRATS_2023), final), "the SEG in Orthanc is the submitted label"
    retrain = requests.get(f"{server.url}/brats/training", timeout=60).json()["retrain"]
    assert retrain["new_labels"] == counted_before + 1 and not retrain["runs"], "the label counts towards retraining (5 needed)"

    for picture in ("ohif_monai_label_mode.png", "ohif_viewport.png", "ohif_after_autosegmentation.png", "ohif_label_submitted.png"):
        shutil.copyfile(tmp_path / picture, ARTIFACTS / picture)


def _save_drawn_label(server, study: str, tmp_path: Path, user: str) -> None:
    """A small edema and enhancing block at the study's centre saved as its final label, through MONAI Label's client."""
    import requests
    from monailabel.client import MONAILabelClient

    client = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="pytest")
    reference = tmp_path / "study.nii"  # the stacked volume, uncompressed
    reference.write_bytes(requests.get(f"{server.url}/datastore/image", params={"image": study}, timeout=120).content)
    image = nib.load(str(reference))
    drawn = np.zeros(image.shape[:3], np.uint8)
    centre = [n // 2 for n in drawn.shape]
    drawn[centre[0] - 6 : centre[0] + 6, centre[1] - 6 : centre[1] + 6, centre[2] - 3 : centre[2] + 3] = 2
    drawn[centre[0] - 2 : centre[0] + 2, centre[1] - 2 : centre[1] + 2, centre[2] - 1 : centre[2] + 1] = 3
    upload = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(drawn, image.affine), str(upload))
    client.save_label(study, str(upload), tag="final", params={"user": user})


def test_the_measurement_report_of_a_saved_label_is_listed_under_its_study(server, orthanc, tmp_path):
    """A final label saved (here through MONAI Label's client) goes to Orthanc as a SEG and a TID 1500 report of its
    volumes; OHIF's viewer lists both under the study, beside the four sequences."""
    import requests

    from lib.dicom.measurement_report import SERIES_DESCRIPTION

    listing = requests.get(f"{server.url}/datastore/?output=all", timeout=60).json()["objects"]
    study = sorted(listing)[-1]
    _save_drawn_label(server, study, tmp_path, "dr_report")
    info = requests.get(f"{server.url}/datastore/?output=all", timeout=60).json()["objects"][study]["labels"]["final"]["info"]
    assert info["archive"] == "stored" and info["sr_sop_instance_uid"]

    run = subprocess.run(["node", "ohif_study_series.mjs", server.url, study, str(tmp_path)], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["errors"] == [], result["errors"]
    reports = [s for s in result["series"] if s["modality"] == "SR"]  # one per label version sent: the archive keeps them all
    assert {s["description"] for s in reports} == {SERIES_DESCRIPTION} and info["sr_series_uid"] in [s["uid"] for s in reports], result["series"]
    assert SERIES_DESCRIPTION in result["text"], "the study browser shows the report by its description"
    assert sum(s["modality"] == "MR" for s in result["series"]) == 4 and any(s["modality"] == "SEG" for s in result["series"])
    shutil.copyfile(tmp_path / "ohif_measurement_report_listed.png", ARTIFACTS / "ohif_measurement_report_listed.png")


def test_a_label_sent_back_for_changes_opens_with_the_reviewers_comment(server, tmp_path):
    """A reviewer asks for changes; the annotator's Next Sample in OHIF hands that study back before any new one, and
    the comment is on screen when it opens."""
    import requests

    listing = requests.get(f"{server.url}/datastore/?output=all", timeout=60).json()["objects"]
    returned, elsewhere = sorted(listing)[0], sorted(listing)[-1]
    _save_drawn_label(server, returned, tmp_path, "dr_ann")
    comment = "The enhancing rim is missed on the posterior slices"
    asked = requests.post(f"{server.url}/brats/review/{returned}", json={"decision": "changes requested", "comment": comment, "level": "medium"}, timeout=30)
    assert asked.status_code == 200, asked.text

    run = subprocess.run(["node", "ohif_returned_label.mjs", server.url, elsewhere, str(tmp_path)], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["errors"] == [], result["errors"]
    assert result["nextSample"]["id"] == returned and result["nextSample"]["picked_by"] == "returned for changes"
    assert result["opened"] == returned
    assert result["review"]["returned"]["comment"] == comment
    assert comment in result["notice"] and "Changes requested (medium)" in result["notice"], "the comment is on screen"
    shutil.copyfile(tmp_path / "ohif_returned_label.png", ARTIFACTS / "ohif_returned_label.png")


def test_study_list_shows_the_archive_studies(server, tmp_path):
    run = subprocess.run(["node", "ohif_study_list.mjs", server.url, str(tmp_path)], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["errors"] == [] and result["rows"] == 2
    assert "BraTS-GLI-00000-000" in result["text"] and "BraTS-GLI-00001-000" in result["text"], "patients listed by name"
    shutil.copyfile(tmp_path / "ohif_study_list.png", ARTIFACTS / "ohif_study_list.png")


def test_the_study_list_search_reaches_the_archive(server, tmp_path):
    """OHIF's study list search is a QIDO-RS query (PatientID here): the proxy forwards it, so one study shows."""
    run = subprocess.run(["node", "ohif_study_list.mjs", server.url, str(tmp_path), "mrn=BraTS-GLI-00001-000"], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["errors"] == [] and result["rows"] == 1, result["rows"]
    assert "BraTS-GLI-00001-000" in result["text"] and "BraTS-GLI-00000-000" not in result["text"]


@pytest.fixture(scope="module")
def auth_server(orthanc, server, server_factory, tmp_path_factory):
    """A second server on the same archive with authentication on (tokens from a local OpenID issuer)."""
    from tests.oidc_issuer import LocalIssuer

    issuer = LocalIssuer()
    weights = tmp_path_factory.mktemp("auth_weights") / "untrained.pt"
    torch.save(build_network(PROFILES["cpu"]).state_dict(), weights)
    env = {**orthanc.credentials_env, **issuer.env}
    started = server_factory(
        orthanc.dicomweb,
        env=env,
        headers=issuer.headers("admin", "admin"),
        workspace=tmp_path_factory.mktemp("ohif_auth_workspace"),
        pretrained_weights=weights,
        dicomweb_refresh_s=0,
    )
    yield started, issuer
    issuer.stop()


def test_with_authentication_on_the_viewer_sends_the_users_token_and_the_label_is_theirs(auth_server, tmp_path):
    import requests

    server, issuer = auth_server
    admin = issuer.headers("admin", "admin")
    listing = requests.get(f"{server.url}/datastore/?output=all", headers=admin, timeout=60).json()["objects"]
    study = sorted(listing)[0]
    token = issuer.token("dr_ohif", ["monailabel-annotator"])
    run = subprocess.run(["node", "ohif_annotation_loop.mjs", server.url, study, str(tmp_path), token], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["errors"] == [], result["errors"]
    assert result["requestsWithoutToken"] == 0, "every request to the server (DICOMweb, the MONAI Label panel, Submit label) carries the token"
    assert result["review"] is not None, "the check for a label sent back waits for the token instead of being skipped"
    assert result["connected"] and result["infer"]["status"] == 200
    assert result["submit"]["status"] == 200 and result["submit"]["outcome"]["state"] == "saved", result["submit"]
    label = requests.get(f"{server.url}/datastore/label/info", params={"label": study, "tag": "final"}, headers=admin, timeout=60).json()
    assert label["user"] == "dr_ohif" and label["authenticated"] is True and label["client_id"] == "OHIF"


SIGN_IN_AUDIENCE = "https://brats-label.test/api"
SIGN_IN_PASSWORD = "correct horse battery staple"  # the one tests/oidc/sign_in_provider.mjs accepts
ACCESS_TOKEN_TTL_S = 90  # oidc-client-ts renews 60 s before expiry: the renewal comes about 30 s after sign-in


@pytest.fixture(scope="module")
def sign_in_server(orthanc, server, server_factory, tmp_path_factory):
    """A server with authentication on whose OHIF signs in with an OpenID provider (oidc-provider from npm, with a
    login page) by the code flow with PKCE; the provider knows the server's address, so both ports are chosen first."""
    from scripts.local_orthanc import free_port

    provider_dir = REPO / "tests" / "oidc"
    assert (provider_dir / "node_modules" / "oidc-provider").is_dir(), "run: npm install --prefix tests/oidc"
    server_port, provider_port = free_port(), free_port()
    viewer = f"http://127.0.0.1:{server_port}"
    provider = subprocess.Popen(
        ["node", "sign_in_provider.mjs", str(provider_port), SIGN_IN_AUDIENCE, viewer, "brats-ohif", str(ACCESS_TOKEN_TTL_S)],
        cwd=provider_dir,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path_factory.mktemp("sign_in_logs") / "provider.log", "w"),  # its warnings and refusals
        text=True,
    )
    issuer = json.loads(next(line for line in provider.stdout if line.startswith("{")))["issuer"]
    weights = tmp_path_factory.mktemp("sign_in_weights") / "untrained.pt"
    torch.save(build_network(PROFILES["cpu"]).state_dict(), weights)
    conf = {
        "workspace": tmp_path_factory.mktemp("sign_in_workspace"),
        "pretrained_weights": weights,
        "dicomweb_refresh_s": 0,
        "auth_audience": SIGN_IN_AUDIENCE,
        "ohif_oidc_authority": issuer,
        "ohif_oidc_client_id": "brats-ohif",
    }
    env = {**orthanc.credentials_env, "MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": issuer}
    import requests

    token = requests.post(f"{issuer}/token", data={"grant_type": "client_credentials"}, auth=("brats-admin", "secret-admin"), timeout=30).json()["access_token"]
    admin = {"Authorization": f"Bearer {token}"}
    # two studies of its own, unlabelled: the module's other tests have labelled the archive's first ones, and Next
    # Sample needs a study to hand out
    import_studies(make_studies(tmp_path_factory.mktemp("sign_in_studies"), cases=2, labelled=0, seed=43), orthanc.archive(), progress=False)
    started = server_factory(orthanc.dicomweb, env=env, headers=admin, port=server_port, **conf)
    listing = requests.get(f"{started.url}/datastore/?output=all", headers=admin, timeout=60).json()["objects"]
    unlabelled = sorted(study for study, entry in listing.items() if not entry["labels"])
    assert len(unlabelled) >= 2, listing.keys()
    yield started, issuer, unlabelled[0]
    provider.terminate()
    provider.wait(20)


def test_the_viewer_signs_in_with_the_labs_provider_keeps_the_session_renews_the_token_and_signs_out(sign_in_server, tmp_path):
    server, issuer, study = sign_in_server
    run = subprocess.run(
        ["node", "ohif_sign_in.mjs", server.url, issuer, study, str(tmp_path), "dr_annotator", SIGN_IN_PASSWORD],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["errors"] == [], (result["errors"], result["lastUrl"], result["lastText"], result["console"][-5:])
    assert result["signedIn"]["user"] == "dr_annotator" and result["signedIn"]["refreshToken"], result["signedIn"]
    assert "code=" in result["callbackUrl"] and "token" not in result["callbackUrl"], "the code flow: a one-time code in the URL, never a token"
    assert result["urlsWithToken"] == [], "no token in any URL the browser asked for"
    assert result["requests"] > 10 and result["withoutToken"] == [], "every request to the server carries the user's token"
    assert result["nextSample"]["id"] and result["reopenedStudy"] == result["nextSample"]["StudyInstanceUID"]
    assert result["loginFormsAfterReload"] == 0, "Next Sample's reload keeps the session: no login form"
    assert result["renewed"] and result["sentRenewedToken"], "the token is refreshed before it expires, and the renewed one is sent"
    assert result["signedOutToLoginForm"], "signing out ends the session at the provider: the viewer needs the login form again"
    for name in ("ohif_sign_in_provider.png", "ohif_signed_in.png"):
        shutil.copy(tmp_path / name, ARTIFACTS / name)
