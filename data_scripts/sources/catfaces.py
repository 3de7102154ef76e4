"""Cat-Faces-Identification: face crops of 23 cats, with bursts of one moment found by file order and hashing."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..schema import Record
from .base import Source, SourceError, SourceInfo, file_digest, is_inside, register

logger = logging.getLogger(__name__)

# The burst rule (see CatFaces): two crops of one cat are one moment when their file numbers are at most
# BURST_MAX_GAP apart and their 64-bit dHashes differ in at most BURST_MAX_DHASH bits or their 8x8 colour
# thumbnails differ by at most BURST_MAX_COLOUR (mean absolute difference per channel, 0-255).
BURST_MAX_GAP = 2
BURST_MAX_DHASH = 12
BURST_MAX_COLOUR = 18.0

_SUBJECT = re.compile(r"^s(?P<n>\d+)$")
_LINE = re.compile(r"^(?P<subject>s\d+)\s+(?P<name>\S.*?)\s*$")


@dataclass(frozen=True)
class Signature:
    """What the burst rule compares: a 64-bit difference hash and an 8x8 RGB thumbnail (192 bytes)."""

    dhash: int
    thumb: bytes

    def dhash_distance(self, other: Signature) -> int:
        return (self.dhash ^ other.dhash).bit_count()

    def colour_distance(self, other: Signature) -> float:
        return sum(abs(a - b) for a, b in zip(self.thumb, other.thumb, strict=True)) / len(self.thumb)


def signature(path: Path | str) -> Signature:
    """The :class:`Signature` of an image file: dHash of the 9x8 greyscale reduction (bit set where a pixel is
    brighter than its right neighbour) and the 8x8 RGB reduction, both with Lanczos resampling."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    grey = rgb.convert("L").resize((9, 8), Image.Resampling.LANCZOS).tobytes()
    bits = 0
    for y in range(8):
        for x in range(8):
            bits = (bits << 1) | (grey[y * 9 + x + 1] > grey[y * 9 + x])
    return Signature(bits, rgb.resize((8, 8), Image.Resampling.LANCZOS).tobytes())


def same_moment(a: Signature, b: Signature) -> bool:
    """Whether two crops (of one cat, neighbouring file numbers) look like one moment by the burst rule."""
    return a.dhash_distance(b) <= BURST_MAX_DHASH or a.colour_distance(b) <= BURST_MAX_COLOUR


def burst_groups(items: Sequence[tuple[int, Signature | None]]) -> list[list[int]]:
    """The bursts of one cat: ``items`` are (file number, signature or None when unreadable); runs of crops whose
    file numbers are at most :data:`BURST_MAX_GAP` apart and each :func:`same_moment` as the one before form one
    group. Returns the file numbers of each group (singletons included), in file order."""
    groups: list[list[int]] = []
    previous: tuple[int, Signature | None] | None = None
    for number, sig in sorted(items, key=lambda item: item[0]):
        linked = (
            previous is not None
            and number - previous[0] <= BURST_MAX_GAP
            and sig is not None
            and previous[1] is not None
            and same_moment(previous[1], sig)
        )
        if linked:
            groups[-1].append(number)
        else:
            groups.append([number])
        previous = (number, sig)
    return groups


