"""The team deployment's door: Debian's nginx with a self-signed certificate in front of the server, the
identity provider behind the same door (/idp/), authentication on.

nginx runs with the deployment's own server block (``deploy/nginx/brats-label.conf.template``, rendered by
``deploy/nginx/render.sh`` as the container does), on free loopback ports, as this user. The certificate
is made at test time. The server checks tokens against the issuer's discovery and JWKS through nginx over
TLS, trusting that certificate (``REQUESTS_CA_BUNDLE``), as it does in ``docker-compose.team.yml``.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import ssl
import subprocess
import time
import urllib.request

import nibabel as nib
import numpy as np
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from scripts.local_orthanc import free_port
from scripts.local_server import LocalServer
from tests.conftest import REPO
from tests.oidc_issuer import LocalIssuer

pytestmark = [pytest.mark.server, pytest.mark.skipif(shutil.which("nginx") is None, reason="Debian's nginx is installed by scripts/system_packages.sh")]

HOST = "localhost"
STUDY = "BraTS-GLI-00005-000"
MAX_UPLOAD_MB = 4


def self_signed(folder):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (folder / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    return folder / "server.crt", folder / "server.key"


def start_nginx(folder, https_port: int, server_port: int, idp_port: int, cert, key) -> subprocess.Popen:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/bin",
        "BRATS_LABEL_HOSTNAME": HOST,
        "HTTPS_PORT": f"127.0.0.1:{https_port}",
        "TLS_CERT": str(cert),
        "TLS_KEY": str(key),
        "SERVER_UPSTREAM": f"127.0.0.1:{server_port}",
        "IDP_UPSTREAM": f"127.0.0.1:{idp_port}",
        "MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
    }
    rendered = folder / "brats-label.conf"
    subprocess.run(["sh", str(REPO / "deploy" / "nginx" / "render.sh"), str(REPO / "deploy" / "nginx" / "brats-label.conf.template"), str(rendered)], env=env, check=True)
    temp = {name: folder / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    main = folder / "nginx.conf"
    main.write_text(
        f"worker_processes 1;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log;\nevents {{}}\nhttp {{\n"
        f"  access_log {folder}/access.log;\n" + "".join(f"  {name}_temp_path {path};\n" for name, path in temp.items()) + f"  include {rendered};\n}}\n"
    )
    subprocess.run(["nginx", "-t", "-c", str(main), "-p", str(folder)], check=True, capture_output=True)
    process = subprocess.Popen(["nginx", "-c", str(main), "-p", str(folder), "-g", "daemon off;"], stderr=open(folder / "nginx.out", "w"))
    for _ in range(50):
        try:
            requests.get(f"https://{HOST}:{https_port}/", verify=str(cert), timeout=2)
            return process
        except requests.ConnectionError:
            time.sleep(0.2)
    raise RuntimeError((folder / "error.log").read_text())


@pytest.fixture(scope="module")
def deployment(studies_2mm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(folder)
    https_port, server_port = free_port(), free_port()
    base = f"https://{HOST}:{https_port}"
    issuer = LocalIssuer(public_base=base, path_prefix="/idp")
    nginx = start_nginx(folder, https_port, server_port, issuer.port, cert, key)
    studies = folder / "studies"
    shutil.copytree(studies_2mm, studies, ignore=shutil.ignore_patterns(".brats_label"))
    env = {**issuer.env, "REQUESTS_CA_BUNDLE": str(cert)}
    server = LocalServer(studies, {"profile": "cpu", "retrain_after_labels": 0}, folder / "server.log", env, issuer.headers("admin", "admin"), port=server_port)
    yield base, cert, issuer, server
    server.stop()
    nginx.terminate()
    nginx.wait(20)
    issuer.stop()


def test_the_server_answers_through_tls_with_a_token_and_only_with_one(deployment):
    base, cert, issuer, _ = deployment
    answer = requests.get(f"{base}/info/", headers=issuer.headers("dr_tls", "user"), verify=str(cert), timeout=30)
    assert answer.status_code == 200 and answer.json()["name"] == "BraTS Label"
    assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
    assert requests.get(f"{base}/info/", verify=str(cert), timeout=30).status_code == 401
    discovery = requests.get(f"{base}/idp/realms/brats/.well-known/openid-configuration", verify=str(cert), timeout=30).json()
    assert discovery["issuer"] == issuer.url, "the identity provider answers behind the same door"


def test_the_certificate_is_checked_and_plain_http_is_refused(deployment):
    base, cert, issuer, _ = deployment
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{base}/info/", timeout=30)  # not signed by a CA this client trusts
    plain = requests.get(base.replace("https://", "http://") + "/info/", timeout=30)
    assert plain.status_code == 400 and "HTTPS" in plain.text
    context = ssl.create_default_context(cafile=str(cert))
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, urllib.error.URLError)):
        urllib.request.urlopen(f"{base}/info/", context=context, timeout=30)  # TLS 1.2 at least


def test_an_annotator_saves_a_label_through_tls_under_their_name(deployment):
    base, cert, issuer, server = deployment
    reference = nib.load(str(server.studies / STUDY / f"{STUDY}-t1c.nii.gz"))
    label = np.zeros(reference.shape, np.uint8)
    label[30:40, 30:40, 20:26] = 2
    path = server.studies.parent / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, reference.affine), str(path))
    with open(path, "rb") as f:
        answer = requests.put(
            f"{base}/datastore/label",
            params={"image": STUDY, "tag": "final"},
            data={"params": json.dumps({"user": "someone_else"})},
            files={"label": ("label.nii.gz", f)},
            headers=issuer.headers("dr_tls", "annotator"),
            verify=str(cert),
            timeout=120,
        )
    assert answer.status_code == 200, answer.text
    info = requests.get(f"{base}/datastore/label/info", params={"label": STUDY, "tag": "final"}, headers=issuer.headers("dr_tls", "user"), verify=str(cert), timeout=30).json()
    assert info["user"] == "dr_tls" and info["authenticated"] is True


def test_an_upload_over_the_limit_stops_at_the_door(deployment):
    base, cert, issuer, _ = deployment
    answer = requests.put(
        f"{base}/datastore/label",
        params={"image": STUDY, "tag": "final"},
        files={"label": ("label.nii.gz", b"\0" * ((MAX_UPLOAD_MB + 1) * 2**20))},
        headers=issuer.headers("dr_tls", "annotator"),
        verify=str(cert),
        timeout=60,
    )
    assert answer.status_code == 413
