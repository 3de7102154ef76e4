"""The catalogue's pages: plain HTML, CSS and JavaScript files in ``static/app/`` (no build step, no CDN, no
external fonts), so they work at a field station with no internet.

- ``/`` (``index.html``): sign in, upload a batch, the review queue with its comparison view and recent decisions
  (each with an undo), proposed new individuals as groups, and single-photo identify;
- ``/catalogue`` (``catalogue.html``): individuals per species, searched by name or alias, and exports;
- ``/individuals/{id}`` (``individual.html``): an individual's sightings over time, rename / notes / aliases,
  merge, delete, its change history and exports.

The pages read and write only through the JSON API (``/v1/...``) with the reviewer's bearer token, typed once and
kept in the browser's localStorage. Their Content-Security-Policy (:data:`CSP`) allows this origin only, so the
browser never sends a request elsewhere.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

ASSETS = Path(__file__).with_name("static") / "app"
ASSETS_URL = "/app-assets"
PAGES = ("index", "catalogue", "individual")
#: scripts and styles from files of this origin only (no inline code); photos may also be ``blob:`` (the photo
#: chosen for identify, shown before it is uploaded) and ``data:`` (the empty favicon)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)


@cache
def _asset(name: str) -> str:
    path = ASSETS / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: page file missing (a broken install?)")
    return path.read_text(encoding="utf-8")


def page_html(name: str, root: str = "") -> str:
    """The HTML of page ``name`` (one of :data:`PAGES`), its links under ``root`` (the ASGI root path)."""
    if name not in PAGES:
        raise ValueError(f"page must be one of {', '.join(PAGES)}, got {name!r}")
    text = _asset(f"{name}.html").replace("{{header}}", _asset("header.html"))
    return text.replace("{{root}}", html.escape(root.rstrip("/"), quote=True))
