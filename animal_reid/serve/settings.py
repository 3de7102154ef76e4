"""Settings of the re-ID service that need no optional dependency: the write-token variable, upload limits,
the species-name rule and how often a replica looks for other replicas' writes.

Kept apart from :mod:`animal_reid.serve.service` (which needs SQLAlchemy) so that ``animal-reid serve --help``
runs on the base install; ``animal_reid.serve.service`` re-exports the names it used to define.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN_ENV = "ANIMAL_REID_TOKEN"
#: how often (ms) a replica checks the catalogue for writes made by other processes (0: never)
DEFAULT_POLL_MS = 1000
SPECIES_RE = re.compile(r"^[a-z0-9_]{1,64}$")


@dataclass(frozen=True)
class Limits:
    """What an upload may be: bytes per file, decoded pixels per image, formats, files per request."""

    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 50_000_000
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
    max_files: int = 32


def species_key(text: str) -> str:
    """The stored form of a species name: trimmed and lower-cased (``" Lion "`` -> ``"lion"``); ValueError with
    a one-line message (``expected 1-64 letters, ...``) for anything else than 1-64 letters, digits and ``_``."""
    key = str(text).strip().lower()
    if not SPECIES_RE.fullmatch(key):
        raise ValueError(
            f"expected 1-64 letters, digits or _ (like 'lion' or 'red_fox'), got {str(text)[:80]!r}"
        )
    return key
