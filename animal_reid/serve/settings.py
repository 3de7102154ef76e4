"""Settings of the re-ID service that need no optional dependency: the write-token variable and upload limits.

Kept apart from :mod:`animal_reid.serve.service` (which needs SQLAlchemy) so that ``animal-reid serve --help``
runs on the base install; ``animal_reid.serve.service`` re-exports both names.
"""

from __future__ import annotations

from dataclasses import dataclass

TOKEN_ENV = "ANIMAL_REID_TOKEN"


@dataclass(frozen=True)
class Limits:
    """What an upload may be: bytes per file, decoded pixels per image, formats, files per request."""

    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 50_000_000
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
    max_files: int = 32
