"""The six sources laid out in ``../shared/data``, read from the layout a fresh download gives.

Each class is a declaration: ``info`` (what the source is, licence, citation, counts, download) and a
``scan`` that maps the source's own folders and file names to records, handling its quirks.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from ..download import Download
from ..schema import Record
from .base import Source, SourceInfo, register

logger = logging.getLogger(__name__)

_WILDLIFE_REID_CITATION = """@inproceedings{dlamini2020automated,
  title     = {Automated identification of individuals in wildlife population using Siamese neural networks},
  author    = {Dlamini, Nkosikhona and van Zyl, Terence L.},
  booktitle = {2020 7th International Conference on Soft Computing \\& Machine Intelligence (ISCMI)},
  pages     = {224--228},
  year      = {2020},
  doi       = {10.1109/ISCMI51676.2020.9311574}
}"""

# Both LionData and NyalaData come from one GitHub repository; its archive of the pinned commit is
# extracted as `wildlife_reidentification-main/`, the folder a download of the main branch gives.
_WILDLIFE_REID_DOWNLOAD = Download(
    url="https://github.com/tvanzyl/wildlife_reidentification/archive/d58c9b5.zip",
    filename="wildlife_reidentification-d58c9b5.zip",
    extract_to="wildlife_reidentification-main",
)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


@register
class LionData(Source):
    """LionData: crops of lion body parts; the part (and flank) is in the file name.

    Quirks: files end in ``.png`` but are JPEG-encoded (the stored file name gets the real extension from
    validation, which sniffs the format); the part names come in mixed case (``Left_Face``, ``left_face``).
    The source's own ``train``/``val`` folders are its zero-shot split and are ignored: identity is the folder.
    No sighting is recorded, so each image is its own encounter.
    """

    info = SourceInfo(
        name="liondata",
        species=("lion",),
        license="unknown (none stated by the source)",
        citation=_WILDLIFE_REID_CITATION,
        url="https://github.com/tvanzyl/wildlife_reidentification",
        version="d58c9b5",
        folder="wildlife_reidentification-main/Lion_Data_Zero",
        description="Crops (~130 px) of one body part each of 94 African lions.",
        reported_images=740,
        reported_identities=94,
        downloads=(_WILDLIFE_REID_DOWNLOAD,),
    )

    def scan(self, root: Path) -> Iterator[Record]:
        base = self.location(root)
        for path in _files(base, (".png", ".jpg", ".jpeg")):
            lion = path.parent.name
            part = (
                path.stem[len(lion) + 1 :].lower() if path.stem.startswith(lion + "_") else path.stem.lower()
            )
            viewpoint = "left" if part.startswith("left") else "right" if part.startswith("right") else None
            yield Record(
                source=self.info.name,
                species="lion",
                identity=lion,
                image_id=_rel(path, base),
                path=path,
                viewpoint=viewpoint,
                extra={"part": part},
            )


_NYALA_NAME = re.compile(
    r"^(?P<sighting>\d+)_(?P<flank>left|right)photo(?:\((?P<copy>\d+)\))?$", re.IGNORECASE
)


@register
class NyalaData(Source):
    """NyalaData: field photos named ``<sighting>_<left|right>photo.jpg``.

    The sighting is the encounter (left and right photos of one sighting share it) and the flank is the
    viewpoint. Quirk: some folders hold byte-identical copies named ``..photo(1).jpg``; they keep the sighting
    of their original, so they can never straddle splits (validation reports them as duplicates).
    """

    info = SourceInfo(
        name="nyaladata",
        species=("nyala",),
        license="unknown (none stated by the source)",
        citation=_WILDLIFE_REID_CITATION,
        url="https://github.com/tvanzyl/wildlife_reidentification",
        version="d58c9b5",
        folder="wildlife_reidentification-main/Nyala_Data_Zero",
        description="Field photos of 237 nyala, left or right flank, 384 px long side in the shared copy.",
        reported_images=1942,
        reported_identities=237,
        downloads=(_WILDLIFE_REID_DOWNLOAD,),
    )

    def scan(self, root: Path) -> Iterator[Record]:
        base = self.location(root)
        for path in _files(base, (".jpg", ".jpeg", ".png")):
            match = _NYALA_NAME.match(path.stem)
            if match is None:
                logger.warning(
                    "nyaladata: %s does not match <sighting>_<flank>photo: own encounter", path.name
                )
            yield Record(
                source=self.info.name,
                species="nyala",
                identity=path.parent.name,
                image_id=_rel(path, base),
                path=path,
                viewpoint=match["flank"].lower() if match else None,
                encounter=f"sighting{match['sighting']}" if match else None,
            )


# Cattle file names: video frames from fixed cameras in several spellings; the clip (or the photo series of
# one day) is the encounter. Tried in order; the first match names the encounter.
_CATTLE_ENCOUNTER_RULES: tuple[tuple[str, re.Pattern], ...] = (
    ("clip", re.compile(r"^(?P<enc>\d{14}_\d{14})_")),  # <start>_<end>_<frame>_cls0 / ..._<date>_<time>_...
    ("clip", re.compile(r"^(?P<enc>J\d+_[\d.]+_\d+_\d+)_manual_")),  # J40_2025.03.2716_34_43_manual_...
    ("day", re.compile(r"^(?P<enc>\d{1,4})-[\d-]+(?:_?-?\(\d+\))?$")),  # 417-1-6-5(5): photos of day 417
    ("undated", re.compile(r"^(?P<enc>)\d+(?:\(\d+\))?$")),  # 004.jpg: undated stills, one group per cow
)


@register
class Holstein2025(Source):
    """Holstein cattle faces (Cattle-ID, ``datasets_v2``): one folder per ear tag.

    Most images are frames of video clips (``<start>_<end>_<frame>_cls0.jpg``); the clip is the encounter,
    or frames of one clip land in train and test and scores are inflated. Other spellings (``J40_<time>_manual_``
    clips, ``417-1-6-5(3).jpg`` photo series of a day, bare ``004.jpg`` stills) are mapped by
    :data:`_CATTLE_ENCOUNTER_RULES`. ``iddataset-split.txt`` gives per-cow counts, not file lists, so it is
    not used for splitting.
    """

    info = SourceInfo(
        name="holstein2025",
        species=("cattle",),
        license="unknown (none stated by the source)",
        citation="""@misc{holstein2025cattleid,
  title        = {Cattle-ID: Holstein dairy cow face identification dataset (datasets\\_v2)},
  author       = {{JZM-shuimu}},
  year         = {2025},
  howpublished = {\\url{https://github.com/JZM-shuimu/Cattle-ID}},
  note         = {commit 94127c6}
}""",
        url="https://github.com/JZM-shuimu/Cattle-ID",
        version="94127c6",
        folder="Cattle-ID-main/datasets_v2",
        description="Face crops of 82 Holstein cows from fixed side cameras, mostly video frames.",
        reported_images=3621,
        reported_identities=82,
        downloads=(
            Download(
                url="https://github.com/JZM-shuimu/Cattle-ID/archive/94127c6.zip",
                filename="Cattle-ID-94127c6.zip",
                extract_to="Cattle-ID-main",
            ),
        ),
    )

    @staticmethod
    def encounter_of(stem: str) -> str | None:
        for kind, pattern in _CATTLE_ENCOUNTER_RULES:
            match = pattern.match(stem)
            if match is not None:
                return f"{kind}:{match['enc']}" if match["enc"] else kind
        return None

    def scan(self, root: Path) -> Iterator[Record]:
        base = self.location(root)
        for path in _files(base, (".jpg", ".jpeg", ".png")):
            cow = path.parent.name
            encounter = self.encounter_of(path.stem)
            if encounter is None:
                logger.warning("holstein2025: no encounter rule for %s: own encounter", path.name)
            yield Record(
                source=self.info.name,
                species="cattle",
                identity=cow,
                image_id=_rel(path, base),
                path=path,
                # encounters are per cow: several cows may appear in one clip, but a clip of one cow is the unit
                encounter=f"{cow}/{encounter}" if encounter is not None else None,
            )


@register
class DogFaceNet(Source):
    """DogFaceNet (``after_4_bis``): aligned 224x224 dog face crops, one folder per dog.

    Quirk: a few folders hold files named after another id (``213/348.0.jpg``); the folder is the label, as
    in the source's own loader. No sighting is recorded: each image is its own encounter.
    """

    info = SourceInfo(
        name="dogfacenet",
        species=("dog",),
        license="CC BY 4.0",
        citation="""@inproceedings{mougeot2019deep,
  title     = {A Deep Learning Approach for Dog Face Verification and Recognition},
  author    = {Mougeot, Guillaume and Li, Dewei and Jia, Shuai},
  booktitle = {PRICAI 2019: Trends in Artificial Intelligence},
  pages     = {418--430},
  year      = {2019},
  publisher = {Springer},
  doi       = {10.1007/978-3-030-29894-4_34}
}""",
        url="https://github.com/GuillaumeMougeot/DogFaceNet",
        version="after_4_bis (as committed in fcernafukuzaki/DogFaceNet-Dataset @ 3456b2b)",
        folder="DogFaceNet/after_4_bis",
        description="Aligned face crops of 1,393 dogs.",
        reported_images=8363,
        reported_identities=1393,
        downloads=(
            Download(
                url="https://github.com/fcernafukuzaki/DogFaceNet-Dataset/archive/3456b2b.zip",
                filename="DogFaceNet-Dataset-3456b2b.zip",
                extract_to="DogFaceNet",
            ),
        ),
    )

    def scan(self, root: Path) -> Iterator[Record]:
        base = self.location(root)
        for path in _files(base, (".jpg", ".jpeg", ".png")):
            yield Record(
                source=self.info.name,
                species="dog",
                identity=path.parent.name,
                image_id=_rel(path, base),
                path=path,
            )


@register
class MacaqueFaces(Source):
    """MacaqueFaces: 100x100 face crops from video, listed in ``MacaqueFaces_ImageInfo.csv``.

    The CSV's ``DateTaken`` is the encounter (frames of one day's video are near-duplicates: split by date),
    its ``Path`` + ``FileName`` locate the file and ``Category`` (Random, Good, Obscured, ...) is kept as extra.
    """

    info = SourceInfo(
        name="macaquefaces",
        species=("macaque",),
        license="no redistribution without permission of the authors",
        citation="""@article{witham2018automated,
  title   = {Automated face recognition of rhesus macaques},
  author  = {Witham, Claire L.},
  journal = {Journal of Neuroscience Methods},
  volume  = {300},
  pages   = {157--165},
  year    = {2018},
  doi     = {10.1016/j.jneumeth.2017.07.020}
}""",
        url="https://github.com/clwitham/MacaqueFaces",
        version="images: sdhar16/MacaqueFaceRecognition; CSV: clwitham/MacaqueFaces",
        folder="MacaqueFaces",
        description="Face crops of 34 rhesus macaques with photo dates.",
        reported_images=6280,
        reported_identities=34,
        # Byte-identical frames filed under two different monkeys (found by the build's duplicate check):
        # which label is right is unknown, so both copies of each pair are excluded.
        exclude=frozenset(
            {
                "MacaqueFaces/Good/Venus/Macaque_Face_5972.jpg",
                "MacaqueFaces/Random/Umbrella/Macaque_Face_5657.jpg",
                "MacaqueFaces/Random/Umbrella/Macaque_Face_5713.jpg",
                "MacaqueFaces/Random/Venus/Macaque_Face_6085.jpg",
            }
        ),
        exclude_reason="byte-identical frame filed under two identities (Venus / Umbrella)",
    )

    def scan(self, root: Path) -> Iterator[Record]:
        base = self.location(root)
        table = base / "MacaqueFaces_ImageInfo.csv"
        with open(table, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                rel = Path("MacaqueFaces") / row["Path"].strip("/") / row["FileName"]
                yield Record(
                    source=self.info.name,
                    species="macaque",
                    identity=row["ID"],
                    image_id=rel.as_posix(),
                    path=base / rel,
                    encounter=f"{row['ID']}/{row['DateTaken']}",
                    extra={
                        "category": row["Category"],
                        "group": row["Group"],
                        "row": f"{table.name} line {reader.line_num}",
                    },
                )


@register
class FaroPig(Source):
    """FaroPigReID (33-pig gallery sample): ``Galleries/<clip>/Images/<letter>/*.png`` plus masks.

    Quirk: a letter names a pig only within one clip, so identity = ``<clip>/<letter>``; the pig's track in
    that clip is its only encounter. Masks are not used.
    """

    info = SourceInfo(
        name="faropig",
        species=("pig",),
        license="research use only",
        citation="""@misc{faropig2024,
  title        = {FaroPig datasets: pig re-identification from pen cameras (FaroPigReID-33 sample)},
  author       = {{yudong888}},
  howpublished = {\\url{https://github.com/yudong888/FaroPig-Datasets}},
  note         = {commit 2733341}
}""",
        url="https://github.com/yudong888/FaroPig-Datasets",
        version="2733341",
        folder="FaroPigReID-33/Galleries",
        description="Body crops of pigs from pen cameras, 5 per pig.",
        reported_images=215,
        reported_identities=43,
    )

    def scan(self, root: Path) -> Iterator[Record]:
        base = self.location(root)
        for path in _files(base, (".png", ".jpg", ".jpeg")):
            rel = path.relative_to(base)
            if len(rel.parts) != 4 or rel.parts[1] != "Images":
                continue  # Masks/ and anything else
            identity = f"{rel.parts[0]}/{rel.parts[2]}"
            yield Record(
                source=self.info.name,
                species="pig",
                identity=identity,
                image_id=rel.as_posix(),
                path=path,
                encounter=identity,
            )


LOCAL_SOURCES: tuple[str, ...] = (
    "liondata",
    "nyaladata",
    "holstein2025",
    "dogfacenet",
    "macaquefaces",
    "faropig",
)
