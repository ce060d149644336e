"""Changes to MONAI Label's server (0.8.5), gathered in one place; each checks its assumption.

- The route table: every route the server answers, MONAI Label's and ours, with the least role that may
  call it (``ROUTE_ROLES``), enforced by one guard in front of every route. A route the server serves but
  the table does not name stops start-up; routes a deployment must not have (tar sessions, raw model
  upload and delete, Orthanc's REST API through the proxy, ...) are answered 403 with the reason. The
  guard also refuses encoded path tricks (``%2F``, ``..``, NUL) and bodies over the upload limit before
  any route reads them.

- Put one of our routes in front of one of MONAI Label's at the same path: FastAPI wraps included
  routers, so a stock route cannot be picked out of the list and removed; the first route that
  matches answers, so ours goes first and every client keeps calling the same URL.
- Answer the app's domain errors (``lib/errors.py``) with their status and message.
- Record when each background task (training, scoring) started, to the microsecond.
- Take slow work off the event loop: MONAI Label 0.8.5 declares its routes ``async def`` and calls
  blocking code from them (inference, the datastore listing, label saves), so one auto-segmentation
  stalled every other request, Next Sample included, for seconds. Each such route is answered
  instead by a plain function with the same signature, which FastAPI runs in its thread pool.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from monailabel.config import settings
from starlette.middleware import Middleware
from starlette.routing import Mount, Route, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import BratsLabelError
from ..runtime.clock import utc_now
from .token_check import TokenRefused, TokenVerifier, role_names

logger = logging.getLogger(__name__)

MONAI_LABEL_VERSION = "0.8.5"  # the server these changes were written for
STOCK_ENDPOINTS = "monailabel.endpoints."
ASYNC_BY_NATURE = ("monailabel.endpoints.proxy",)  # awaits its HTTP client: stays on the loop


def record_task_start_times() -> None:
    """MONAI Label stamps a background task's start in whole local seconds; labels saved in the same second
    could not be told before or after it. Each task also gets ``started_at`` (this workspace's UTC format,
    microseconds) and ``started_epoch_s`` at submission."""
    import monailabel.utils.async_tasks.task as task_module

    original = task_module.run_background_task
    if getattr(original, "records_start_time", False):
        return
    if list(inspect.signature(original).parameters)[:2] != ["request", "method"]:
        raise RuntimeError("MONAI Label's run_background_task changed: cannot record task start times")

    def run_background_task(request: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        started_at, started_epoch_s = utc_now(), time.time()
        task = original(request, method, *args, **kwargs)
        task.update(started_at=started_at, started_epoch_s=started_epoch_s)
        return task

    run_background_task.records_start_time = True  # type: ignore[attr-defined]
    task_module.run_background_task = run_background_task


def answer_domain_errors(app: FastAPI) -> None:
    """Every ``BratsLabelError`` becomes an answer with its status and message. Starlette builds its
    exception middleware when the server starts (before the app exists), so the stack is rebuilt with the
    handler at the next request."""
    if not hasattr(app, "middleware_stack"):
        raise RuntimeError("Starlette no longer keeps a middleware_stack: domain errors would answer 500")

    def answer(request: Request, error: Exception) -> JSONResponse:
        status = getattr(error, "status_code", 500)
        return JSONResponse({"detail": str(error)}, status_code=status)

    app.add_exception_handler(BratsLabelError, answer)
    app.middleware_stack = None


def check_monai_label_version() -> None:
    import monailabel

    if monailabel.__version__ != MONAI_LABEL_VERSION:
        raise RuntimeError(
            f"BraTS Label changes MONAI Label {MONAI_LABEL_VERSION}'s server (lib/endpoints/routes.py); "
            f"monailabel {monailabel.__version__} is installed. Install the version in requirements.txt."
        )


def add_route_in_front(app: FastAPI, path: str, endpoint: Callable[..., Any], methods: Sequence[str], summary: str, **kwargs: Any) -> None:
    app.add_api_route(path, endpoint, methods=list(methods), summary=summary, **kwargs)
    ours = app.router.routes.pop()
    if not (isinstance(ours, APIRoute) and ours.endpoint is endpoint and ours.path == path):
        raise RuntimeError(f"FastAPI did not append the route {path} as expected; MONAI Label's own route would answer")
    app.router.routes.insert(0, ours)


def in_thread_pool(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """A plain function with the endpoint's signature that runs the coroutine to completion in a loop of its
    own; FastAPI calls plain functions in its thread pool. No ``__wrapped__``: FastAPI would unwrap it and
    find the coroutine function again."""

    def run(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(endpoint(*args, **kwargs))

    run.__signature__ = inspect.signature(endpoint, eval_str=True)  # type: ignore[attr-defined]
    run.__name__ = endpoint.__name__
    run.__doc__ = endpoint.__doc__
    if inspect.iscoroutinefunction(run):
        raise RuntimeError("the thread-pool wrapper is itself a coroutine function")
    return run


def served_routes(routes: Sequence[Any], prefix: str = "") -> Iterator[Tuple[str, APIRoute]]:
    """(full path, route) of every API route, also those of included routers (FastAPI >= 0.16x keeps an
    included router as one entry holding the original router and its include prefix)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        elif hasattr(route, "original_router"):
            yield from served_routes(route.original_router.routes, prefix + getattr(route.include_context, "prefix", ""))


