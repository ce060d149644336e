"""OHIF's way into the loop: the Submit label button, and DICOM SEGs stored through the server.

``app-config.js`` (OHIF's executable configuration) is served with ``ohif_submit_label.js`` appended: it
adds a Submit label button to the MONAI Label mode's toolbar, which sends the labelmap on screen to
``PUT /datastore/label`` (as NRRD, with the segments' names), the same route 3D Slicer uses; and
``ohif_returned_label.js``: a study whose label a reviewer sent back shows the reviewer's comment when it opens.

OHIF can also STOW a segmentation as DICOM SEG through its data source, i.e. the server's DICOMweb
proxy; that path answers here too. A body of SEG instances is saved as the study's final label through
the datastore, as ``PUT /datastore/label`` would (validated on the study's grid first, stored with history,
audited, counted for retraining); the datastore then stores its own SEG in the archive. A SEG that is not
on the study's grid or names unknown segments is refused with the reason and reaches neither the label
store nor the archive. SEGs made by OHIF's own exporter are refused: in the bundled OHIF
(3.10.0-beta.5) it writes each frame's pixels in the opposite slice order from the frame's position
(found with the browser test: a z-flipped label), which would store a wrong label without anyone
noticing. Anything else sent to STOW is refused: annotators store labels, nothing else, in the archive.
"""

from __future__ import annotations

import json
import logging
import tempfile
from io import BytesIO
from pathlib import Path
from typing import List, Optional, Tuple

import pydicom
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.utils.app import app_instance
from pydicom.errors import InvalidDicomError
from requests_toolbelt.multipart.decoder import ImproperBodyPartContentException, MultipartDecoder, NonMultipartContentTypeException

from ..config import BrowserSignIn
from .ohif_sign_in import sign_in_script
from .routes import add_route_in_front
from .save_label import label_params

logger = logging.getLogger(__name__)

STOW_PATHS = ("/proxy/dicom/wado/studies", "/proxy/dicom/wado/studies/{study}", "/proxy/dicom/stow/studies", "/proxy/dicom/stow/studies/{study}")
APP_CONFIG_PATH = "/ohif/app-config.js"
OHIF_DIR = Path(str(__import__("monailabel").__file__)).parent / "endpoints" / "static" / "ohif"
SUBMIT_SCRIPT = Path(__file__).with_name("ohif_submit_label.js")
RETURNED_SCRIPT = Path(__file__).with_name("ohif_returned_label.js")  # a returned label's comment, shown on opening
OHIF_CLIENT_ID = "OHIF"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def stow_instances(body: bytes, content_type: str) -> List[Tuple[bytes, pydicom.Dataset]]:
    """The Part 10 files of a STOW-RS body and their headers; [] if we cannot read it."""
    try:
        parts = [part.content for part in MultipartDecoder(body, content_type).parts]
        return [(part, pydicom.dcmread(BytesIO(part), stop_before_pixels=True)) for part in parts]
    except (NonMultipartContentTypeException, ImproperBodyPartContentException, InvalidDicomError, ValueError, EOFError):
        return []


def client_of(request: Request) -> str:
    """OHIF's pages are under /ohif/ and the browser names the page; other clients by their User-Agent."""
    if "/ohif/" in request.headers.get("referer", ""):
        return OHIF_CLIENT_ID
    return request.headers.get("user-agent", "") or "DICOMweb STOW"


def save_seg_as_label(part10: bytes, seg: pydicom.Dataset, user: User, client_id: str) -> str:
    """The datastore's own label path; errors (422 wrong SEG, 404 unknown study) leave everything as it was."""
    instance = app_instance()
    study = str(seg.get("StudyInstanceUID", ""))
    fields = label_params(json.dumps({"client_id": client_id}), user, settings.MONAI_LABEL_AUTH_ENABLE)
    fields["submitted_seg_sop_instance_uid"] = str(seg.get("SOPInstanceUID", ""))
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "submitted_seg.dcm"
        path.write_bytes(part10)
        label_id = instance.datastore().save_label(study, str(path), DefaultLabelTag.FINAL.value, fields)
    instance.on_save_label(study, label_id)
    logger.info(f"SEG from {client_id} saved as the final label of {label_id} (user '{fields.get('user', '')}')")
    return label_id


