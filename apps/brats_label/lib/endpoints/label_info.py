"""``PUT /datastore/label/info`` and ``PUT /datastore/updatelabelinfo``, where a review can arrive.

MONAI Label's Slicer Reviewer module approves or flags a label by sending ``{"segmentationMeta": {"status", "approvedBy",
"level", "comment"}}`` to ``/datastore/updatelabelinfo``, a route open to annotators: as it stands an annotator could
mark their own label approved. Here a ``segmentationMeta`` is a review (``labels/review.py``): only a reviewer may
send one, the reviewer is the signed-in user (``approvedBy`` in the body is kept only as ``claimed_by`` when
authentication is off and there is no sign-in), and nobody approves their own label. Other fields are the client's
notes, as before; fields the server computes are never taken from the body.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict

from fastapi import Depends, FastAPI, Form
from fastapi.concurrency import run_in_threadpool
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User

from ..errors import InvalidInput
from ..labels.review import REVIEW_FIELDS, SLICER_META, ReviewRefused, decision_from_slicer
from ..studies.study_datastore import FINAL
from .routes import add_route_in_front


def is_reviewer(user: User) -> bool:
    return settings.MONAI_LABEL_AUTH_ROLE_REVIEWER in (user.roles or [])


def _fields(text: str, form_name: str) -> Dict[str, Any]:
    try:
        fields = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{form_name} is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(fields, dict):
        raise InvalidInput(f"{form_name} must be a JSON object, not {type(fields).__name__}")
    return fields


def update_label_info(datastore: Any, label: str, tag: str, fields: Dict[str, Any], user: User) -> Dict[str, Any]:
    """A review (``segmentationMeta``) by a reviewer, then the client's other notes; the label's info after both."""
    meta = fields.get(SLICER_META)
    if meta is not None:
        if not isinstance(meta, dict):
            raise InvalidInput(f"{SLICER_META} must be a JSON object with status, level and comment")
        if not is_reviewer(user):
            raise ReviewRefused(f"only a reviewer approves or flags a label ({SLICER_META}); {user.username} is not one")
        if tag != FINAL:
            raise InvalidInput(f"only final labels are reviewed, not '{str(tag)[:40]}'")
        datastore.review_label(label, decision_from_slicer(meta), user.username)
        claimed = str(meta.get("approvedBy") or "")
        if not settings.MONAI_LABEL_AUTH_ENABLE and claimed and claimed != user.username:
            datastore.update_label_info(label, tag, {"claimed_by": claimed[:200]})
    notes = {key: value for key, value in fields.items() if key not in REVIEW_FIELDS}
    if notes:
        datastore.update_label_info(label, tag, notes)
    return datastore.get_label_info(label, tag)


def install_label_info_routes(app: FastAPI, datastore: Callable[[], Any]) -> None:
    """Ours answer in place of MONAI Label's two label-info routes (same URLs, form fields and answers)."""

    async def put_label_info(label: str, tag: str, info: str = Form("{}"), user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
        return await run_in_threadpool(update_label_info, datastore(), label, tag, _fields(info, "info"), user)

    async def put_update_label_info(label: str, tag: str, params: str = Form("{}"), user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
        return await run_in_threadpool(update_label_info, datastore(), label, tag, _fields(params, "params"), user)

    add_route_in_front(app, "/datastore/label/info", put_label_info, ["PUT"], "Update label info (a review only from a reviewer)")
    add_route_in_front(app, "/datastore/updatelabelinfo", put_update_label_info, ["PUT"], "Update label info (the Slicer Reviewer module's route)", include_in_schema=False)