def offload_blocking_stock_routes(app: FastAPI) -> int:
    """Answer every stock ``async def`` route that blocks from the thread pool; how many were moved."""
    moved = 0
    for path, route in list(served_routes(app.router.routes)):
        if not inspect.iscoroutinefunction(route.endpoint):
            continue
        module = getattr(route.endpoint, "__module__", "")
        if not module.startswith(STOCK_ENDPOINTS) or module.startswith(ASYNC_BY_NATURE):
            continue
        add_route_in_front(
            app,
            path,
            in_thread_pool(route.endpoint),
            sorted(route.methods or []),
            route.summary or "",
            response_model=route.response_model,
            include_in_schema=route.include_in_schema,
            tags=route.tags,
        )
        moved += 1
    if moved == 0:
        raise RuntimeError("no blocking MONAI Label routes found to take off the event loop: MONAI Label's server changed")
    logger.info(f"{moved} MONAI Label routes answer from the thread pool")
    return moved


# --- the route table ---------------------------------------------------------------------------------


class Role(IntEnum):
    """The least role a route asks for; each role includes those below it (MONAI Label's four, and none)."""

    ANONYMOUS = 0
    USER = 1  # sees studies, labels, models, progress
    ANNOTATOR = 2  # is handed studies, runs pre-segmentation, saves labels
    REVIEWER = 3  # removes labels, reads the audit
    ADMIN = 4  # trains, scores, serves model versions, reads logs


@dataclass(frozen=True)
class Disabled:
    """A route this server never answers, and what to use instead."""

    reason: str


Access = Union[Role, Disabled]
NO_TAR_SESSIONS = Disabled("sessions upload tar files that are extracted on the server; this server does not offer them")
VERSIONS_ONLY = Disabled("models change only through model versions (training, then POST /brats/models/{version}/promote)")
NOT_WSI = Disabled("whole-slide inference is for pathology apps, not this one")
NO_ARCHIVE_REST = Disabled("the proxy forwards DICOMweb only (/proxy/dicom/qido, /wado, /stow), never the archive's own API")