async def store_through_proxy(request: Request, study: str = "", user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
    body = await request.body()  # bounded by the route guard's upload limit
    instances = await run_in_threadpool(stow_instances, body, request.headers.get("content-type", ""))
    if not instances:
        raise HTTPException(400, 'not a STOW-RS body: send multipart/related; type="application/dicom" with DICOM Part 10 files')
    if any(str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS for _, ds in instances):
        raise HTTPException(422, "only DICOM SEG labels are stored through this server; other objects go to the archive by its own means")
    if client_of(request) == OHIF_CLIENT_ID:
        raise HTTPException(
            422,
            "DICOM SEGs exported by this OHIF build have their frames in the wrong slice order, so this one was not "
            "stored (neither as a label nor in the archive). Use the Submit label button in the MONAI Label mode.",
        )
    if study and any(str(ds.get("StudyInstanceUID", "")) != study for _, ds in instances):
        raise HTTPException(422, f"the SEG belongs to another study than the one in the URL ({study})")
    for part10, seg in instances:  # decode, commit and send off the event loop
        await run_in_threadpool(save_seg_as_label, part10, seg, user, client_of(request))
    return stow_response(instances)


def stow_response(instances: List[Tuple[bytes, pydicom.Dataset]]) -> Response:
    """A STOW-RS answer (DICOM JSON, so any DICOMweb client reads it) listing the SEGs accepted as labels."""
    accepted = pydicom.Dataset()
    accepted.ReferencedSOPSequence = [_referenced(ds) for _, ds in instances]
    return Response(json.dumps(accepted.to_json_dict()), media_type="application/dicom+json")


def _referenced(ds: pydicom.Dataset) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def app_config_js(sign_in: str = "", auth_enabled: bool = False) -> Response:
    """OHIF's configuration as shipped, then our toolbar button and the notice of a label sent back for changes, and
    the sign-in with the deployment's OpenID provider where one is configured (``ohif_sign_in.py``). With
    authentication on, the scripts wait for the user's token (``window.bratsAuthEnabled``): OHIF takes a ``?token=``
    some time after the page has started, and a request sent before would go without it."""
    auth_flag = f"window.bratsAuthEnabled = {'true' if auth_enabled else 'false'};"
    script = "\n".join([*(path.read_text() for path in (OHIF_DIR / "app-config.js", SUBMIT_SCRIPT)), auth_flag, RETURNED_SCRIPT.read_text(), sign_in])
    return Response(script, media_type="application/javascript", headers={"Cache-Control": "no-cache"})


def ohif_file(path: str) -> Response:
    """A file of the bundled viewer, or its page for the viewer's own routes (``/ohif/viewer?...``). Served
    to anyone: the viewer's data come through the proxy, which asks for a role. MONAI Label's route joined
    the client's path onto the folder unchecked (``/ohif//etc/passwd`` served that file)."""
    root = OHIF_DIR.resolve()
    wanted = (root / path).resolve() if path else root / "index.html"
    if not wanted.is_relative_to(root):
        raise HTTPException(404, "no such file in the viewer")
    return FileResponse(wanted if wanted.is_file() else root / "index.html")


def install_ohif_submit_routes(app: FastAPI, sign_in: Optional[BrowserSignIn] = None) -> None:
    sign_in_js = sign_in_script(sign_in) if sign_in is not None else ""

    def configured_app_config_js() -> Response:
        return app_config_js(sign_in_js, settings.MONAI_LABEL_AUTH_ENABLE)

    add_route_in_front(app, "/ohif/{path:path}", ohif_file, ["GET"], "The OHIF viewer's files", include_in_schema=False)
    for path in STOW_PATHS:
        add_route_in_front(app, path, store_through_proxy, ["POST"], "DICOMweb STOW; a DICOM SEG is saved as the study's final label", include_in_schema=False)
    add_route_in_front(app, APP_CONFIG_PATH, configured_app_config_js, ["GET"], "OHIF configuration with the Submit label button", include_in_schema=False)
