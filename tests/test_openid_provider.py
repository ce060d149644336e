"""The server with a real OpenID provider: panva's oidc-provider (OpenID Certified, from npm), not Keycloak.

The provider issues JWT access tokens by the client-credentials grant, signed with a key it makes at start,
for an API audience (an absolute URI, as resource indicators require). The server knows nothing of it but
its issuer URL and the audience: it finds the keys by OpenID discovery and checks signature, issuer,
audience and expiry, so any OpenID provider works, not only Keycloak.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import requests

from scripts.local_orthanc import free_port
from tests.conftest import REPO

pytestmark = pytest.mark.server

PROVIDER_DIR = REPO / "tests" / "oidc"
AUDIENCE = "https://brats-label.test/api"


@pytest.fixture(scope="module")
def provider():
    assert (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir(), "run: npm install --prefix tests/oidc"
    port = free_port()
    process = subprocess.Popen(["node", "provider.mjs", str(port), AUDIENCE], cwd=PROVIDER_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    issuer = json.loads(next(line for line in process.stdout if line.startswith("{")))["issuer"]
    yield issuer
    process.terminate()
    process.wait(20)


def token(issuer: str, role: str) -> str:
    answer = requests.post(f"{issuer}/token", data={"grant_type": "client_credentials"}, auth=(f"brats-{role}", f"secret-{role}"), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


@pytest.fixture(scope="module")
def server(provider, server_factory, studies_2mm, tmp_path_factory):
    studies = tmp_path_factory.mktemp("openid") / "studies"
    shutil.copytree(studies_2mm, studies, ignore=shutil.ignore_patterns(".brats_label"))
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": provider}
    return server_factory(studies, env=env, headers={"Authorization": f"Bearer {token(provider, 'admin')}"}, auth_audience=AUDIENCE, retrain_after_labels=0)


def test_tokens_from_a_real_openid_provider_are_verified_and_roles_enforced(server, provider):
    user = {"Authorization": f"Bearer {token(provider, 'user')}"}
    info = requests.get(f"{server.url}/info/", headers=user, timeout=30)
    assert info.status_code == 200, info.text
    refused = requests.post(f"{server.url}/brats/models/v0/promote", headers=user, timeout=30)
    assert refused.status_code == 403 and "monailabel-admin" in refused.text
    reviewer = {"Authorization": f"Bearer {token(provider, 'reviewer')}"}
    assert requests.get(f"{server.url}/brats/audit", headers=reviewer, timeout=30).status_code == 200
    assert requests.get(f"{server.url}/brats/audit", headers=user, timeout=30).status_code == 403


def test_an_altered_token_of_the_provider_is_refused(server, provider):
    genuine = token(provider, "admin")
    header, payload, signature = genuine.split(".")
    altered = ".".join([header, payload, signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")])
    assert requests.get(f"{server.url}/info/", headers={"Authorization": f"Bearer {altered}"}, timeout=30).status_code == 401
    assert requests.get(f"{server.url}/info/", headers={"Authorization": f"Bearer {genuine}"}, timeout=30).status_code == 200
