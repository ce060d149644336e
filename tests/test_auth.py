"""With authentication on: every route asks for its least role, tokens are verified as any OpenID provider's,
and a label is recorded under the user the identity provider vouched for.

Keycloak cannot run on this machine; ``tests/oidc_issuer.py`` publishes an OpenID discovery document and a
JWKS with a key made at test time, and signs tokens with it. The server verifies them with the code that
verifies Keycloak's (discovery, JWKS, audience, expiry).
"""

from __future__ import annotations

import json

import jwt
import nibabel as nib
import numpy as np
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from lib.endpoints.routes import ROUTE_ROLES, Disabled
from tests.conftest import put_final_label
from tests.oidc_issuer import LocalIssuer

pytestmark = pytest.mark.server

ANNOTATOR = ["monailabel-annotator"]
VIEWER_ONLY = ["monailabel-user"]
STUDY = "BraTS-GLI-00004-000"
CALLERS = ("anonymous", "user", "annotator", "reviewer", "admin")
PROBE = "probe-0"  # a value for path parameters that names nothing


@pytest.fixture(scope="module")
def issuer():
    local = LocalIssuer()
    yield local
    local.stop()


@pytest.fixture(scope="module")
def realm(issuer):
    """The issuer's URL and a function that signs tokens for a user and roles."""
    return issuer.url, issuer.token


@pytest.fixture(scope="module")
def server(issuer, server_factory, studies_2mm, tmp_path_factory):
    import shutil

    studies = tmp_path_factory.mktemp("auth") / "studies"
    shutil.copytree(studies_2mm, studies, ignore=shutil.ignore_patterns(".brats_label"))
    return server_factory(studies, env=issuer.env, headers=issuer.headers("admin", "admin"), retrain_after_labels=0)


def _put_label(server, tmp_path, headers: dict, params: dict) -> requests.Response:
    reference = nib.load(str(server.studies / STUDY / f"{STUDY}-t1c.nii.gz"))
    label = np.zeros(reference.shape, np.uint8)
    label[40:50, 40:50, 30:36] = 2
    return put_final_label(server, STUDY, label, reference.affine, tmp_path, params, headers)


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


@pytest.mark.parametrize(
    "claims, reason",
    [
        ({"expires_in_s": -120}, "expired"),
        ({"audience": "another-app"}, "audience"),
        ({"issuer": "http://127.0.0.1:1/realms/other"}, "issuer"),
        ({"key": rsa.generate_private_key(public_exponent=65537, key_size=2048)}, "signature"),
    ],
    ids=["expired", "other-audience", "other-issuer", "other-key"],
)
def test_tokens_that_are_not_the_issuers_for_this_server_are_refused(server, issuer, claims, reason):
    token = issuer.token("dr_auth", ["monailabel-admin"], **claims)
    answer = requests.get(f"{server.url}/info/", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert answer.status_code == 401 and reason in answer.text.lower(), answer.text


def test_an_unsigned_token_is_refused(server):
    unsigned = jwt.encode({"preferred_username": "x", "realm_access": {"roles": ["monailabel-admin"]}, "aud": "monailabel-app"}, None, algorithm="none")
    assert requests.get(f"{server.url}/info/", headers={"Authorization": f"Bearer {unsigned}"}, timeout=30).status_code == 401


def _fill(method: str, path: str) -> str:
    """A concrete URL for a route template: path parameters name nothing that exists."""
    import re

    dicomweb_read = method == "GET" and ("/qido/" in path or "/wado/" in path)
    filled = path.replace("{path:path}", "studies" if dicomweb_read else "index.html" if path.startswith("/ohif") else PROBE)
    return re.sub(r"\{[^}]+\}", PROBE, filled)


def _call(server, method: str, path: str, headers: dict) -> requests.Response:
    # A body that is not JSON: a route the guard lets through then refuses it (422) before doing anything.
    body = {"data": b"{not json", "headers": {**headers, "Content-Type": "application/json"}} if method in ("POST", "PUT") else {"headers": headers}
    return requests.request(method, server.url + _fill(method, path), timeout=60, **body)


def test_every_route_answers_each_role_as_the_route_table_says(server, issuer):
    """The matrix: every route of the table against no token and each of the four roles."""
    refused_wrongly, let_through_wrongly = [], []
    for method, path, access in ROUTE_ROLES:
        if method == "DELETE" and path in ("/train/", "/scoring/") or path == "/datastore/dataset":
            continue  # below: they act without a body to refuse
        for rank, caller in enumerate(CALLERS):
            headers = {} if caller == "anonymous" else issuer.headers(f"dr_{caller}", caller)
            answer = _call(server, method, path, headers)
            if isinstance(access, Disabled):
                allowed = False
            else:
                allowed = rank >= int(access)
            guard_refused = answer.status_code in (401, 403) and not path.startswith("/auth/")
            if allowed and guard_refused:
                refused_wrongly.append((method, path, caller, answer.status_code, answer.text[:120]))
            if not allowed and not guard_refused:
                let_through_wrongly.append((method, path, caller, answer.status_code, answer.text[:120]))
            if not allowed and caller == "anonymous" and not isinstance(access, Disabled):
                assert answer.status_code == 401 and answer.headers.get("WWW-Authenticate") == "Bearer", (method, path)
    assert not refused_wrongly, refused_wrongly
    assert not let_through_wrongly, let_through_wrongly


@pytest.mark.parametrize("method, path", [("DELETE", "/train/"), ("DELETE", "/scoring/"), ("GET", "/datastore/dataset")])
def test_admin_routes_that_act_at_once_refuse_everyone_below_admin(server, issuer, method, path):
    for caller in ("user", "annotator", "reviewer"):
        answer = requests.request(method, server.url + path, headers=issuer.headers(f"dr_{caller}", caller), timeout=30)
        assert answer.status_code == 403 and "monailabel-admin" in answer.text, (caller, answer.text)
    assert requests.request(method, server.url + path, timeout=30).status_code == 401


def test_next_sample_hands_out_to_the_signed_in_user_whatever_client_id_is_sent(server, issuer):
    headers = issuer.headers("dr_handout", "annotator")
    first = requests.post(f"{server.url}/activelearning/random", json={"client_id": "made-up-1"}, headers=headers, timeout=60).json()
    second = requests.post(f"{server.url}/activelearning/random", json={"client_id": "made-up-2"}, headers=headers, timeout=60).json()
    assert first["client_id"] == second["client_id"] == "dr_handout"
    holders = json.loads((server.studies / ".brats_label" / "handouts.json").read_text())
    held = [case for case, h in holders.items() if h["client"] == "dr_handout"]
    assert held == [second["id"]], f"one study per user at a time: {holders}"
    assert not any(h["client"].startswith("made-up") for h in holders.values())


def test_the_readme_shows_the_route_table_the_server_enforces():
    from scripts.route_table import markdown
    from tests.conftest import REPO

    assert markdown() in (REPO / "README.md").read_text(), "run: .venv/bin/python scripts/route_table.py and paste it into the README"
