"""With authentication on, a label is recorded under the user the identity provider vouched for.

Keycloak (MONAI Label's identity provider) cannot run on this machine, so a small realm endpoint in the
test publishes an RSA public key the way Keycloak does, and tokens are signed with the matching private
key. The server verifies them with MONAI Label's own code, exactly as it would Keycloak's.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import nibabel as nib
import numpy as np
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

pytestmark = pytest.mark.server

ANNOTATOR = ["monailabel-annotator", "monailabel-user"]
VIEWER_ONLY = ["monailabel-user"]
STUDY = "BraTS-GLI-00004-000"


@pytest.fixture(scope="module")
def realm():
    """A realm URL publishing the public key, and a function that signs tokens for a user and roles."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = json.dumps({"realm": "brats", "public_key": base64.b64encode(public).decode()}).encode()

    class Realm(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Realm)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def token(username: str, roles: list) -> str:
        claims = {"preferred_username": username, "name": username, "realm_access": {"roles": roles}, "exp": int(time.time()) + 3600}
        return jwt.encode(claims, key, algorithm="RS256")

    yield f"http://127.0.0.1:{httpd.server_port}/realms/brats", token
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(realm, server_factory, studies_2mm, tmp_path_factory):
    import shutil

    studies = tmp_path_factory.mktemp("auth") / "studies"
    shutil.copytree(studies_2mm, studies, ignore=shutil.ignore_patterns(".brats_label"))
    url, token = realm
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": url}
    admin = {"Authorization": f"Bearer {token('admin', ['monailabel-admin', *ANNOTATOR])}"}
    return server_factory(studies, env=env, headers=admin, retrain_after_labels=0)


def _put_label(server, tmp_path, headers: dict, params: dict) -> requests.Response:
    reference = nib.load(str(server.studies / STUDY / f"{STUDY}-t1c.nii.gz"))
    label = np.zeros(reference.shape, np.uint8)
    label[40:50, 40:50, 30:36] = 2
    path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, reference.affine), str(path))
    with open(path, "rb") as f:
        return requests.put(
            f"{server.url}/datastore/label",
            params={"image": STUDY, "tag": "final"},
            data={"params": json.dumps(params)},
            files={"label": ("label.nii.gz", f)},
            headers=headers,
            timeout=60,
        )


def _final_label_info(server) -> dict:
    listing = requests.get(f"{server.url}/datastore/?output=all", headers=server.headers, timeout=30).json()
    return listing["objects"][STUDY]["labels"].get("final", {}).get("info", {})


def test_saving_needs_a_token_and_the_annotator_role(server, realm, tmp_path):
    _, token = realm
    assert _put_label(server, tmp_path, {}, {"user": "nobody"}).status_code == 401
    viewer = {"Authorization": f"Bearer {token('dr_viewer', VIEWER_ONLY)}"}
    answer = _put_label(server, tmp_path, viewer, {"user": "dr_viewer"})
    assert answer.status_code == 403 and "monailabel-annotator" in answer.text
    assert _final_label_info(server) == {}, "a refused save stores nothing"


def test_the_label_is_recorded_under_the_authenticated_user(server, realm, tmp_path):
    _, token = realm
    headers = {"Authorization": f"Bearer {token('dr_auth', ANNOTATOR)}"}
    answer = _put_label(server, tmp_path, headers, {"user": "someone_else", "client_id": "slicer"})
    assert answer.status_code == 200, answer.text
    info = _final_label_info(server)
    assert info["user"] == "dr_auth" and info["authenticated"] is True and info["claimed_user"] == "someone_else"
    rows = requests.get(f"{server.url}/brats/audit", headers=server.headers, timeout=30).json()
    assert [(r["user"], r["authenticated"], r["client_id"]) for r in rows if r["case"] == STUDY] == [("dr_auth", True, "slicer")]
    csv = requests.get(f"{server.url}/brats/audit", params={"format": "csv"}, headers=server.headers, timeout=30).text
    assert "dr_auth,True,someone_else,slicer" in csv


def test_params_that_are_not_json_are_refused_with_the_reason(server, realm, tmp_path):
    _, token = realm
    headers = {"Authorization": f"Bearer {token('dr_auth', ANNOTATOR)}"}
    reference = nib.load(str(server.studies / STUDY / f"{STUDY}-t1c.nii.gz"))
    path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(reference.shape, np.uint8), reference.affine), str(path))
    with open(path, "rb") as f:
        answer = requests.put(f"{server.url}/datastore/label", params={"image": STUDY}, data={"params": "{user: dr_auth"}, files={"label": f}, headers=headers, timeout=60)
    assert answer.status_code == 422 and "not valid JSON" in answer.text
    assert _final_label_info(server)["user"] == "dr_auth", "the label stored before is untouched"


def test_the_apps_own_endpoints_ask_for_the_same_roles(server, realm):
    _, token = realm
    annotator = {"Authorization": f"Bearer {token('dr_auth', ANNOTATOR)}"}
    assert requests.get(f"{server.url}/brats/audit", timeout=30).status_code == 401
    assert requests.get(f"{server.url}/brats/models", headers=annotator, timeout=30).status_code == 200
    refused = requests.post(f"{server.url}/brats/models/v0/promote", headers=annotator, timeout=30)
    assert refused.status_code == 403 and "monailabel-admin" in refused.text, "only an admin changes the served model"
