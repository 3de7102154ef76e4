"""What a source declaration is: metadata as plain data plus one ``scan`` that maps files to records."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..download import Download, fetch_and_extract
from ..schema import Record
from ..validate import OUTSIDE_SOURCE

logger = logging.getLogger(__name__)


UNIDENTIFIED = "unidentified animal"
"""Skip reason of a row whose identity says nobody identified the animal (Kaggle's ``new_whale``, wildlife-datasets'
``unknown``): not an identity, so not a row of a re-ID corpus."""


class SourceError(ValueError):
    """A whole file of a source cannot be read (not JSON, no header, wrong shape): the build stops, naming it."""


def is_inside(path: Path | str, folder: Path | str) -> bool:
    """Whether ``path`` resolves (``..`` and symlinks followed) to ``folder`` or below it; both are resolved."""
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte: not a path to read
        return False


def file_digest(path: Path | str, folder: Path | str) -> str | None:
    """The sha256 of a file inside ``folder`` (byte-identical copies share it); None for a file outside it (never
    read) or one that cannot be read (validation reports it)."""
    if not is_inside(path, folder):
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def outside_detail(path: Path | str, folder: Path | str) -> str:
    """How a path refused by :func:`is_inside` is described: a symbolic link (the file's or a folder's on its
    way) "points outside the source folder"; any other path "resolves outside the source folder"."""
    lexical = Path(os.path.abspath(path))  # ".." folded, links not followed
    if lexical.is_relative_to(os.path.abspath(folder)) or lexical.is_relative_to(Path(folder).resolve()):
        return "is a symbolic link that points outside the source folder"
    return "resolves outside the source folder"


@dataclass(frozen=True)
class SourceInfo:
    """Everything a user needs to know about a source before reading a single file.

    ``reported_images`` / ``reported_identities`` are the counts the source publishes (or, for the six local
    sources, the counts of the folder as downloaded); the build report compares them with what was read.
    ``label_fixes`` maps an original identity to the corrected one and ``exclude`` lists original image ids
    to drop (validation skips them and reports ``exclude_reason``): label fixes are data, declared here,
    never edits buried in a reader.
    """

    name: str
    species: tuple[str, ...]
    license: str
    citation: str
    url: str
    version: str
    folder: str
    description: str = ""
    reported_images: int | None = None
    reported_identities: int | None = None
    downloads: tuple[Download, ...] = ()
    label_fixes: Mapping[str, str] = field(default_factory=dict)
    exclude: frozenset[str] = frozenset()
    exclude_reason: str = "excluded by the source declaration"


class Source:
    """Base class of every declaration. Subclasses set ``info`` and implement :meth:`scan`."""

    info: SourceInfo

    def scan(self, root: Path) -> Iterator[Record]:
        """Yield one :class:`Record` per image, with the source's original ids (not namespaced)."""
        raise NotImplementedError

    def location(self, root: Path) -> Path:
        return Path(root) / self.info.folder

    def available(self, root: Path) -> bool:
        return self.location(root).exists()

    def folder(self, root: Path) -> Path:
        """The folder every file of the source lies in: its location, or the folder of a location that is a file."""
        location = self.location(root)
        return location if location.is_dir() else location.parent

    def skipped(self, image_id: str, reason: str, detail: str) -> Record:
        """A record that validation reports as skipped with ``reason``: how a reader reports a row it cannot
        read (``detail`` says where and why) and goes on with the next one."""
        species = self.info.species[0] if len(self.info.species) == 1 else "unknown"
        return Record(
            source=self.info.name,
            species=species,
            identity=None,
            image_id=image_id,
            extra={"invalid": (reason, detail)},
        )

    def records(self, root: Path) -> Iterator[Record]:
        """Scan, refuse files outside the source folder, apply the declared label fixes and exclusions, and
        namespace ids."""
        if not self.available(root):
            raise FileNotFoundError(
                f"source {self.info.name!r}: expected its files at {self.location(root)}; "
                f"download them with `python -m data_scripts.build --download --sources {self.info.name}`"
                + (f" or from {self.info.url}" if self.info.url else "")
            )
        folder = self.folder(Path(root)).resolve()
        for rec in self.scan(Path(root)):
            if rec.path is not None and not is_inside(rec.path, folder):  # never read: validation reports it
                rec.extra["invalid"] = (
                    OUTSIDE_SOURCE,
                    f"{rec.path} {outside_detail(rec.path, folder)} {folder}",
                )
                rec.path = None
            if rec.image_id in self.info.exclude:  # validation skips it and reports the reason
                rec.extra["excluded"] = self.info.exclude_reason
            if isinstance(rec.identity, str):
                rec.identity = self.info.label_fixes.get(rec.identity, rec.identity)
            if not rec.license:
                rec.license = self.info.license
            yield rec.namespace()

    def download(self, root: Path, *, progress: bool = True) -> list[Path]:
        """Fetch and extract every declared download under ``root``."""
        if not self.info.downloads:
            raise ValueError(f"source {self.info.name!r} declares no plain download (see {self.info.url})")
        return [fetch_and_extract(d, Path(root), progress=progress) for d in self.info.downloads]


SOURCES: dict[str, Source] = {}


def register(cls: type[Source]) -> type[Source]:
    """Class decorator: add one instance of a declaration to :data:`SOURCES` under ``info.name``."""
    name = cls.info.name
    if name in SOURCES:
        raise ValueError(f"source {name!r} declared twice")
    SOURCES[name] = cls()
    return cls


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise KeyError(f"unknown source {name!r}; expected one of {sorted(SOURCES)}") from None
