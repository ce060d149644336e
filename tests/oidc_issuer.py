"""A local OpenID issuer for tests: a discovery document and a JWKS, with an RSA key made at test time.

It publishes exactly what any OpenID provider publishes (``/.well-known/openid-configuration`` naming
``issuer`` and ``jwks_uri``), so the server verifies its tokens with the code that verifies Keycloak's.
Tokens carry MONAI Label's claims (``preferred_username``, ``realm_access.roles``), an audience and an expiry.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Sequence

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

AUDIENCE = "monailabel-app"  # MONAI Label's default client id, which the server takes as the audience
ROLES = {
    "user": ["monailabel-user"],
    "annotator": ["monailabel-annotator"],
    "reviewer": ["monailabel-reviewer"],
    "admin": ["monailabel-admin"],
}


class LocalIssuer:
    def __init__(self, public_base: Optional[str] = None, path_prefix: str = "") -> None:
        """``public_base``/``path_prefix``: the issuer as seen through a reverse proxy (https://host:port, "/idp")."""
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        documents = {}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = documents.get(self.path)
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body or b"{}")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_port
        realm = f"{path_prefix}/realms/brats"
        self.url = f"{public_base or f'http://127.0.0.1:{self.port}'}{realm}"
        documents[f"{realm}/.well-known/openid-configuration"] = json.dumps({"issuer": self.url, "jwks_uri": f"{self.url}/jwks"}).encode()
        documents[f"{realm}/jwks"] = json.dumps({"keys": [jwk]}).encode()
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def env(self) -> dict:
        return {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": self.url, "MONAI_LABEL_AUTH_CLIENT_ID": AUDIENCE}

    def token(self, username: str, roles: Sequence[str], audience: str = AUDIENCE, expires_in_s: float = 3600, issuer: Optional[str] = None, key=None) -> str:
        now = int(time.time())
        claims = {
            "iss": issuer or self.url,
            "aud": audience,
            "sub": username,
            "iat": now,
            "exp": now + int(expires_in_s),
            "preferred_username": username,
            "name": username,
            "realm_access": {"roles": list(roles)},
        }
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": self.kid})

    def headers(self, username: str, role: str) -> dict:
        return {"Authorization": f"Bearer {self.token(username, ROLES[role])}"}

    def stop(self) -> None:
        self.httpd.shutdown()
