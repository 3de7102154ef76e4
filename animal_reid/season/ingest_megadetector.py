"""Ingest MegaDetector batch output: one annotation per animal detection, its box in the displayed photo's pixels.

The batch-output JSON (https://lila.science/megadetector-output-format) lists ``images[]`` with a ``file``
(relative to the folder MegaDetector ran on, or absolute; ``\\`` accepted), ``detections[]`` (``category`` keyed
in ``detection_categories``, ``conf``, a normalised ``bbox`` ``[x, y, w, h]``) and an optional ``failure``.
:func:`ingest_megadetector` keeps the detections of the ``animal`` categories with ``conf >= min_conf``; a photo
with two is two annotations (``<file>#<k>``, ``k`` the detection's index in the JSON, so ids stay stable when
``min_conf`` changes). Boxes are scaled by the photo's displayed size (:func:`modeling.displayed_size`'s rule: EXIF
orientation applied, the convention MegaDetector boxes follow), and the photo's EXIF date-time, place and camera
are copied as in :func:`~animal_reid.season.ingest.ingest_folder`. MegaDetector says only "animal": the species
is the user's (one for all, or per folder with a species map).

Format versions 1.0 to 1.6 are read (the fields used here are the same in all); any other version, a file that
is not JSON or not a batch output raises :class:`~animal_reid.season.ingest.IngestError` naming the file. An
image entry with a ``failure``, a missing photo, a photo outside ``image_root`` (never opened), an unreadable
photo, a repeated file, a video, or a detection whose box is out of range (beyond :data:`BOX_TOLERANCE`,
negative size, NaN) or whose ``conf`` is not a number in [0, 1] is a reported :class:`~animal_reid.season.ingest.Skip`
naming the file, the image index and the detection index.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .annotations import Annotation
from .ingest import (
    BAD_BOX,
    DETECTOR_FAILURE,
    DUPLICATE,
    MALFORMED,
    MISSING,
    OUTSIDE,
    UNREADABLE,
    IngestError,
    Skip,
    is_inside,
    photo_annotation,
    species_for,
)
from .ingest_exif import PhotoInfo, UnreadablePhoto, read_photo

logger = logging.getLogger(__name__)

__all__ = ["BOX_TOLERANCE", "FORMAT_VERSIONS", "ingest_megadetector", "load_megadetector", "normalised_box"]

#: the batch-output format versions read
FORMAT_VERSIONS = ("1.0", "1.1", "1.2", "1.3", "1.4", "1.5", "1.6")
#: how far (a share of the photo's side) a normalised box may pass the photo's edge before it is refused; boxes
#: within it are clipped (MegaDetector rounds coordinates to 4 decimals)
BOX_TOLERANCE = 0.002
_DEFAULT_CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_megadetector(json_path: str | os.PathLike) -> tuple[dict, set[str]]:
    """The parsed batch output and its animal category ids; :class:`IngestError` naming the file otherwise."""
    path = Path(json_path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as err:
        raise IngestError(f"{path}: {err.strerror or err}") from err
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise IngestError(f"{path}: not valid JSON ({' '.join(str(err).split())})") from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        got = sorted(map(str, data))[:10] if isinstance(data, dict) else f"a {type(data).__name__}"
        raise IngestError(
            f"{path}: not a MegaDetector batch output (expected an object with an 'images' list, got {got})"
        )
    info = data.get("info")
    version = info.get("format_version") if isinstance(info, dict) else None
    if version is None:
        raise IngestError(f"{path}: no info.format_version: not a MegaDetector batch output")
    if str(version) not in FORMAT_VERSIONS:
        raise IngestError(
            f"{path}: info.format_version {_shown(version)} is not supported (reads {', '.join(FORMAT_VERSIONS)})"
        )
    categories = data.get("detection_categories", _DEFAULT_CATEGORIES)
    if not isinstance(categories, dict):
        raise IngestError(
            f"{path}: detection_categories must be an object {{id: name}}, got {_shown(categories)}"
        )
    animal = {str(k) for k, v in categories.items() if isinstance(v, str) and v.strip().lower() == "animal"}
    if not animal:
        raise IngestError(f"{path}: detection_categories {_shown(categories)} has no 'animal' category")
    return data, animal


def normalised_box(bbox: Any, tolerance: float = BOX_TOLERANCE) -> list[float]:
    """A MegaDetector ``[x, y, w, h]`` (shares of the photo) checked and clipped to [0, 1]; :class:`ValueError`
    saying what is wrong."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        raise ValueError(f"bbox {_shown(bbox)} is not 4 numbers [x, y, w, h]")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        raise ValueError(f"bbox {_shown(bbox)} is not 4 numbers [x, y, w, h]")
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"bbox {_shown(bbox)} has a value that is not a finite number")
    if w <= 0 or h <= 0:
        raise ValueError(f"bbox {_shown(bbox)} has zero or negative size")
    if x < -tolerance or y < -tolerance or x + w > 1 + tolerance or y + h > 1 + tolerance:
        raise ValueError(f"bbox {_shown(bbox)} is out of range (x, y >= 0 and x + w, y + h <= 1)")
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(1.0, x + w), min(1.0, y + h)
    return [x0, y0, x1 - x0, y1 - y0]


def _conf(det: dict) -> float:
    conf = det.get("conf")
    if not isinstance(conf, int | float) or isinstance(conf, bool) or not 0.0 <= float(conf) <= 1.0:
        raise ValueError(f"conf {_shown(conf)} is not a number in [0, 1]")
    return float(conf)


