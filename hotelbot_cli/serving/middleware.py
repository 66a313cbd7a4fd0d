"""The raw ASGI middleware in front of every route: counts and times each HTTP request for ``/metrics`` (and,
per model version, the requests a route says a version answered: ``request.state.model_version``) and
refuses an oversized body (413) before it is read."""

from __future__ import annotations

import time
from typing import Any, Callable, MutableMapping

from .errors import error_response
from .metrics import Metrics


class MetricsMiddleware:
    """Pure ASGI: count and time every HTTP request; refuse oversized bodies before they are read."""

    def __init__(self, app: Any, metrics: Metrics, max_body_bytes: int, post_paths: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.post_paths = post_paths

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = _content_length(scope)
            if length is not None and length > self.max_body_bytes:
                response = error_response(
                    413,
                    "request body too large",
                    f"{length} bytes; the limit is {self.max_body_bytes}",
                    {"Connection": "close"},
                )
                await response(scope, receive, send_status)
                return
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or (
                scope["path"] if scope["path"] in self.post_paths else "unmatched"
            )
            seconds = time.perf_counter() - start
            self.metrics.observe_request(endpoint, status, seconds)
            version = (scope.get("state") or {}).get("model_version")  # set by the route that picked the model
            if version:
                self.metrics.versions.observe_request(version, endpoint, status, seconds)


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
