"""The viewer's way to the archive: QIDO-RS and WADO-RS only, with the query the viewer asked.

MONAI Label 0.8.5's proxy joins whatever path the client sends onto the archive's URL and forwards it
with the server's archive credentials (``..%2F`` reaches Orthanc's REST API: patients, ``/tools/reset``),
and drops query parameters (a study-list search returned the whole archive). This one answers in its
place. A path must be a DICOMweb resource (``studies/{uid}/series/{uid}/...``, UIDs as DICOM spells them)
and query keys a QIDO-RS key (an attribute keyword or tag, ``limit``, ``offset``, ``includefield``,
``fuzzymatching``); anything else is refused before a byte leaves the server. STOW-RS is answered by
``ohif_submit`` (DICOM SEG labels only). Answers stream back with the archive's content headers only.
"""

from __future__ import annotations

import logging
import re
from typing import Dict, Iterator, List, Tuple

import requests
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from monailabel.config import settings
from monailabel.interfaces.utils.app import app_instance
from pydicom.datadict import keyword_dict

from .routes import add_route_in_front

logger = logging.getLogger(__name__)

UID = r"[0-9]+(?:\.[0-9]+)*"  # DICOM UIDs: digits and dots, at most 64 characters (checked below)
MAX_UID_CHARS = 64
STUDY, SERIES, INSTANCE = rf"studies/{UID}", rf"/series/{UID}", rf"/instances/{UID}"
FRAMES = r"/frames/[0-9]+(?:,[0-9]+)*"
BULK = r"/bulk/[0-9A-Fa-f]{8}(?:/[0-9]+/[0-9A-Fa-f]{8})*"
RENDERED = r"/(?:rendered|thumbnail)"
QIDO_PATHS = re.compile(rf"studies|series|instances|{STUDY}/series|{STUDY}/instances|{STUDY}{SERIES}/instances")
WADO_PATHS = re.compile(
    rf"{STUDY}(?:/metadata|{RENDERED})?"
    rf"|{STUDY}{SERIES}(?:/metadata|{RENDERED})?"
    rf"|{STUDY}{SERIES}{INSTANCE}(?:/metadata|{RENDERED}|{FRAMES}(?:{RENDERED})?|{BULK})?"
)
METADATA = re.compile(rf"{STUDY}(?:{SERIES})?(?:{INSTANCE})?/metadata")  # some OHIF builds ask QIDO for it
STUDY_OPENED = re.compile(rf"studies/({UID})(?:{SERIES})?/metadata")  # what a viewer asks first when it opens a study
TAG = re.compile(r"[0-9A-Fa-f]{8}")
ATTRIBUTE_PATH = re.compile(r"[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)*")  # a keyword or tag, or a sequence path of them
QIDO_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
WADO_PARAMS = {"accept", "quality", "viewport", "window", "annotation"}  # rendered / thumbnail options
FORWARDED_REQUEST_HEADERS = ("accept", "accept-encoding")  # the body is passed on as the archive encodes it
FORWARDED_ANSWER_HEADERS = ("content-type", "content-length", "content-encoding", "etag", "last-modified")
CHUNK_BYTES = 1 << 16
ARCHIVE_TIMEOUT_S = (10, 300)  # connect, read


def _is_attribute(key: str) -> bool:
    """A QIDO matching key: an attribute keyword or tag, or a dotted sequence path of them."""
    if not ATTRIBUTE_PATH.fullmatch(key):
        return False
    return all(TAG.fullmatch(part) or part in keyword_dict for part in key.split("."))


