"""Errors as JSON: :class:`ServeError` (a 4xx/5xx the server answers on purpose), the
``{"error": ..., "detail": ...}`` body every error has, and the app's exception handlers."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ServeError

logger = logging.getLogger(__name__)


def error_response(
    status: int, message: str, detail: Any = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail}, status_code=status, headers=dict(headers or {}))


async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
    return error_response(exc.status_code, exc.message, exc.detail)


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in detail):
        message = "request body is not valid JSON"
    elif detail:
        where = ".".join(p for p in detail[0]["loc"] if p != "body") or "body"
        message = f"invalid request: {where}: {detail[0]['msg']}"
    else:
        message = "invalid request"
    return error_response(422, message, detail)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        return error_response(404, "not found", f"no route {request.method} {request.url.path}; see /docs", exc.headers)
    if exc.status_code == 405:
        return error_response(
            405, "method not allowed", f"{request.method} is not allowed on {request.url.path}", exc.headers
        )
    if exc.status_code == 400:  # FastAPI could not read the body (not UTF-8): the same answer as for bad JSON
        return error_response(422, "request body is not valid JSON", str(exc.detail))
    return error_response(exc.status_code, str(exc.detail), None, exc.headers)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error", type(exc).__name__)


def add_error_handlers(app: FastAPI) -> None:
    """Every error the app answers, as the JSON error body (unknown routes, bad input, bugs included)."""
    app.add_exception_handler(ServeError, serve_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal_error)
