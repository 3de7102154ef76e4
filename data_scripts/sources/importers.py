"""Generic importers for the formats most re-ID data comes in: Wildbook / LILA COCO JSON and MiewID CSV.

A declaration of a COCO or MiewID source is then only metadata: subclass :class:`CocoSource` or
:class:`MiewIDCsvSource`, set ``info``, and the reading is shared.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

from ..schema import Record, normalize_species
from .base import Source, SourceInfo

logger = logging.getLogger(__name__)


def _bbox(value) -> tuple[float, float, float, float] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = ast.literal_eval(value)
    values = [float(v) for v in value]
    if len(values) != 4:
        raise ValueError(f"bbox must have 4 numbers [x, y, w, h], got {values}")
    return values[0], values[1], values[2], values[3]


def _theta(value) -> float:
    if value is None or value == "":
        return 0.0
    theta = float(value)
    return 0.0 if math.isnan(theta) else theta


class CocoSource(Source):
    """Wildbook / LILA COCO export: ``<folder>/annotations/*.json`` and ``<folder>/images/<subset>/``.

    One row per annotation: ``bbox`` ``[x, y, w, h]``, ``theta``, ``viewpoint``, the individual in ``name``
    (or ``individual_id`` / ``identity``), the species in ``species`` or the category's name. The encounter is
    the annotation's ``encounter`` / ``occurrence`` when present, else the photo (annotations of one image
    share it). Annotations with no individual are reported by validation and skipped.
    """

    annotation_glob = "annotations/*.json"

    def image_dirs(self, base: Path, json_path: Path) -> list[Path]:
        subset = json_path.stem.removeprefix("instances_")
        return [base / "images" / subset, base / "images", base]

    def scan(self, root: Path) -> Iterator[Record]:
        base = self.location(root)
        files = sorted(base.glob(self.annotation_glob))
        if not files:
            raise FileNotFoundError(f"{self.info.name}: no COCO JSON matching {base / self.annotation_glob}")
        for json_path in files:
            yield from self.read_coco(json_path, base)

    def read_coco(self, json_path: Path, base: Path) -> Iterator[Record]:
        with open(json_path, encoding="utf-8") as fh:
            coco = json.load(fh)
        for key in ("images", "annotations"):
            if key not in coco:
                raise ValueError(f"{json_path}: expected a COCO JSON with {key!r}, got keys {sorted(coco)}")
        categories = {c["id"]: c.get("name", str(c["id"])) for c in coco.get("categories", [])}
        images = {img["id"]: img for img in coco["images"]}
        dirs = self.image_dirs(base, json_path)
        default_species = self.info.species[0] if len(self.info.species) == 1 else None
        for ann in coco["annotations"]:
            img = images.get(ann.get("image_id"))
            if img is None:
                logger.warning(
                    "%s: annotation %s points at unknown image %s",
                    json_path.name,
                    ann.get("id"),
                    ann.get("image_id"),
                )
                continue
            file_name = img["file_name"]
            path = next((d / file_name for d in dirs if (d / file_name).exists()), dirs[0] / file_name)
            species = ann.get("species") or categories.get(ann.get("category_id")) or default_species or ""
            identity = ann.get("name") or ann.get("individual_id") or ann.get("identity")
            encounter = ann.get("encounter") or ann.get("occurrence") or f"image:{img['id']}"
            yield Record(
                source=self.info.name,
                species=normalize_species(species),
                identity=str(identity) if identity not in (None, "", "____") else None,
                image_id=f"{json_path.stem}/{ann.get('uuid') or ann['id']}",
                path=path,
                viewpoint=ann.get("viewpoint") or None,
                encounter=str(encounter),
                bbox=_bbox(ann.get("bbox")),
                theta=_theta(ann.get("theta")),
            )


class MiewIDCsvSource(Source):
    """The MiewID training CSV layout: one row per annotation.

    Columns read (aliases in brackets): ``file_path`` [``file_name``, ``path``] relative to the source
    folder or absolute, ``name`` [``individual_id``, ``identity``], ``species``, ``viewpoint``, ``bbox``
    (``"[x, y, w, h]"``) or ``x``/``y``/``w``/``h``, ``theta``, ``encounter`` [``occurrence``, ``date``] and
    ``annot_uuid`` [``uuid``, ``annotation_id``] as the image id (else the row number).
    """

    csv_glob = "*.csv"

    def scan(self, root: Path) -> Iterator[Record]:
        base = self.location(root)
        files = sorted(base.glob(self.csv_glob)) if base.is_dir() else [base]
        if not files:
            raise FileNotFoundError(f"{self.info.name}: no MiewID CSV matching {base / self.csv_glob}")
        for csv_path in files:
            folder = csv_path.parent
            with open(csv_path, newline="", encoding="utf-8-sig") as fh:
                for i, row in enumerate(csv.DictReader(fh)):
                    yield self.read_row(row, i, csv_path, folder)

    @staticmethod
    def _first(row: dict, *names: str):
        for name in names:
            if row.get(name) not in (None, ""):
                return row[name]
        return None

    def read_row(self, row: dict, index: int, csv_path: Path, folder: Path) -> Record:
        file_path = self._first(row, "file_path", "file_name", "path") or ""
        path = Path(file_path)
        if not path.is_absolute():
            path = folder / path
        if row.get("bbox"):
            bbox = _bbox(row["bbox"])
        elif all(row.get(k) not in (None, "") for k in "xywh"):
            bbox = _bbox([row["x"], row["y"], row["w"], row["h"]])
        else:
            bbox = None
        identity = self._first(row, "name", "individual_id", "identity")
        default_species = self.info.species[0] if len(self.info.species) == 1 else ""
        return Record(
            source=self.info.name,
            species=normalize_species(self._first(row, "species") or default_species),
            identity=identity,
            image_id=f"{csv_path.stem}/{self._first(row, 'annot_uuid', 'uuid', 'annotation_id') or index}",
            path=path,
            viewpoint=self._first(row, "viewpoint"),
            encounter=self._first(row, "encounter", "occurrence", "date"),
            bbox=bbox,
            theta=_theta(self._first(row, "theta")),
        )


def _adhoc(cls, name: str, folder, license: str, citation: str, species) -> Source:
    src = cls()
    src.info = SourceInfo(
        name=name,
        species=tuple(species),
        license=license,
        citation=citation,
        url="",
        version="local",
        folder=str(folder),
    )
    return src


def coco_source(
    name: str, folder: str | Path, *, license: str = "unknown", citation: str = "", species=()
) -> Source:
    """An ad-hoc COCO source (not registered): ``folder`` holds ``annotations/`` and ``images/``."""
    return _adhoc(CocoSource, name, folder, license, citation, species)


def miewid_source(
    name: str, csv_path: str | Path, *, license: str = "unknown", citation: str = "", species=()
) -> Source:
    """An ad-hoc MiewID CSV source (not registered): ``csv_path`` is the CSV or a folder of CSVs."""
    return _adhoc(MiewIDCsvSource, name, csv_path, license, citation, species)
