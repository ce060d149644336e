"""Put one of our routes in front of one of MONAI Label's at the same path.

FastAPI wraps included routers, so a stock route cannot be picked out of the list and removed; the
first route that matches answers, so ours goes first and every client keeps calling the same URL.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from fastapi import FastAPI
from fastapi.routing import APIRoute


def add_route_in_front(app: FastAPI, path: str, endpoint: Callable[..., Any], methods: Sequence[str], summary: str, **kwargs: Any) -> None:
    app.add_api_route(path, endpoint, methods=list(methods), summary=summary, **kwargs)
    ours = app.router.routes.pop()
    if not (isinstance(ours, APIRoute) and ours.endpoint is endpoint and ours.path == path):
        raise RuntimeError(f"FastAPI did not append the route {path} as expected; MONAI Label's own route would answer")
    app.router.routes.insert(0, ours)
