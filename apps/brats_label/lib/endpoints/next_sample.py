"""``POST /activelearning/{strategy}`` whose hand-out belongs to the signed-in user.

A strategy hands each client one study at a time (``activelearning.handouts``), keyed by ``client_id``.
MONAI Label's route takes that id from the request body, so with authentication on one person could hold
any number of studies by sending made-up ids. Here, with authentication on, the hand-out is keyed by the
verified user name: one study per user, whatever the body says. With it off, the client's id is all there is.
A label sent back for changes is handed to the user who saved it before any new study; with authentication off to
whoever asks (``returned_to`` is set here, never taken from the body).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from fastapi import Body, Depends, FastAPI
from monailabel.config import settings
from monailabel.endpoints.activelearning import sample
from monailabel.endpoints.user.auth import RBAC, User

from ..activelearning.strategies import RETURNED_TO
from .routes import add_route_in_front


def next_sample_for_user(
    strategy: str,
    params: Optional[Dict[str, Any]] = Body(None),
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
) -> Dict[str, Any]:
    fields = dict(params or {})
    fields[RETURNED_TO] = None
    if settings.MONAI_LABEL_AUTH_ENABLE:
        fields["client_id"] = user.username
        fields[RETURNED_TO] = user.username
    return sample(strategy, fields, user.username)


def install_next_sample_route(app: FastAPI) -> None:
    add_route_in_front(app, "/activelearning/{strategy}", next_sample_for_user, ["POST"], "Next study to annotate, handed out to the asking user")