# (methods, path as the server declares it, least role). HEAD goes with GET. Ordered like the README's table.
ROUTE_ROLES: Tuple[Tuple[str, str, Access], ...] = (
    ("GET", "/", Role.ANONYMOUS),  # API page
    ("GET", "/favicon.ico", Role.ANONYMOUS),
    ("GET", "/openapi.json", Role.ANONYMOUS),
    ("GET", "/docs", Role.ANONYMOUS),
    ("GET", "/static", Role.ANONYMOUS),  # the API page's assets
    ("GET", "/ohif/{path:path}", Role.ANONYMOUS),  # the viewer's files; its data come through the proxy
    ("GET", "/ohif/app-config.js", Role.ANONYMOUS),
    ("GET", "/auth/", Role.ANONYMOUS),  # login routes, present when authentication is on
    ("POST", "/auth/token", Role.ANONYMOUS),
    ("GET", "/auth/token/valid", Role.ANONYMOUS),
    ("GET", "/brats/dashboard", Role.ANONYMOUS),  # the page holds no data: what it shows comes from /brats/dashboard/data
    ("GET", "/info/", Role.USER),
    ("GET", "/datastore/", Role.USER),
    ("GET", "/datastore/image", Role.USER),
    ("GET", "/datastore/image/info", Role.USER),
    ("GET", "/datastore/label", Role.USER),
    ("GET", "/datastore/label/info", Role.USER),
    ("GET", "/train/", Role.USER),
    ("GET", "/scoring/", Role.USER),
    ("GET", "/batch/infer", Role.USER),
    ("GET", "/brats/queue", Role.USER),
    ("GET", "/brats/models", Role.USER),
    ("GET", "/brats/holdout", Role.USER),
    ("GET", "/brats/training", Role.USER),
    ("GET", "/brats/timeline/{case}", Role.USER),
    ("GET", "/proxy/dicom/qido/{path:path}", Role.USER),
    ("GET", "/proxy/dicom/wado/{path:path}", Role.USER),
    ("POST", "/activelearning/{strategy}", Role.ANNOTATOR),
    ("POST", "/infer/{model}", Role.ANNOTATOR),
    ("PUT", "/datastore/label", Role.ANNOTATOR),
    ("GET", "/brats/review/{case}", Role.ANNOTATOR),  # the comment of a label sent back to its annotator
    ("PUT", "/datastore/label/info", Role.ANNOTATOR),
    ("PUT", "/datastore/updatelabelinfo", Role.ANNOTATOR),
    ("POST", "/proxy/dicom/wado/studies", Role.ANNOTATOR),  # STOW-RS of a SEG (OHIF posts to its wado root)
    ("POST", "/proxy/dicom/wado/studies/{study}", Role.ANNOTATOR),
    ("POST", "/proxy/dicom/stow/studies", Role.ANNOTATOR),
    ("POST", "/proxy/dicom/stow/studies/{study}", Role.ANNOTATOR),
    ("DELETE", "/datastore/label", Role.REVIEWER),  # a removal is a new version without voxels; history keeps all
    ("GET", "/brats/audit", Role.REVIEWER),
    ("GET", "/brats/review", Role.REVIEWER),
    ("GET", "/brats/double-read/{case}", Role.REVIEWER),  # a study's readings and their agreement
    ("GET", "/brats/double-read/{case}/readings/{index}", Role.REVIEWER),  # a reader's label, to adjudicate
    ("GET", "/brats/dashboard/data", Role.REVIEWER),
    ("GET", "/brats/dashboard/curve/{version}", Role.REVIEWER),
    ("POST", "/brats/review/{case}", Role.REVIEWER),
    ("GET", "/datastore/dataset", Role.ADMIN),  # every study and label in one download
    ("PUT", "/datastore/image/info", Role.ADMIN),
    ("GET", "/model/{model}", Role.ADMIN),
    ("GET", "/model/info/{model}", Role.ADMIN),
    ("POST", "/train/", Role.ADMIN),
    ("POST", "/train/{model}", Role.ADMIN),
    ("DELETE", "/train/", Role.ADMIN),
    ("POST", "/scoring/", Role.ADMIN),
    ("POST", "/scoring/{method}", Role.ADMIN),
    ("DELETE", "/scoring/", Role.ADMIN),
    ("POST", "/brats/models/{version}/promote", Role.ADMIN),
    ("POST", "/brats/holdout", Role.ADMIN),
    ("POST", "/brats/double-read/{case}", Role.ADMIN),  # have a study read by two annotators
    ("GET", "/logs/", Role.ADMIN),
    ("GET", "/logs/gpu", Role.ADMIN),
    ("PUT", "/model/{model}", VERSIONS_ONLY),
    ("DELETE", "/model/{model}", VERSIONS_ONLY),
    ("PUT", "/datastore/image", Disabled("studies come from the archive or the studies folder, not from uploads")),
    ("PUT", "/datastore/", Disabled("studies come from the archive or the studies folder, not from uploads")),
    ("DELETE", "/datastore/image", Disabled("studies are removed in the archive or the studies folder, not here")),
    ("DELETE", "/datastore/", Disabled("studies are removed in the archive or the studies folder, not here")),
    ("POST", "/batch/infer/{model}", Disabled("pre-labels are never stored as labels; Next Sample pre-segments each study when it is opened")),
    ("DELETE", "/batch/infer", Disabled("batch inference is not offered")),
    ("POST", "/infer/wsi/{model}", NOT_WSI),
    ("POST", "/infer/wsi_v2/{model}", NOT_WSI),
    ("GET", "/session/{session_id}", NO_TAR_SESSIONS),
    ("PUT", "/session/", NO_TAR_SESSIONS),
    ("DELETE", "/session/{session_id}", NO_TAR_SESSIONS),
    ("POST", "/reload", Disabled("restart the server to reload the app")),
    ("POST", "/proxy/dicom/qido/{path:path}", Disabled("QIDO-RS is GET only")),
    ("POST", "/proxy/dicom/wado/{path:path}", Disabled("STOW-RS goes to /proxy/dicom/wado/studies[/{study}]")),
    ("GET", "/proxy/dicom/stow/{path:path}", Disabled("STOW-RS is POST only")),
    ("POST", "/proxy/dicom/stow/{path:path}", Disabled("STOW-RS goes to /proxy/dicom/stow/studies[/{study}]")),
    ("GET", "/proxy/dicom/{path:path}", NO_ARCHIVE_REST),
    ("POST", "/proxy/dicom/{path:path}", NO_ARCHIVE_REST),
)

