"""``PUT /datastore/label`` that keeps the name of whoever saved the label.

MONAI Label 0.8.5's route authenticates the user and then drops the name: the datastore only sees
what the client wrote in ``params``, which anyone can set. This route replaces it (same path, form
fields and answer). With authentication on, the label is recorded under the authenticated user and a
different name in ``params`` is kept only as ``claimed_user``; with it off, the client's name is all
there is, and the record says it was not authenticated. Whether the saver is a reviewer (who may adjudicate a study
read twice) is likewise set here from the token, never taken from ``params``.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any, Dict

from fastapi import BackgroundTasks, Depends, FastAPI, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from monailabel.config import settings
from monailabel.endpoints.datastore import save_label
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag

from ..labels.double_reading import SAVED_BY_REVIEWER
from .label_info import is_reviewer
from .routes import add_route_in_front

SAVE_LABEL_PATH = "/datastore/label"


def label_params(params: str, user: User, authenticated: bool) -> Dict[str, Any]:
    """The client's params with the user fields set by the rules above."""
    try:
        fields = json.loads(params) if params else {}
    except json.JSONDecodeError as e:
        raise HTTPException(422, f'params is not valid JSON ({e}); send a JSON object such as {{"user": "your name"}}') from e
    if not isinstance(fields, dict):
        raise HTTPException(422, f"params must be a JSON object, not {type(fields).__name__}")
    if authenticated:
        claimed = fields.get("user")
        fields["user"] = user.username
        if claimed and claimed != user.username:
            fields["claimed_user"] = claimed
    fields["authenticated"] = authenticated
    # whether this save may adjudicate a study's two readings (labels/double_reading.py); with authentication off
    # nobody's role can be told, and a study waiting for adjudication is handed to no annotator
    fields[SAVED_BY_REVIEWER] = is_reviewer(user) if authenticated else True
    return fields


_case_turns: Dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # per study: saves commit in arrival order


async def save_label_as_user(
    background_tasks: BackgroundTasks,
    image: str,
    params: str = Form("{}"),
    tag: str = DefaultLabelTag.FINAL.value,
    label: UploadFile = File(...),
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
):
    # The commit (and the SEG sent to the archive) runs in the thread pool, off the event loop; saves of one
    # study wait their turn in arrival order (asyncio's lock is first come, first served).
    fields = label_params(params, user, settings.MONAI_LABEL_AUTH_ENABLE)
    async with _case_turns[image]:
        return await run_in_threadpool(save_label, background_tasks, image, json.dumps(fields), tag, label, user.username)


def install_save_label_route(app: FastAPI) -> None:
    """Ours answers in place of MONAI Label's route (same URL for OHIF, Slicer and scripts)."""
    add_route_in_front(app, SAVE_LABEL_PATH, save_label_as_user, ["PUT"], "Save a finished label, recording who saved it")
