"""Changes to MONAI Label's server (0.8.5), gathered in one place; each checks its assumption.

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
import time
from typing import Any, Callable, Iterator, Sequence, Tuple

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from ..clock import utc_now
from ..errors import BratsLabelError

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