OPTIONAL_ROUTES = ("/auth/", "/auth/token", "/auth/token/valid")  # served only with authentication on
UNSAFE_RAW_PATH = re.compile(rb"%2f|%5c|%2e|%00|%3f|%23|\\|(^|/)\.\.?(/|$)", re.IGNORECASE)  # '//' is harmless: routes never join paths


def _specific_first(table: Sequence[Tuple[str, str, Access]]) -> List[Tuple[str, str, Access]]:
    """Literal paths before templates, and of templates the longest literal start first: the order in which
    the server's own routes answer (ours, in front, are the specific ones)."""

    def key(entry: Tuple[str, str, Access]) -> Tuple[int, int]:
        path = entry[1]
        literal = path.split("{", 1)[0]
        return (0 if "{" not in path else 1, -len(literal))

    return sorted(table, key=key)


COMPILED_ROUTE_ROLES: List[Tuple[str, re.Pattern[str], Access]] = [
    (method, re.compile(re.escape(path) + "(/.*)?") if path == "/static" else compile_path(path)[0], access) for method, path, access in _specific_first(ROUTE_ROLES)
]


def access_of(method: str, path: str) -> Optional[Access]:
    """The table's entry for a request (the first declared route that matches, as the server picks), or None."""
    method = "GET" if method == "HEAD" else method
    for declared, template, access in COMPILED_ROUTE_ROLES:
        if method == declared and template.fullmatch(path):
            return access
    return None


def check_route_table(app: FastAPI) -> int:
    """Every route the server answers has an entry; start-up stops on one that does not."""
    served = {(method, path) for path, route in served_routes(app.router.routes) for method in (route.methods or []) if method != "HEAD"}
    served |= {("GET", route.path) for route in app.router.routes if isinstance(route, Mount) and route.path}
    plain = [r for r in app.router.routes if isinstance(r, Route) and not isinstance(r, APIRoute)]  # the API pages
    served |= {(method, route.path) for route in plain for method in (route.methods or []) if method != "HEAD"}
    declared = {(method, path) for method, path, _ in ROUTE_ROLES}
    unnamed = sorted(served - declared)
    if unnamed:
        raise RuntimeError(f"routes without a role in lib/endpoints/routes.py ROUTE_ROLES: {unnamed}")
    missing = sorted(p for m, p in declared - served if p not in OPTIONAL_ROUTES)
    if missing:
        raise RuntimeError(f"ROUTE_ROLES names routes the server does not serve (MONAI Label's server changed?): {missing}")
    return len(served)


