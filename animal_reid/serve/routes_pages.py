"""Routes for the catalogue's pages (:mod:`animal_reid.serve.pages`) and their files at ``/app-assets``.

``add_page_routes(app, service)`` serves ``/`` (review queue, batch upload, identify), ``/catalogue`` and
``/individuals/{id}``; each page carries the :data:`~animal_reid.serve.pages.CSP` header. The pages hold no data:
they call the JSON API, so ``service`` is not read here (it is taken for the same signature as the other
``add_*_routes``).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from animal_reid.serve.pages import ASSETS, ASSETS_URL, CSP, page_html


def _page(name: str, request: Request) -> HTMLResponse:
    body = page_html(name, request.scope.get("root_path", ""))
    return HTMLResponse(body, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})


def add_page_routes(app: FastAPI, service=None) -> None:
    """Serve the pages and ``static/app/`` on ``app``; ``service`` is unused (see the module's docstring)."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="app-assets")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def review_page(request: Request) -> HTMLResponse:
        return _page("index", request)

    @app.get("/catalogue", response_class=HTMLResponse, include_in_schema=False)
    async def catalogue_page(request: Request) -> HTMLResponse:
        return _page("catalogue", request)

    @app.get("/individuals/{individual_id}", response_class=HTMLResponse, include_in_schema=False)
    async def individual_page(request: Request, individual_id: int) -> HTMLResponse:
        return _page("individual", request)
