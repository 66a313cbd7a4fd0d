"""The API's documentation pages, offline: /docs (Swagger UI) and /redoc load their script, stylesheet and
favicon from the server itself (``/docs-assets/``, the files the pinned ``fastapi-offline`` package ships),
never from a CDN, so the pages work on a hotel server without internet; and the OpenAPI schema states the
limits this server enforces (:func:`openapi_with_limits`)."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from .settings import ServeSettings

ASSETS = "/docs-assets"
ASSETS_PACKAGE = "fastapi_offline"  # ships swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png

# Request models whose text fields the server limits to max_text_length characters (413 above it), and
# those whose list of texts it limits to max_batch_size items (413 above it).
TEXT_FIELDS = {"ClassifyRequest": "text", "ReplyRequest": "text", "SearchRequest": "query"}
BATCH_FIELDS = {"BatchClassifyRequest": "texts", "AnalyzeRequest": "texts"}


def add_docs(app: FastAPI, settings: ServeSettings) -> None:
    """/docs, /redoc and their assets from the installed package; the schema with this server's limits."""
    app.mount(ASSETS, StaticFiles(directory=str(files(ASSETS_PACKAGE) / "static")), name="docs-assets")
    title = f"{app.title} API"

    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )

    app.add_api_route("/docs", swagger, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_with_limits(
                get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes),
                settings,
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def openapi_with_limits(schema: dict[str, Any], settings: ServeSettings) -> dict[str, Any]:
    """``schema`` with this server's text length and batch size limits on the request bodies (they are
    settings, so the pydantic models cannot carry them)."""
    components = schema.get("components", {}).get("schemas", {})
    for name, field in TEXT_FIELDS.items():
        prop = components.get(name, {}).get("properties", {}).get(field)
        if prop is not None:
            prop["maxLength"] = settings.max_text_length
    for name, field in BATCH_FIELDS.items():
        prop = components.get(name, {}).get("properties", {}).get(field)
        if prop is not None:
            prop["maxItems"] = settings.max_batch_size
            prop.setdefault("items", {})["maxLength"] = settings.max_text_length
    return schema


__all__ = ["ASSETS", "add_docs", "openapi_with_limits"]