def _json_answer(status: int, detail: str, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class RouteGuard:
    """In front of every route: path tricks refused, the route's least role checked, bodies bounded."""

    def __init__(self, app: ASGIApp, verifier: Optional[TokenVerifier], max_body_bytes: int):
        self.app = app
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":  # CORS pre-flights are answered outside
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        refusal = await self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await self._too_large()(scope, receive, send)
            return
        if length is None and b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body = await self._read_bounded(receive)
            if body is None:
                await self._too_large()(scope, receive, send)
                return
            receive = self._replay(body, receive)
        await self.app(scope, receive, send)

    def _too_large(self) -> JSONResponse:
        mb = self.max_body_bytes / 2**20
        return _json_answer(413, f"the request body is over this server's upload limit ({mb:.0f} MB, --conf max_upload_mb); nothing was stored")

    async def _read_bounded(self, receive: Receive) -> Optional[bytes]:
        """A chunked body (no Content-Length to check first), read up to the limit; None past it."""
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                break
        return b"".join(parts)

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        """The body read already, then the connection's own messages (a disconnect when the client leaves)."""
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    async def _refusal(self, scope: Scope, headers: Dict[bytes, bytes]) -> Optional[JSONResponse]:
        raw = scope.get("raw_path") or scope["path"].encode()
        if UNSAFE_RAW_PATH.search(raw) or "\x00" in scope["path"]:
            return _json_answer(400, "the path holds an encoded '/', '\\', '.', '?', '#' or NUL, or a '.' or '..' segment; no route of this server needs one")
        access = access_of(scope["method"], scope["path"])
        if access is None:
            return None  # the server answers 404 or 405 itself: every route it serves is in the table (checked at start)
        if isinstance(access, Disabled):
            return _json_answer(403, f"{scope['method']} {scope['path']} is not offered by this server: {access.reason}")
        if access == Role.ANONYMOUS or not settings.MONAI_LABEL_AUTH_ENABLE:
            return None
        return await self._role_refusal(headers, access)

    async def _role_refusal(self, headers: Dict[bytes, bytes], least: Role) -> Optional[JSONResponse]:
        header = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        challenge = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != "bearer" or not token:
            return _json_answer(401, "sign in first: this route needs a bearer token from the identity provider", challenge)
        if self.verifier is None:
            return _json_answer(500, "authentication is on but no identity provider is configured (MONAI_LABEL_AUTH_REALM_URI)")
        try:
            user = await run_in_threadpool(self.verifier.user, token.strip())  # may read the issuer's keys
        except TokenRefused as e:
            return _json_answer(401, str(e), challenge)
        needed = role_names()[least - 1]
        if needed not in user.roles:
            return _json_answer(403, f"this route needs the role '{needed}' (or one above it); the token's user has {sorted(user.roles)}")
        return None


def defer_role_checks_to_route_table() -> None:
    """MONAI Label's routes each ask for a role of their own (``RBAC``), some stricter than the table (label
    removal: admin), some looser (model upload: annotator). The guard has checked the table's role before any
    route runs, so ``RBAC`` keeps only its authentication (the user it hands to the route)."""
    from monailabel.endpoints.user import auth

    if list(inspect.signature(auth.RBAC.__call__).parameters) != ["self", "user"]:
        raise RuntimeError("MONAI Label's RBAC changed: its role checks cannot be handed to the route table")

    async def authenticated_user(self: Any, user: Any = None) -> Any:
        return user

    authenticated_user.__signature__ = inspect.signature(auth.RBAC.__call__)  # type: ignore[attr-defined]
    auth.RBAC.__call__ = authenticated_user  # type: ignore[method-assign]


def install_route_guard(app: FastAPI, verifier: Optional[TokenVerifier], max_body_bytes: int) -> int:
    """The guard goes inside CORS (pre-flights keep working) and in front of every route; how many routes."""
    defer_role_checks_to_route_table()
    count = check_route_table(app)
    app.middleware_stack = None  # rebuilt at the next request, with the guard
    app.user_middleware.append(Middleware(RouteGuard, verifier=verifier, max_body_bytes=max_body_bytes))  # type: ignore[arg-type]
    logger.info(f"route guard: {count} routes, each with its least role")
    return count
