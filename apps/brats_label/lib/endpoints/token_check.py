"""Verify bearer tokens against any OpenID provider: its discovery document, its JWKS, audience and expiry.

MONAI Label 0.8.5 (``monailabel.endpoints.user.auth.from_token``) reads Keycloak's realm page for one
public key, checks no audience, and calls ``jwt.decode`` without ``algorithms`` (which PyJWT 2 refuses:
every request answered 401). Here the issuer's standard ``/.well-known/openid-configuration`` names its
``jwks_uri``; the token's ``kid`` picks the key (keys are read again when the provider rotates them); the
signature algorithm is one we name, never the token's own header; issuer, audience and expiry are
required. So Keycloak, or any OpenID provider, works unchanged.

Roles are MONAI Label's four (user < annotator < reviewer < admin); a user holding one holds those below
it too, so MONAI Label's own per-route checks (exact membership) agree with ``routes.ROUTE_ROLES``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import jwt
import requests
from monailabel.config import settings
from monailabel.endpoints.user import auth

logger = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
DISCOVERY_TIMEOUT_S = 10
LEEWAY_S = 30  # clock difference tolerated between the provider and this server
JWKS_REFRESH_MIN_S = 10  # an unknown key id reads the JWKS again, at most this often


class TokenRefused(jwt.InvalidTokenError):  # MONAI Label's get_current_user answers these with 401
    """The bearer token is missing, malformed, expired, for another audience or not signed by the issuer."""


def role_names() -> List[str]:
    """MONAI Label's roles from least to most: each includes those before it."""
    return [settings.MONAI_LABEL_AUTH_ROLE_USER, settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR, settings.MONAI_LABEL_AUTH_ROLE_REVIEWER, settings.MONAI_LABEL_AUTH_ROLE_ADMIN]


def with_lower_roles(roles: Sequence[str]) -> List[str]:
    """The token's roles and every role below the highest of them."""
    order = role_names()
    ranks = [order.index(r) for r in roles if r in order]
    implied = order[: max(ranks) + 1] if ranks else []
    return sorted(set(roles) | set(implied))


def _claim(payload: Dict[str, Any], path: str) -> Any:
    """A claim by MONAI Label's ``#``-separated path, e.g. ``realm_access#roles``."""
    value: Any = payload
    for key in path.split("#"):
        value = value.get(key) if isinstance(value, dict) else None
    return value


@dataclass
class TokenVerifier:
    issuer: str
    audience: str
    algorithms: Sequence[str]

    def __post_init__(self) -> None:
        self.issuer = self.issuer.rstrip("/")
        self._jwks_uri: Optional[str] = None
        self._keys: Dict[str, Any] = {}
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def _get(self, url: str, what: str) -> Dict[str, Any]:
        """Through requests, so a deployment's own CA (REQUESTS_CA_BUNDLE) is trusted as for every other call."""
        try:
            answer = requests.get(url, timeout=DISCOVERY_TIMEOUT_S)
            answer.raise_for_status()
            return answer.json()
        except (requests.RequestException, ValueError) as e:
            raise TokenRefused(f"the identity provider {self.issuer} did not answer its {what} ({type(e).__name__})") from None

    def _key(self, kid: str) -> Any:
        """The issuer's signing key named by the token; keys are read again (at most every few seconds) when a
        token names one not seen yet, which is how providers rotate them."""
        with self._lock:
            if self._jwks_uri is None:
                discovery = self._get(self.issuer + DISCOVERY_PATH, "OpenID discovery")
                if str(discovery.get("issuer", "")).rstrip("/") != self.issuer:
                    raise TokenRefused(f"the identity provider calls itself {discovery.get('issuer')!r}, not {self.issuer!r}: check MONAI_LABEL_AUTH_REALM_URI")
                self._jwks_uri = str(discovery["jwks_uri"])
            if kid not in self._keys and time.monotonic() - self._fetched_at > JWKS_REFRESH_MIN_S:
                self._fetched_at = time.monotonic()
                keys = jwt.PyJWKSet.from_dict(self._get(self._jwks_uri, "signing keys (JWKS)")).keys
                self._keys = {str(k.key_id): k.key for k in keys if k.public_key_use in (None, "sig")}
            if kid not in self._keys:
                raise TokenRefused(f"the token's signing key {kid!r} is not one of the identity provider's")
            return self._keys[kid]

    def claims(self, token: str) -> Dict[str, Any]:
        try:
            key = self._key(str(jwt.get_unverified_header(token).get("kid")))  # "None": a key published without an id
            return jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as e:
            raise TokenRefused(f"the bearer token was refused: {e}") from None

    def user(self, token: str) -> auth.User:
        payload = self.claims(token)
        roles = _claim(payload, settings.MONAI_LABEL_AUTH_TOKEN_ROLES) or []
        return auth.User(
            username=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or payload.get("sub"),
            email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
            name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
            roles=with_lower_roles([str(r) for r in roles] if isinstance(roles, list) else []),
        )


def install_token_check(verifier: TokenVerifier) -> None:
    """MONAI Label's own routes verify tokens the same way (``get_current_user`` looks ``from_token`` up at each request)."""

    def from_token(token: str) -> auth.User:
        if not settings.MONAI_LABEL_AUTH_ENABLE:
            return auth.DEFAULT_USER
        return verifier.user(token)

    auth.from_token = from_token
