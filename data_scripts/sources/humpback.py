"""HumpbackWhaleID: fluke photos in Kaggle's "Humpback Whale Identification" layout (``train/`` + ``train.csv``)."""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from ..schema import Record
from ..validate import MALFORMED_ROW, MISSING_FILE
from .base import UNIDENTIFIED, Source, SourceError, SourceInfo, file_digest, register

logger = logging.getLogger(__name__)

_CITATION = """@misc{humpback-whale-identification,
  author       = {Addison Howard and inversion and Ken Southerland and Ted Cheeseman},
  title        = {Humpback Whale Identification},
  year         = {2018},
  publisher    = {Kaggle},
  howpublished = {\\url{https://kaggle.com/competitions/humpback-whale-identification}},
  note         = {photos from Happywhale; the subset as committed in BrunoLeaoT/Photo-Id-Deep-Learning @ f3e4df5}
}"""


def share_copies(records: list[Record], folder: Path) -> None:
    """Give byte-identical files of one identity one encounter (``<identity>/copy:<sha256 prefix>``): a copy must
    not land in another split than its original, nor be the match its original finds in evaluation."""
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for rec in records:
        if rec.path is not None and rec.identity and "invalid" not in rec.extra:
            digest = file_digest(rec.path, folder)
            if digest is not None:
                groups[(rec.identity, digest)].append(rec)
    for (identity, digest), group in groups.items():
        if len(group) > 1:
            for rec in group:
                rec.encounter = f"{identity}/copy:{digest[:16]}"


@register
class HumpbackWhaleID(Source):
    """HumpbackWhaleID: ``train/<image>.jpg`` listed in ``train.csv`` (columns ``Image``, ``Id``).

    The underside of the tail fluke, photographed from whale-watching boats (long side about 200 px in the shared
    copy, some greyscale). The shared copy keeps whales with at least 4 photos, at most 8 each; Kaggle's
    ``new_whale`` rows (unidentified whales) are dropped there and skipped here if present. The table records no
    date or sighting: each photo is its own encounter, so splits are by identity only, except byte-identical
    copies of one whale's photo, which share one (one pair in the shared copy: 7f7a63b8a.jpg, 60a3f2422.jpg).

    Rows the table cannot give are skipped and reported, naming ``train.csv`` and the line: an empty ``Image`` or
    ``Id`` (``malformed row``), an ``Image`` not found in ``train/`` (``missing file``), ``new_whale``
    (``unidentified animal``); a photo listed twice is an ambiguity validation reports naming both lines. A
    missing ``train.csv``, one that is not UTF-8 text or lacks the two columns stops the build with one line.
    Files in ``train/`` that the table does not list are not read (Kaggle's full set has more).
    """

    info = SourceInfo(
        name="humpbackwhaleid",
        species=("humpback",),
        license="competition data: research use only, no redistribution",
        citation=_CITATION,
        url="https://www.kaggle.com/competitions/humpback-whale-identification",
        version="Kaggle training set; whales with 4-8 photos (BrunoLeaoT/Photo-Id-Deep-Learning @ f3e4df5)",
        folder="HumpbackWhaleID",
        description="Fluke photos of 1,078 humpback whales, 4 to 8 each.",
        reported_images=6658,
        reported_identities=1078,
    )

    table_name = "train.csv"
    images_folder = "train"

    def scan(self, root: Path) -> Iterator[Record]:
        base = self.location(root)
        table = base / self.table_name
        where = f"source {self.info.name!r}: {table}"
        if not table.is_file():
            raise SourceError(f"{where} not found: expected Kaggle's table with columns Image,Id")
        try:
            with open(table, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                self._check_header(reader.fieldnames, where)
                records = [self.read_row(row, f"{table.name} line {reader.line_num}", base) for row in reader]
        except UnicodeDecodeError as err:
            raise SourceError(f"{where} is not UTF-8 text ({err})") from err
        except csv.Error as err:
            raise SourceError(f"{where} is not readable CSV ({err})") from err
        share_copies(records, base)
        yield from records

    @staticmethod
    def _check_header(fields, where: str) -> None:
        if not fields:
            raise SourceError(f"{where} is empty: expected a header row Image,Id")
        missing = [c for c in ("Image", "Id") if c not in fields]
        if missing:
            raise SourceError(
                f"{where}: expected columns Image,Id; {missing} missing (got {list(fields)[:10]})"
            )

    def read_row(self, row: dict, line: str, base: Path) -> Record:
        """One table row as a record, or a skipped record saying which line and why."""
        image, whale = (row.get("Image") or "").strip(), (row.get("Id") or "").strip()
        image_id = image or f"<{line}>"
        if not image or not whale:
            empty = " and ".join(c for c, v in (("Image", image), ("Id", whale)) if not v)
            return self.skipped(image_id, MALFORMED_ROW, f"{line}: empty {empty}")
        if whale == "new_whale":
            return self.skipped(image_id, UNIDENTIFIED, f"{line}: Id new_whale (a whale nobody identified)")
        path = base / self.images_folder / image
        if not path.is_file() and not path.is_symlink():  # a link outside the folder: reported by records()
            return self.skipped(
                image_id, MISSING_FILE, f"{line} names {image!r}, not found in {base / self.images_folder}"
            )
        return Record(
            source=self.info.name,
            species="humpback",
            identity=whale,
            image_id=image,
            path=path,
            viewpoint="fluke",
            extra={"row": line},
        )