def merge_copies(groups: Sequence[list[int]], digests: Mapping[int, str | None]) -> list[list[int]]:
    """Join the groups (lists of file numbers) that hold byte-identical files (same ``digests`` value, None:
    unknown), wherever they are in file order: a copy is the same moment as its original. In file order."""
    parent = list(range(len(groups)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for gi, group in enumerate(groups):
        for number in group:
            digest = digests.get(number)
            if digest is None:
                continue
            if digest in owner:
                parent[find(gi)] = find(owner[digest])
            else:
                owner[digest] = gi
    merged: dict[int, list[int]] = defaultdict(list)
    for gi, group in enumerate(groups):
        merged[find(gi)].extend(group)
    return sorted((sorted(g) for g in merged.values()), key=lambda g: g[0])


def read_subject_names(path: Path) -> dict[str, str]:
    """``{"s1": "Tigro", ...}`` from ``subject-to-name.txt`` (``s<N>``, whitespace, name per line; blank lines
    ignored). A line of another shape, or a subject listed twice with two names, raises :class:`SourceError`
    naming the file and the line(s)."""
    if not path.is_file():
        raise SourceError(f"source 'catfaces': {path} not found: expected lines 's<N><tab><name>'")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise SourceError(f"source 'catfaces': {path} is not UTF-8 text ({err})") from err
    names: dict[str, str] = {}
    where: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = _LINE.match(line.strip())
        if match is None:
            raise SourceError(
                f"source 'catfaces': {path} line {number}: expected 's<N>' and a name separated by a tab, "
                f"got {line[:60]!r}"
            )
        subject, name = match["subject"], match["name"]
        if subject in names and names[subject] != name:
            raise SourceError(
                f"source 'catfaces': {path} lines {where[subject]} and {number} name {subject} twice "
                f"({names[subject]!r} and {name!r})"
            )
        names[subject], where[subject] = name, number
    return names


@register
class CatFaces(Source):
    """Cat-Faces-Identification: ``images/dataset/cropped/s<N>/<n>.jpg``, one folder per cat, named in
    ``dataset_info/subject-to-name.txt``; the folder (``s<N>``) is the identity, the cat's name is kept as extra.

    Encounters, the burst rule: the photos carry no date, but the crops of one moment (a burst, or several photos
    of one sitting) got neighbouring file numbers. Per cat, in file-number order, a crop joins the previous one's
    encounter when (1) their numbers are at most 2 apart (the source removed some ``discard`` files, leaving holes
    of one) and (2) they look alike: a 64-bit dHash (9x8 greyscale, Lanczos) at most 12 bits apart, or 8x8 RGB
    thumbnails at most 18 apart (mean absolute difference per channel, 0-255). The colour test catches dark
    bursts, whose dHash is noise. Both thresholds are the 3rd percentile of the same distance between crops of
    one cat at least 5 numbers apart (other moments, mostly; 12 bits and 17.5): for dHash, 12 is also where the
    excess of neighbouring pairs over that baseline stops growing. Byte-identical files of one cat join one
    encounter too, wherever they are numbered (``s1/15.jpg`` is ``s1/27.jpg``). On the shared copy 42 of the 338
    neighbouring pairs are linked: 371 crops make 328 encounters, 31 of them of several crops (25 of 2, 4 of 3,
    ``s1`` 15+23+25+26+27, and ``s15`` 7-13, dark photos of a dark cat; data_scripts/README.md). Merging too
    much costs queries, merging too little inflates scores: the rule errs towards merging. Each encounter stays
    on one side of every split, and evaluation does not let a crop find its burst mates. A crop that cannot be
    read, or whose name is not a number, is its own encounter.
    """

    info = SourceInfo(
        name="catfaces",
        species=("cat",),
        license="MIT",
        citation="""@misc{catfaces2020,
  title        = {Cat Faces Identification (Biometric Systems project, Winter 2020)},
  author       = {Giacomo P. and Davide S. and Sara K.},
  year         = {2020},
  howpublished = {\\url{https://github.com/gpriamo/Cat-Faces-Identification}},
  note         = {commit 5bf662d; GitHub users Pg96, dsforza96, sarettak}
}""",
        url="https://github.com/gpriamo/Cat-Faces-Identification",
        version="5bf662d (cropped/, aligned copies and discard files left out)",
        folder="Cat-Faces-Identification",
        description="Face crops of 23 domestic cats from phone photos, 12-22 each.",
        reported_images=371,
        reported_identities=23,
    )

    crops_folder = "images/dataset/cropped"
    names_file = "dataset_info/subject-to-name.txt"

    def scan(self, root: Path) -> Iterator[Record]:
        base = self.location(root)
        names = read_subject_names(base / self.names_file)
        crops = base / self.crops_folder
        if not crops.is_dir():
            raise SourceError(f"source {self.info.name!r}: {crops} not found: expected s<N>/<n>.jpg folders")
        folders = sorted((d for d in crops.iterdir() if d.is_dir()), key=_subject_order)
        for folder in folders:
            if folder.name not in names:
                logger.warning(
                    "catfaces: %s is not named in %s: kept as %s", folder, self.names_file, folder.name
                )
            yield from self.scan_cat(folder, base, names.get(folder.name))

    def scan_cat(self, folder: Path, base: Path, name: str | None) -> Iterator[Record]:
        """The records of one cat's folder (inside the source folder ``base``), with their encounters: bursts
        (:func:`burst_groups`) joined where they hold byte-identical files (:func:`merge_copies`)."""
        files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        numbered = {int(p.stem): p for p in files if p.stem.isdigit()}
        for p in files:
            if not p.stem.isdigit():
                logger.warning("catfaces: %s is not named <number>.jpg: own encounter", p)
        bursts = burst_groups([(n, _signature_or_none(p, base)) for n, p in numbered.items()])
        groups = merge_copies(bursts, {n: file_digest(p, base) for n, p in numbered.items()})
        encounter: dict[Path, str] = {}
        for group in groups:
            if len(group) > 1:
                for n in group:
                    encounter[numbered[n]] = f"{folder.name}/crops{'+'.join(map(str, group))}"
        for p in files:
            yield Record(
                source=self.info.name,
                species="cat",
                identity=folder.name,
                image_id=p.relative_to(base / self.crops_folder).as_posix(),
                path=p,
                viewpoint="face",
                encounter=encounter.get(p),
                extra={"name": name} if name else {},
            )


def _subject_order(folder: Path) -> tuple[int, str]:
    match = _SUBJECT.match(folder.name)
    return (int(match["n"]) if match else 1 << 30, folder.name)


def _signature_or_none(path: Path, folder: Path) -> Signature | None:
    if not is_inside(path, folder):  # never read: records() reports the path
        return None
    try:
        return signature(path)
    except Exception as err:  # validation reports the file; here it only cannot join a burst
        logger.debug("catfaces: cannot hash %s (%s): own encounter", path, err)
        return None
