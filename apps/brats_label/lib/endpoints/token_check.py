"""Make MONAI Label's token check work with PyJWT 2.

MONAI Label 0.8.5 (``monailabel.endpoints.user.auth.from_token``) calls ``jwt.decode`` without
``algorithms``, which PyJWT 2 refuses: with authentication switched on, every request answers 401,
whatever the token. This replaces that one function with the same check, naming the algorithms the
identity provider signs with (never taken from the token's own header, which an attacker controls).
"""

from __future__ import annotations

from typing import Any, Sequence

import jwt
from monailabel.config import settings
from monailabel.endpoints.user import auth


def _claim(payload: dict, path: str):
    """A claim by MONAI Label's ``#``-separated path, e.g. ``realm_access#roles``."""
    value: Any = payload
    for key in path.split("#"):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def install_token_check(algorithms: Sequence[str]) -> None:
    def from_token(token: str) -> auth.User:
        if not settings.MONAI_LABEL_AUTH_ENABLE:
            return auth.DEFAULT_USER
        key = auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
        options = {"verify_signature": True, "verify_aud": False, "verify_exp": True}
        payload = jwt.decode(token, key, algorithms=list(algorithms), options=options)  # type: ignore[arg-type]
        return auth.User(
            username=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME),
            email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
            name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
            roles=_claim(payload, settings.MONAI_LABEL_AUTH_TOKEN_ROLES) or [],
        )

    auth.from_token = from_token  # get_current_user looks it up in the module at each request
