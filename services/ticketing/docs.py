"""The API docs, on the admin listener only: Swagger UI with every asset served from here.

FastAPI's own ``/docs`` loads Swagger UI's script and style sheet from a CDN and its favicon from
fastapi.tiangolo.com. Here they come from the ``fastapi-offline`` package's ``static`` folder
(Swagger UI 5), mounted under :data:`ASSETS`, and every docs page carries a Content-Security-Policy
that lets it load nothing from another origin.

- ``/docs``: the admin API (``/openapi.json`` of the admin listener), with "Authorize" for the token;
- ``/docs/public``: the public API, read-only (its requests belong on the public port, whose own
  ``/openapi.json`` serves the same document).

ReDoc is not served: its bundle always shows its vendor's logo from cdn.redoc.ly, whatever the page
says (the browser test caught it).
"""

from __future__ import annotations

import importlib.resources
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

#: where the assets are mounted on the admin listener
ASSETS = "/docs/assets"
#: the files of the assets folder the pages load
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
FAVICON = "favicon.png"
#: the public API's OpenAPI document, as served on the admin listener for ``/docs/public``
PUBLIC_OPENAPI = "/docs/public/openapi.json"


def assets_dir() -> Path:
    """The installed package's folder of the Swagger UI bundle (and ReDoc's, unused)."""
    return Path(str(importlib.resources.files("fastapi_offline"))) / "static"


def _csp(nonce: str) -> str:
    # Inline styles: Swagger UI sets style attributes; its icons are data: URLs.
    return (
        "default-src 'none'; "
        f"script-src 'self' 'nonce-{nonce}'; "
        "style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _page(html: HTMLResponse) -> HTMLResponse:
    """The page with a nonce on its scripts and the policy that allows only those and this origin."""
    nonce = secrets.token_urlsafe(16)
    body = bytes(html.body).decode().replace("<script", f'<script nonce="{nonce}"')
    headers = {
        "Content-Security-Policy": _csp(nonce),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return HTMLResponse(body, headers=headers)


def _swagger(openapi_url: str, title: str, **parameters: Any) -> HTMLResponse:
    return _page(
        get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS}/{SWAGGER_JS}",
            swagger_css_url=f"{ASSETS}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{ASSETS}/{FAVICON}",
            # no badge fetched from validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None, **parameters},
        )
    )


def mount_docs(app: FastAPI, public_openapi: Callable[[], dict[str, Any]]) -> None:
    """Swagger UI of ``app`` (the admin API) and a read-only Swagger UI of the public API."""
    assert app.openapi_url is not None
    admin_openapi = app.openapi_url
    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def admin_swagger() -> HTMLResponse:
        return _swagger(admin_openapi, f"{app.title} - Swagger UI")

    @app.get("/docs/public", include_in_schema=False)
    async def public_swagger() -> HTMLResponse:
        # Read-only: "Try it out" would send the public calls to this (admin) origin.
        return _swagger(PUBLIC_OPENAPI, "waitroom public API - Swagger UI", supportedSubmitMethods=[])

    @app.get(PUBLIC_OPENAPI, include_in_schema=False)
    async def public_schema() -> JSONResponse:
        return JSONResponse(public_openapi())