def qido_params(items: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    for key, value in items:
        if key not in QIDO_CONTROL and not _is_attribute(key):
            raise HTTPException(400, f"'{key}' is not a QIDO-RS query key (an attribute keyword or tag, or {', '.join(sorted(QIDO_CONTROL))})")
        if key == "includefield":
            for field in value.split(","):
                if field != "all" and not _is_attribute(field):
                    raise HTTPException(400, f"includefield '{field}' is not an attribute keyword or tag")
        if key in ("limit", "offset") and not value.isdigit():
            raise HTTPException(400, f"{key} must be a whole number, not '{value}'")
    return items


def wado_params(items: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    unknown = sorted({k for k, _ in items} - WADO_PARAMS)
    if unknown:
        raise HTTPException(400, f"WADO-RS takes no query parameter {unknown} here (allowed: {', '.join(sorted(WADO_PARAMS))})")
    return items


def checked_path(path: str, allowed: re.Pattern[str], service: str) -> str:
    if not allowed.fullmatch(path) or any(len(uid) > MAX_UID_CHARS for uid in re.findall(UID, path)):
        raise HTTPException(400, f"'{path}' is not a {service} resource this proxy forwards (studies/<UID>/series/<UID>/...)")
    return path


def archive_url(prefix: str, path: str) -> str:
    root = settings.MONAI_LABEL_STUDIES.rstrip("/")
    if not root.startswith(("http://", "https://")):
        raise HTTPException(404, "this server reads a studies folder, not a DICOMweb archive: there is nothing to proxy")
    return "/".join(p.strip("/") for p in (root, prefix or "", path) if p.strip("/"))


def _archive_auth():
    user, password = settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
    return (user, password) if user and password else None


async def forward(request: Request, url: str, params: List[Tuple[str, str]]) -> StreamingResponse:
    """``params`` were checked; the query goes on as the client wrote it: Orthanc's DICOMweb plugin takes an
    encoded wildcard (``%2A``) literally, so re-encoding ``PatientID=B*`` would match nothing."""
    headers = {"Accept-Encoding": "identity", **{k: v for k, v in request.headers.items() if k.lower() in FORWARDED_REQUEST_HEADERS}}
    query = request.scope.get("query_string", b"").decode("latin-1")
    if params and query:
        url = f"{url}?{query}"
    try:
        answer = await run_in_threadpool(requests.get, url, headers=headers, auth=_archive_auth(), stream=True, timeout=ARCHIVE_TIMEOUT_S, allow_redirects=False)
    except requests.RequestException as e:
        raise HTTPException(503, f"the archive did not answer ({type(e).__name__}); try again when it is back") from None
    kept: Dict[str, str] = {k: v for k, v in answer.headers.items() if k.lower() in FORWARDED_ANSWER_HEADERS}

    def body() -> Iterator[bytes]:  # Starlette iterates a plain generator in its thread pool
        try:
            yield from answer.raw.stream(CHUNK_BYTES, decode_content=False)
        finally:
            answer.close()

    return StreamingResponse(body(), status_code=answer.status_code, headers=kept)


async def wado(request: Request, path: str) -> StreamingResponse:
    items = list(request.query_params.multi_items())
    url = archive_url(settings.MONAI_LABEL_WADO_PREFIX, checked_path(path, WADO_PATHS, "WADO-RS"))
    opened = STUDY_OPENED.fullmatch(path)
    if opened:
        _study_viewed(opened.group(1))
    return await forward(request, url, wado_params(items))


def _study_viewed(study_uid: str) -> None:
    """The viewer asks for a study's metadata as it opens it: the app prepares the study's auto-segmentation ahead."""
    try:
        viewed = getattr(app_instance(), "study_viewed", None)
        if viewed is not None:
            viewed(study_uid)
    except Exception as e:  # never in the way of the viewer's answer
        logger.warning(f"Study {study_uid} viewed, not prepared ahead: {e}")


async def qido(request: Request, path: str) -> StreamingResponse:
    if METADATA.fullmatch(path):  # MONAI Label's proxy did this too: metadata is WADO-RS
        return await wado(request, path)
    items = list(request.query_params.multi_items())
    return await forward(request, archive_url(settings.MONAI_LABEL_QIDO_PREFIX, checked_path(path, QIDO_PATHS, "QIDO-RS")), qido_params(items))


def install_dicomweb_proxy(app: FastAPI) -> None:
    add_route_in_front(app, "/proxy/dicom/qido/{path:path}", qido, ["GET"], "QIDO-RS to the archive", include_in_schema=False)
    add_route_in_front(app, "/proxy/dicom/wado/{path:path}", wado, ["GET"], "WADO-RS from the archive", include_in_schema=False)