class _Reader:
    """One batch output being read: where messages point, and the options."""

    def __init__(self, json_path: Path, root: Path, species, species_map, min_conf: float):
        self.json_path, self.root = json_path, root
        self.species, self.species_map, self.min_conf = species, species_map, min_conf
        self.skips: list[Skip] = []
        self.seen: dict[Path, int] = {}  # each photo (links followed) and its first images[] entry

    def skip(self, row: str, reason: str, problem: str) -> None:
        self.skips.append(Skip(str(self.json_path), row, reason, f"{self.json_path} {row}: {problem}"))

    def locate(self, i: int, entry: Any) -> tuple[str, Path] | None:
        """The photo of ``images[i]`` (relative POSIX path, absolute path), or None after reporting a skip."""
        row = f"images[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"].strip():
            self.skip(row, MALFORMED, f"expected an object with a 'file', got {_shown(entry)}")
            return None
        file = entry["file"]
        row = f"images[{i}] ({file!r})"
        if entry.get("failure") not in (None, ""):
            self.skip(
                row, DETECTOR_FAILURE, f"MegaDetector failed on this image: {_shown(entry['failure'], 120)}"
            )
            return None
        if "frame_rate" in entry or "frames_processed" in entry:
            self.skip(row, MALFORMED, "a video: only photos are ingested")
            return None
        path = Path(file.replace("\\", "/"))
        path = path if path.is_absolute() else self.root / path
        if not is_inside(path, self.root):
            self.skip(row, OUTSIDE, f"resolves outside the image folder {self.root}: not read")
            return None
        rel = Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(self.root))).as_posix()
        first = self.seen.setdefault(path.resolve(), i)
        if first != i:
            self.skip(
                row,
                DUPLICATE,
                f"the same photo as images[{first}]: skipped, images[{first}] kept",
            )
            return None
        return rel, path

    def animal_boxes(
        self, i: int, entry: dict, rel: str, animal: set[str]
    ) -> list[tuple[int, float, list[float]]]:
        """``(k, conf, normalised box)`` of each animal detection kept; bad ones reported."""
        detections = entry.get("detections")
        if not isinstance(detections, list):
            self.skip(f"images[{i}] ({rel!r})", MALFORMED, f"detections {_shown(detections)} is not a list")
            return []
        kept = []
        for k, det in enumerate(detections):
            row = f"images[{i}] ({rel!r}) detections[{k}]"
            if not isinstance(det, dict):
                self.skip(row, MALFORMED, f"expected an object, got {_shown(det)}")
                continue
            if str(det.get("category")) not in animal:
                continue
            try:
                conf = _conf(det)
                if conf < self.min_conf:
                    continue
                box = normalised_box(det.get("bbox"))
            except ValueError as err:
                self.skip(row, BAD_BOX if "bbox" in str(err) else MALFORMED, str(err))
                continue
            kept.append((k, conf, box))
        return kept

    def annotations(self, i: int, rel: str, path: Path, boxes) -> list[Annotation]:
        if not path.exists():
            self.skip(f"images[{i}] ({rel!r})", MISSING, f"no such photo {path}")
            return []
        try:
            info: PhotoInfo = read_photo(path)
        except UnreadablePhoto as err:
            self.skip(f"images[{i}] ({rel!r})", UNREADABLE, f"unreadable photo {path} ({err})")
            return []
        if info.note:
            logger.warning("%s: %s", path, info.note)
        width, height = info.size
        species = species_for(rel, self.species, self.species_map)
        return [
            photo_annotation(
                f"{rel}#{k}",
                path,
                info,
                box=[box[0] * width, box[1] * height, box[2] * width, box[3] * height],
                species=species,
                confidence=conf,
                source=f"{self.json_path.name} images[{i}] detections[{k}]",
            )
            for k, conf, box in boxes
        ]


def ingest_megadetector(
    json_path: str | os.PathLike,
    image_root: str | os.PathLike,
    species: str | None = None,
    species_map: Mapping[str, str] | None = None,
    min_conf: float = 0.2,
) -> tuple[list[Annotation], list[Skip]]:
    """One annotation per animal detection with ``conf >= min_conf`` in a MegaDetector batch output.

    ``image_root`` is the folder the ``file`` paths are relative to (absolute ones must lie inside it);
    ``species`` is every annotation's species, or ``species_map`` gives it per folder (relative to
    ``image_root``; ``species`` then for photos in no listed folder). Photos without an animal detection give no
    annotation; only photos with one are opened.
    """
    if not 0.0 <= min_conf <= 1.0:
        raise ValueError(f"min_conf must be in [0, 1], got {min_conf}")
    root = Path(image_root)
    if not root.is_dir():
        raise IngestError(f"{image_root}: no such folder")
    data, animal = load_megadetector(json_path)
    reader = _Reader(Path(json_path), root.resolve(), species, species_map, min_conf)
    annotations: list[Annotation] = []
    for i, entry in enumerate(data["images"]):
        located = reader.locate(i, entry)
        if located is None:
            continue
        rel, path = located
        boxes = reader.animal_boxes(i, entry, rel, animal)
        if boxes:
            annotations += reader.annotations(i, rel, path, boxes)
    logger.info(
        "%s: %d animal detections kept from %d images, %d skipped",
        json_path,
        len(annotations),
        len(data["images"]),
        len(reader.skips),
    )
    return annotations, reader.skips
