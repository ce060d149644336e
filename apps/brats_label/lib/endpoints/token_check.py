"""Verify bearer tokens against any OpenID provider: its discovery document, its JWKS, audience and expiry.

MONAI Label 0.8.5 (``monailabel.endpoints.user.auth.from_token``) reads Keycloak's realm page for one
public key, checks no audience, and calls ``jwt.decode`` without ``algorithms`` (which PyJWT 2 refuses:
every request answered 401). Here the issuer's standard ``/.well-known/openid-configuration`` names its
``jwks_uri``; the token's ``kid`` picks the key (keys are re-read when the provider rotates them); the
signature algorithm is one we name, never the token's own header; issuer, audience and expiry are
required. So Keycloak, or any OpenID provider, works unchanged.

Roles are MONAI Label's four (user < annotator < reviewer < admin); a user holding one holds those below
it too, so MONAI Label's own per-route checks (exact membership) agree with ``routes.ROUTE_ROLES``.
"""

from __future__ import annotations

import logging
import threading
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
        self._keys: Optional[jwt.PyJWKClient] = None
        self._lock = threading.Lock()

    def _jwks(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._keys is None:
                try:
                    answer = requests.get(self.issuer + DISCOVERY_PATH, timeout=DISCOVERY_TIMEOUT_S)
                    answer.raise_for_status()
                    discovery = answer.json()
                except (requests.RequestException, ValueError) as e:
                    raise TokenRefused(f"the identity provider {self.issuer} did not answer its OpenID discovery ({type(e).__name__})") from None
                if discovery.get("issuer", "").rstrip("/") != self.issuer:
                    raise TokenRefused(f"the identity provider calls itself {discovery.get('issuer')!r}, not {self.issuer!r}: check MONAI_LABEL_AUTH_REALM_URI")
                self._keys = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=True, lifespan=300)
            return self._keys

    def claims(self, token: str) -> Dict[str, Any]:
        try:
            key = self._jwks().get_signing_key_from_jwt(token)
            return jwt.decode(
                token,
                key.key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud"]},
            )
        except (jwt.PyJWTError, jwt.PyJWKClientError) as e:
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
