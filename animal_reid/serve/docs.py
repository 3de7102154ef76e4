"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) with their scripts, styles and icon served by the app itself.

FastAPI's default pages load them from a CDN, so they are blank on a machine with no internet (a field station).
The files are vendored in ``static/docs/`` (sources, versions and licences in its README). Create the app with
``docs_url=None, redoc_url=None`` and call :func:`add_offline_docs`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).with_name("static") / "docs"
ASSETS_URL = "/docs-assets"
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon-32x32.png")
#: the docs pages may load nothing from another origin: the browser refuses before any request is sent (ReDoc's
#: menu has a Redocly logo from its CDN; a future asset version may add more), so they never reach outside
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' blob:; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:"
)


def add_offline_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve ``static/docs/`` at ``/docs-assets`` and the two docs pages pointing at it.

    Swagger UI's online validator (a request to validator.swagger.io) is switched off; ReDoc is given no Google
    Fonts link; both pages carry a Content-Security-Policy that allows this origin only (:data:`CSP`). URLs carry
    the ASGI ``root_path``, so the pages also work behind a reverse proxy's prefix.
    """
    missing = [name for name in ASSET_FILES if not (ASSETS / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{ASSETS}: API docs files missing: {', '.join(missing)} (a broken install?)")
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        )
        page.headers["Content-Security-Policy"] = CSP
        return page

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API reference",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon-32x32.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = CSP
        return page
