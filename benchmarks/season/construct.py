"""A field season built from the real photos: a catalogue of known animals, and a season of new photos.

From one split of the built real corpus (``validation`` to choose settings, ``test`` to report; the open split's
identities, never trained on), per species: a stated share of the identities are the *known* animals (only
identities with at least two encounters of their own can be, so that some are in the catalogue and others come
back in the season); the catalogue holds the first half of each known animal's encounters (at least one); the
season holds the rest of their encounters and every photo of the other (*new*) animals.

The season's photos are copied into a scratch folder (git-ignored, deleted after the run) with EXIF date-times and
a camera consistent with the sources' own encounters: each encounter gets its own time slot on one of four cameras
per species, two hours from the next, its photos 20 s apart, so grouping by camera and time recovers the
encounters. A MegaDetector-format JSON lists every photo with one full-frame animal detection (the photos are
crops already). The truth (identity, known or new, true encounter) is kept per scratch file.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

SEASON_START = dt.datetime(2026, 3, 1, 6, 0, 0)
CAMERAS_PER_SPECIES = 4


@dataclass
class Photo:
    """One photo of the corpus split, with the path of its original under the data root."""

    image_id: str
    identity: str
    species: str
    encounter: str
    viewpoint: str | None
    path: Path


@dataclass
class Season:
    """A built season: the catalogue (known animals' catalogue photos) and the season's scratch photos."""

    catalogue: list[Photo]
    season: list[Photo]
    known: set[str]  # known identities
    scratch: Path
    megadetector_json: Path
    truth: dict[str, Photo]  # scratch file (relative to scratch) -> its photo


def split_photos(corpus: Path, split: str, data_root: Path) -> list[Photo]:
    """Every photo of ``split`` in the built corpus, with the path of its original."""
    import pyarrow.parquet as pq

    from data_scripts.build import resolve_sources

    folders = {s.info.name: s.location(data_root) for s in resolve_sources(["real"])}
    cols = ["image_id", "identity", "species", "encounter", "viewpoint", "split"]
    photos = []
    for shard in sorted(corpus.glob(f"data/*/{split}-*.parquet")):
        for r in pq.read_table(shard, columns=cols).to_pylist():
            source, _, rel = r["image_id"].split(":", 2)
            photos.append(Photo(r["image_id"], r["identity"], r["species"], r["encounter"], r["viewpoint"],
                                folders[source] / rel))  # fmt: skip
    return photos


def choose_known(photos: list[Photo], share: float, seed: int) -> set[str]:
    """Per species, ``share`` of the identities (rounded) as known, drawn among those with >= 2 encounters."""
    encounters: dict[str, set[str]] = defaultdict(set)
    species_ids: dict[str, set[str]] = defaultdict(set)
    for p in photos:
        encounters[p.identity].add(p.encounter)
        species_ids[p.species].add(p.identity)
    rng = random.Random(seed)
    known: set[str] = set()
    for species in sorted(species_ids):
        ids = sorted(species_ids[species])
        eligible = [i for i in ids if len(encounters[i]) >= 2]
        rng.shuffle(eligible)
        known.update(eligible[: min(len(eligible), round(share * len(ids)))])
    return known


def split_catalogue(photos: list[Photo], known: set[str]) -> tuple[list[Photo], list[Photo]]:
    """Known animals: the first half of their encounters (by id, at least one) to the catalogue, the rest to the
    season; new animals: everything to the season."""
    by_identity: dict[str, dict[str, list[Photo]]] = defaultdict(lambda: defaultdict(list))
    for p in photos:
        by_identity[p.identity][p.encounter].append(p)
    catalogue, season = [], []
    for identity in sorted(by_identity):
        encs = [by_identity[identity][e] for e in sorted(by_identity[identity])]
        n_cat = max(1, len(encs) // 2) if identity in known else 0
        catalogue += [p for e in encs[:n_cat] for p in e]
        season += [p for e in encs[n_cat:] for p in e]
    return catalogue, season


def exif_stamped(path: Path, when: dt.datetime, camera: str) -> tuple[bytes, str]:
    """The photo's bytes with EXIF DateTimeOriginal and Make/Model set, and its suffix. JPEGs get an APP1 segment
    inserted after the start marker (pixels untouched); other formats are written as PNG with the EXIF."""
    exif = Image.Exif()
    exif[0x010F] = "animal-reid-season"  # Make
    exif[0x0110] = camera  # Model
    exif.get_ifd(0x8769)[0x9003] = when.strftime("%Y:%m:%d %H:%M:%S")  # DateTimeOriginal
    payload = exif.tobytes()
    data = path.read_bytes()
    if data[:2] == b"\xff\xd8" and len(payload) + 2 < 65536:
        segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
        return data[:2] + segment + data[2:], ".jpg"
    buf = io.BytesIO()
    with Image.open(path) as im:
        im.save(buf, format="PNG", exif=payload)
    return buf.getvalue(), ".png"


def time_slots(season: list[Photo], seed: int) -> dict[str, tuple[dt.datetime, str]]:
    """Each season encounter's start time and camera: shuffled per species, six slots a day two hours apart."""
    rng = random.Random(seed)
    slots = {}
    by_species: dict[str, list[str]] = defaultdict(list)
    for p in season:
        if p.encounter not in by_species[p.species]:
            by_species[p.species].append(p.encounter)
    for s_index, species in enumerate(sorted(by_species)):
        encs = sorted(by_species[species])
        rng.shuffle(encs)
        for k, enc in enumerate(encs):
            when = SEASON_START + dt.timedelta(days=k // 6, hours=2 * (k % 6), minutes=s_index)
            slots[enc] = (when, f"{species}-cam{k % CAMERAS_PER_SPECIES}")
    return slots


def write_scratch(season: list[Photo], scratch: Path, seed: int) -> tuple[Path, dict[str, Photo]]:
    """The season's EXIF-stamped copies under ``scratch/<species>/`` and the MegaDetector JSON listing them."""
    slots = time_slots(season, seed)
    counter: dict[str, int] = defaultdict(int)
    truth, images = {}, []
    for p in sorted(season, key=lambda p: (p.encounter, p.image_id)):
        start, camera = slots[p.encounter]
        when = start + dt.timedelta(seconds=20 * counter[p.encounter])
        counter[p.encounter] += 1
        data, suffix = exif_stamped(p.path, when, camera)
        rel = f"{p.species}/{len(truth):06d}{suffix}"
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        (scratch / rel).write_bytes(data)
        truth[rel] = p
        images.append(
            {"file": rel, "detections": [{"category": "1", "conf": 0.95, "bbox": [0.0, 0.0, 1.0, 1.0]}]}
        )
    md = {
        "info": {"format_version": "1.4", "detector": "full-frame boxes (the photos are crops already)"},
        "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
        "images": images,
    }
    md_path = scratch / "megadetector.json"
    md_path.write_text(json.dumps(md))
    return md_path, truth


def build_season(corpus: Path, split: str, data_root: Path, scratch: Path, known_share: float = 0.7,
                 seed: int = 0) -> Season:  # fmt: skip
    """The catalogue and the season of ``split`` (see the module docstring)."""
    photos = split_photos(corpus, split, data_root)
    known = choose_known(photos, known_share, seed)
    catalogue, season = split_catalogue(photos, known)
    md_path, truth = write_scratch(season, scratch, seed)
    return Season(catalogue, season, known, scratch, md_path, truth)
