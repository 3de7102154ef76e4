"""Season ingest: a folder of photos (EXIF), MegaDetector batch output, COCO and CSV, and ``animal-reid ingest``.

Every photo is generated here (``turned_jpeg`` with EXIF tags written through Pillow's Exif API); bad inputs are
each tried three or more ways, asserting the exact one-line message or skip.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, TiffImagePlugin

from animal_reid.season import ingest as ingest_mod
from animal_reid.season.annotations import annotations_csv, read_annotations
from animal_reid.season.ingest import (
    IngestError,
    Skip,
    ingest_folder,
    list_photos,
    read_species_map,
    species_for,
)
from animal_reid.season.ingest_cli import main, skipped_path
from animal_reid.season.ingest_exif import camera_name, iso_datetime, read_photo
from animal_reid.season.ingest_megadetector import ingest_megadetector, normalised_box
from animal_reid.season.ingest_tables import ingest_coco, ingest_csv
from animal_reid.testing.images import turned_jpeg

R = TiffImagePlugin.IFDRational
EXIF_IFD, GPS_IFD = 0x8769, 0x8825

#: a Sydney photo: 33° 51' 35.61" S, 151° 12' 40.12" E
SYDNEY_GPS = {1: "S", 2: (R(33, 1), R(51, 1), R(3561, 100)), 3: "E", 4: (R(151, 1), R(12, 1), R(4012, 100))}
SYDNEY = (-(33 + 51 / 60 + 35.61 / 3600), 151 + 12 / 60 + 40.12 / 3600)


def photo(
    path: Path,
    orientation: int = 1,
    size: tuple[int, int] = (96, 56),
    *,
    make: str | None = None,
    model: str | None = None,
    serial: str | None = None,
    taken: str | None = None,
    offset: str | None = None,
    gps: dict | None = None,
    seed: int = 0,
) -> Path:
    """Write a generated JPEG with the EXIF given (Exif IFD 0x8769, GPS IFD 0x8825) and return its path."""
    tags: dict = {}
    if make:
        tags[0x010F] = make
    if model:
        tags[0x0110] = model
    exif_ifd = {k: v for k, v in ((0x9003, taken), (0x9011, offset), (0xA431, serial)) if v is not None}
    if exif_ifd:
        tags[EXIF_IFD] = exif_ifd
    if gps:
        tags[GPS_IFD] = gps
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(turned_jpeg(orientation, size, seed, exif=tags))
    return path


def raw_exif_jpeg(path: Path, raw: bytes) -> Path:
    """A JPEG whose APP1 EXIF block is exactly ``raw`` (corrupt blocks for the tests)."""
    buf = io.BytesIO()
    Image.new("RGB", (32, 16), "green").save(buf, "JPEG", exif=raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------------------------
# EXIF
def test_generated_exif_is_where_the_reader_looks(tmp_path):
    """The test photos carry the tags in the IFDs the reader uses (checked with Pillow's own API)."""
    p = photo(
        tmp_path / "a.jpg",
        6,
        make="RECONYX",
        model="HC600",
        serial="H500123",
        taken="2026:05:01 06:12:30",
        offset="+02:00",
        gps=SYDNEY_GPS,
    )
    exif = Image.open(p).getexif()
    assert exif[0x0112] == 6 and exif[0x010F] == "RECONYX" and exif[0x0110] == "HC600"
    assert exif.get_ifd(EXIF_IFD)[0x9003] == "2026:05:01 06:12:30"
    assert exif.get_ifd(EXIF_IFD)[0x9011] == "+02:00"
    assert exif.get_ifd(GPS_IFD)[1] == "S" and exif.get_ifd(GPS_IFD)[3] == "E"


def test_read_photo_parses_exact_values(tmp_path):
    p = photo(
        tmp_path / "a.jpg",
        6,
        make="RECONYX",
        model="HC600",
        serial="H500123",
        taken="2026:05:01 06:12:30",
        offset="+02:00",
        gps=SYDNEY_GPS,
    )
    info = read_photo(p)
    assert info.size == (56, 96)  # EXIF 6: stored 96 x 56, displayed turned
    assert info.datetime == "2026-05-01T06:12:30+02:00"
    assert info.latitude == pytest.approx(SYDNEY[0], abs=1e-12)
    assert info.longitude == pytest.approx(SYDNEY[1], abs=1e-12)
    assert info.camera == "RECONYX HC600 serial H500123"
    assert info.note is None


def test_north_west_and_no_offset(tmp_path):
    gps = {1: "N", 2: (R(45, 1), R(30, 1), R(0, 1)), 3: "W", 4: (R(73, 1), R(15, 1), R(36, 1))}
    info = read_photo(
        photo(tmp_path / "b.jpg", make="Canon", model="Canon EOS R5", taken="2025:12:31 23:59:59", gps=gps)
    )
    assert (info.datetime, info.camera) == ("2025-12-31T23:59:59", "Canon EOS R5")
    assert info.latitude == 45.5 and info.longitude == pytest.approx(-(73 + 15 / 60 + 36 / 3600), abs=1e-12)


@pytest.mark.parametrize(
    "make, model, serial, expected",
    [
        ("RECONYX", "HC600", "H500123", "RECONYX HC600 serial H500123"),
        ("Canon", "Canon EOS R5", None, "Canon EOS R5"),
        ("Bushnell\x00\x00", "  Core DS  ", None, "Bushnell Core DS"),
        (None, None, "X1", "serial X1"),
        (None, None, None, None),
    ],
)
def test_camera_name(make, model, serial, expected):
    assert camera_name(make, model, serial) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026:05:01 06:12:30", "2026-05-01T06:12:30"),
        ("2026-05-01 06:12:30", "2026-05-01T06:12:30"),
        ("2026-05-01T06:12:30+02:00", "2026-05-01T06:12:30+02:00"),
        ("2026-05-01", "2026-05-01"),
    ],
)
def test_iso_datetime(text, expected):
    assert iso_datetime(text) == expected


@pytest.mark.parametrize(
    "text", ["0000:00:00 00:00:00", "2026:13:01 00:00:00", "yesterday", "2026-05-01T25:00"]
)
def test_iso_datetime_refuses(text):
    with pytest.raises(ValueError):
        iso_datetime(text)


CORRUPT_EXIF = [
    (b"Exif\x00\x00garbage-not-tiff", "the EXIF block is not TIFF data"),
    (b"Exif\x00\x00II*\x00\xff\xff\x00\x00", "Corrupt EXIF data. Expecting to read 2 bytes but only got 0."),
    (
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x0f\x00\x02\x00\x00\x00\x40\x00\x00\x10\x00",
        "Tag data larger than file. Skipping tag 271",
    ),
    (
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x25\x88\x04\x00\x01\x00\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00",
        "Corrupt EXIF data. Expecting to read 2 bytes but only got 0.",
    ),
]


@pytest.mark.parametrize("raw, problem", CORRUPT_EXIF)
def test_corrupt_exif_is_ingested_with_a_note(tmp_path, raw, problem):
    raw_exif_jpeg(tmp_path / "photos" / "bad.jpg", raw)
    anns, skips = ingest_folder(tmp_path / "photos", species="lynx")
    assert skips == []
    [ann] = anns
    assert (ann.annotation_id, ann.species, ann.datetime, ann.latitude, ann.camera) == (
        "bad.jpg",
        "lynx",
        None,
        None,
        None,
    )
    assert ann.notes == f"EXIF unreadable ({problem}): date, place and camera left empty"


@pytest.mark.parametrize(
    "kwargs, note, taken",
    [
        (
            {"taken": "0000:00:00 00:00:00"},
            "EXIF DateTimeOriginal '0000:00:00 00:00:00' is not a date-time: date left empty",
            None,
        ),
        (
            {"taken": "2026:13:01 06:00:00"},
            "EXIF DateTimeOriginal '2026:13:01 06:00:00' is not a date-time: date left empty",
            None,
        ),
        (
            {"taken": "2026:05:01 06:00:00", "offset": "CEST"},
            "EXIF OffsetTimeOriginal 'CEST' is not +HH:MM: time zone left out",
            "2026-05-01T06:00:00",
        ),
        (
            {"gps": {1: "N", 2: (R(95, 1), R(0, 1), R(0, 1)), 3: "E", 4: (R(1, 1), R(0, 1), R(0, 1))}},
            "EXIF GPS latitude 95 degrees is beyond 90: place left empty",
            None,
        ),
        (
            {"gps": {1: "X", 2: (R(5, 1), R(0, 1), R(0, 1)), 3: "E", 4: (R(1, 1), R(0, 1), R(0, 1))}},
            "EXIF GPS latitude reference 'X' is not N or S: place left empty",
            None,
        ),
        (
            {"gps": {1: "N", 2: (R(5, 1), R(0, 1), R(0, 1)), 3: "E", 4: (R(1, 0), R(0, 1), R(0, 1))}},
            "EXIF GPS longitude (nan, 0.0, 0.0) is not degrees, minutes, seconds: place left empty",
            None,
        ),
        (
            {"gps": {1: "N", 2: (R(5, 1), R(0, 1), R(0, 1))}},
            "EXIF GPS has a latitude or a longitude, not both: place left empty",
            None,
        ),
    ],
)
def test_a_value_that_makes_no_sense_is_left_empty_with_a_note(tmp_path, kwargs, note, taken):
    """Only the field that makes no sense is left empty: the camera (and a date without its zone) are kept."""
    info = read_photo(photo(tmp_path / "a.jpg", make="Browning", model="BTC-8E", **kwargs))
    assert info.notes == [note]
    assert (info.camera, info.datetime, info.latitude, info.longitude) == (
        "Browning BTC-8E",
        taken,
        None,
        None,
    )


@pytest.mark.parametrize("orientation", range(1, 9))
def test_displayed_size_is_the_modeling_rule(tmp_path, orientation):
    """Ingest keeps its own copy of :func:`modeling.displayed_size` (no torch import): the two must agree."""
    from modeling import displayed_size as modeling_displayed_size

    p = tmp_path / "a.jpg"
    p.write_bytes(turned_jpeg(orientation, (40, 24)))
    with Image.open(p) as im:
        expected = modeling_displayed_size(im)
    assert read_photo(p).size == expected == ((24, 40) if orientation >= 5 else (40, 24))


@pytest.mark.filterwarnings("ignore::UserWarning")  # modeling's copy lets Pillow warn of the corrupt EXIF
@pytest.mark.parametrize("raw, _problem", CORRUPT_EXIF)
def test_displayed_size_with_corrupt_exif_is_the_modeling_rule(tmp_path, raw, _problem):
    from modeling import displayed_size as modeling_displayed_size

    p = raw_exif_jpeg(tmp_path / "a.jpg", raw)
    with Image.open(p) as im:
        assert read_photo(p).size == modeling_displayed_size(im) == (32, 16)


def test_gps_zero_zero_is_no_place(tmp_path):
    gps = {1: "N", 2: (R(0, 1), R(0, 1), R(0, 1)), 3: "E", 4: (R(0, 1), R(0, 1), R(0, 1))}
    info = read_photo(photo(tmp_path / "a.jpg", gps=gps))
    assert (info.latitude, info.longitude, info.notes) == (None, None, [])


# ------------------------------------------------------------------------------------------------------------------
# a folder of photos
def test_ingest_folder(tmp_path):
    root = tmp_path / "season"
    photo(
        root / "site1" / "IMG_0001.JPG",
        6,
        make="RECONYX",
        model="HC600",
        serial="H1",
        taken="2026:05:01 06:12:30",
        offset="+02:00",
        gps=SYDNEY_GPS,
    )
    photo(root / "site1" / "IMG_0002.jpg", seed=1)  # no EXIF besides the orientation: kept, empty date
    (root / "site2").mkdir()
    Image.new("RGB", (20, 10), "blue").save(root / "site2" / "x.png")
    (root / "notes.txt").write_text("not a photo")
    (root / "._IMG_0003.JPG").write_bytes(b"AppleDouble")  # hidden: left out
    anns, skips = ingest_folder(root, species="nyala")
    assert skips == []
    assert [a.annotation_id for a in anns] == ["site1/IMG_0001.JPG", "site1/IMG_0002.jpg", "site2/x.png"]
    first, second, third = anns
    assert first.photo == str(root.resolve() / "site1" / "IMG_0001.JPG")
    assert (first.box, first.species, first.datetime, first.camera) == (
        None,
        "nyala",
        "2026-05-01T06:12:30+02:00",
        "RECONYX HC600 serial H1",
    )
    assert (first.latitude, first.longitude) == pytest.approx(SYDNEY, abs=1e-12)
    assert (second.datetime, second.latitude, second.camera, second.notes) == (None, None, None, None)
    assert third.species == "nyala" and third.source == "folder"
    flat, _ = ingest_folder(root, recursive=False)
    assert flat == []


def test_folder_ids_are_stable_across_runs_and_places(tmp_path):
    for where in ("a", "b"):
        photo(tmp_path / where / "cam" / "p.jpg")
    ids = [[x.annotation_id for x in ingest_folder(tmp_path / w)[0]] for w in ("a", "b")]
    assert ids == [["cam/p.jpg"], ["cam/p.jpg"]]


UNREADABLE = [
    ("text.jpg", lambda: b"hello world", "not an image Pillow can read"),
    ("empty.png", lambda: b"", "not an image Pillow can read"),
    ("header.png", lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "not an image Pillow can read"),
    ("cut.jpg", lambda: turned_jpeg(1)[:-200], "image file is truncated (60 bytes not processed)"),
]


@pytest.mark.parametrize("name, data, reason", UNREADABLE)
def test_unreadable_photo_is_a_skip_naming_the_file(tmp_path, name, data, reason):
    photo(tmp_path / "ok.jpg")
    (tmp_path / name).write_bytes(data())
    anns, skips = ingest_folder(tmp_path)
    assert [a.annotation_id for a in anns] == ["ok.jpg"]
    root = tmp_path.resolve()
    assert skips == [
        Skip(str(root), name, "unreadable photo", f"{root / name}: unreadable photo ({reason}): skipped")
    ]


def _outside_links(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A photo folder with one link pointing outside it (three ways); returns the root and the link's name."""
    root = tmp_path / "photos"
    photo(root / "in.jpg")
    if case == "file":
        target = photo(tmp_path / "elsewhere" / "secret.jpg")
        os.symlink(target, root / "link.jpg")
        return root, "link.jpg"
    if case == "prefix":  # a sibling whose name starts with the root's: not inside it
        target = photo(tmp_path / "photos2" / "secret.jpg")
        os.symlink(target, root / "sibling.jpg")
        return root, "sibling.jpg"
    photo(tmp_path / "elsewhere" / "secret.jpg")
    os.symlink(tmp_path / "elsewhere", root / "linked_folder")
    return root, "linked_folder"


@pytest.mark.parametrize("case", ["file", "prefix", "folder"])
def test_links_pointing_outside_are_reported_never_read(tmp_path, monkeypatch, case):
    root, name = _outside_links(tmp_path, case)
    opened = []
    real = ingest_mod.read_photo
    monkeypatch.setattr(
        ingest_mod, "read_photo", lambda p, **kw: opened.append(Path(p).name) or real(p, **kw)
    )
    anns, skips = ingest_folder(root)
    assert opened == ["in.jpg"] and [a.annotation_id for a in anns] == ["in.jpg"]
    r = root.resolve()
    assert skips == [
        Skip(str(r), name, "outside the root", f"{r / name}: a symbolic link pointing outside {r}: not read")
    ]


@pytest.mark.parametrize(
    "links, expected, kept",
    [
        ({"alias.jpg": "a/p.jpg"}, ["a/p.jpg"], "a/p.jpg"),
        ({"a/zz.jpg": "a/p.jpg", "b.jpg": "a/p.jpg"}, ["a/p.jpg"], "a/p.jpg"),
        ({"b.jpg": "c/q.jpg", "a.jpg": "c/q.jpg"}, ["a.jpg", "a/p.jpg"], "a.jpg"),  # links to a hidden photo
    ],
)
def test_a_link_inside_the_root_is_one_photo(tmp_path, links, expected, kept):
    """A photo reached by a link and by its own name is read once; the other names are skips naming it."""
    photo(tmp_path / "a" / "p.jpg")
    photo(tmp_path / ".c" / "q.jpg")  # hidden folder: not scanned itself
    for link, target in links.items():
        os.symlink(tmp_path / target.replace("c/", ".c/"), tmp_path / link)
    os.symlink(tmp_path / "a", tmp_path / "alias_folder")  # not followed: its photos are read under a/
    rels, skips = list_photos(tmp_path)
    root = tmp_path.resolve()
    assert rels == expected
    assert skips == [
        Skip(str(root), rel, "duplicate", f"{root / rel}: a link to the photo {kept}, read under that name")
        for rel in sorted(links)
        if rel != kept
    ]


def test_no_such_folder(tmp_path):
    with pytest.raises(IngestError, match=f"^{tmp_path / 'nope'}: no such folder$"):
        ingest_folder(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------------------------
# species per folder
@pytest.mark.parametrize("kind", ["csv", "json"])
def test_species_map(tmp_path, kind):
    rows = {"site1": "nyala", "site1/cam2": "kudu", ".": "impala"}
    if kind == "csv":
        path = tmp_path / "map.csv"
        path.write_text("folder,species\n" + "".join(f"{k},{v}\n" for k, v in rows.items()))
    else:
        path = write_json(tmp_path / "map.json", rows)
    smap = read_species_map(path)
    assert smap == {"site1": "nyala", "site1/cam2": "kudu", "": "impala"}
    assert species_for("site1/cam1/a.jpg", None, smap) == "nyala"
    assert species_for("site1/cam2/deeper/a.jpg", None, smap) == "kudu"
    assert species_for("other/a.jpg", None, smap) == "impala"
    assert species_for("other/a.jpg", "lion", {"site1": "nyala"}) == "lion"
    root = tmp_path / "season"
    photo(root / "site1" / "cam2" / "a.jpg")
    photo(root / "site1" / "b.jpg")
    photo(root / "c.jpg")
    anns, _ = ingest_folder(root, species_map=smap)
    assert [(a.annotation_id, a.species) for a in anns] == [
        ("c.jpg", "impala"),
        ("site1/b.jpg", "nyala"),
        ("site1/cam2/a.jpg", "kudu"),
    ]


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "m.csv",
            "folder,species\nsite1,nyala\nsite2,kudu\nsite1/,lion\n",
            "{p} line 2 and line 4: folder 'site1' twice",
        ),
        (
            "m.json",
            '{"site1": "nyala", "./site1": "kudu"}',
            "{p} entry 'site1' and entry './site1': folder 'site1' twice",
        ),
        (
            "m.csv",
            "folder,species\n../up,nyala\n",
            "{p} line 2: folder '../up' must be relative to the photo folder, inside it",
        ),
        (
            "m.json",
            '{"/abs": "nyala"}',
            "{p} entry '/abs': folder '/abs' must be relative to the photo folder, inside it",
        ),
        (
            "m.csv",
            "folder,species\nsite1,\n",
            "{p} line 2: expected a folder and a species name, got 'site1': ''",
        ),
        ("m.json", '{"site1": 3}', "{p} entry 'site1': expected a folder and a species name, got 'site1': 3"),
        ("m.csv", "dir,name\nsite1,nyala\n", "{p}: expected columns folder,species, got ['dir', 'name']"),
        (
            "m.json",
            '{"site1": "nyala",',
            "{p}: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 19 (char 18))",
        ),
        ("m.json", '["site1"]', "{p}: expected a JSON object {{folder: species}}, got list"),
    ],
)
def test_bad_species_map_is_one_line_naming_the_row(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(IngestError) as err:
        read_species_map(path)
    assert str(err.value) == message.format(p=path)


# ------------------------------------------------------------------------------------------------------------------
# MegaDetector
def md(images: list, version="1.4", categories=None) -> dict:
    return {
        "info": {"format_version": version, "detector": "md_v5a.0.0.pt"},
        "detection_categories": categories or {"1": "animal", "2": "person", "3": "vehicle"},
        "images": images,
    }


def det(bbox, conf=0.9, category="1") -> dict:
    return {"category": category, "conf": conf, "bbox": bbox}


def test_megadetector(tmp_path):
    root = tmp_path / "cards"
    photo(
        root / "site1" / "a.jpg", make="RECONYX", model="HC600", taken="2026:05:01 06:12:30", gps=SYDNEY_GPS
    )
    photo(root / "site1" / "turned.jpg", 6, taken="2026:05:01 06:13:00")  # stored 96 x 56, displayed 56 x 96
    photo(root / "site2" / "empty.jpg")
    data = md(
        [
            {
                "file": "site1/a.jpg",
                "detections": [
                    det([0.25, 0.5, 0.5, 0.25], 0.95),
                    det([0.0, 0.0, 0.5, 0.5], 0.99, "2"),  # a person
                    det([0.5, 0.0, 0.25, 0.5], 0.2),  # conf == min_conf: kept
                    det([0.1, 0.1, 0.1, 0.1], 0.19),  # below min_conf
                ],
            },
            {"file": "site1\\turned.jpg", "detections": [det([0.25, 0.5, 0.5, 0.25], 0.8)]},
            {"file": "site2/empty.jpg", "detections": []},
        ]
    )
    anns, skips = ingest_megadetector(write_json(tmp_path / "md.json", data), root, species="nyala")
    assert skips == []
    assert [a.annotation_id for a in anns] == ["site1/a.jpg#0", "site1/a.jpg#2", "site1/turned.jpg#0"]
    a0, a2, t0 = anns
    assert a0.box == [24.0, 28.0, 48.0, 14.0] and a2.box == [48.0, 0.0, 24.0, 28.0]
    assert t0.box == [14.0, 48.0, 28.0, 24.0]  # the displayed photo's pixels (EXIF 6)
    assert (a0.confidence, a2.confidence, t0.confidence) == (0.95, 0.2, 0.8)
    assert (a0.species, a0.datetime, a0.camera) == ("nyala", "2026-05-01T06:12:30", "RECONYX HC600")
    assert (a0.latitude, a0.longitude) == pytest.approx(SYDNEY, abs=1e-12)
    assert (t0.datetime, t0.camera, t0.latitude) == ("2026-05-01T06:13:00", None, None)
    assert a0.photo == str(root.resolve() / "site1" / "a.jpg")
    assert a2.source == "md.json images[0] detections[2]"
    stricter, _ = ingest_megadetector(tmp_path / "md.json", root, species="nyala", min_conf=0.9)
    assert [a.annotation_id for a in stricter] == ["site1/a.jpg#0"]  # ids do not move with min_conf


def test_megadetector_species_per_folder_and_custom_categories(tmp_path):
    root = tmp_path / "cards"
    photo(root / "north" / "a.jpg")
    photo(root / "south" / "b.jpg")
    data = md(
        [
            {"file": f, "detections": [det([0, 0, 1, 1], category="7")]}
            for f in ("north/a.jpg", "south/b.jpg")
        ],
        version="1.0",
        categories={"7": "Animal", "8": "human"},
    )
    anns, _ = ingest_megadetector(
        write_json(tmp_path / "md.json", data), root, species="other", species_map={"north": "lynx"}
    )
    assert [(a.annotation_id, a.species, a.box) for a in anns] == [
        ("north/a.jpg#0", "lynx", [0.0, 0.0, 96.0, 56.0]),
        ("south/b.jpg#0", "other", [0.0, 0.0, 96.0, 56.0]),
    ]


def test_box_within_the_tolerance_is_clipped():
    assert normalised_box([-0.001, 0.5, 0.5, 0.5015]) == [0.0, 0.5, 0.499, 0.5]


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '{"info": {"format_version": "1.4"}, "images": [',
            "not valid JSON (Expecting value: line 1 column 48 (char 47))",
        ),
        ("", "not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        ("[1, 2]", "not a MegaDetector batch output (expected an object with an 'images' list, got a list)"),
        (
            '{"info": {"format_version": "1.4"}, "images": {}}',
            "not a MegaDetector batch output (expected an object with an 'images' list, got ['images', 'info'])",
        ),
        ('{"images": []}', "no info.format_version: not a MegaDetector batch output"),
        (
            '{"info": {"format_version": "2.0"}, "images": []}',
            "info.format_version '2.0' is not supported (reads 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6)",
        ),
        (
            '{"info": {"format_version": "0.9"}, "images": []}',
            "info.format_version '0.9' is not supported (reads 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6)",
        ),
        (
            '{"info": {"format_version": 1.7}, "images": []}',
            "info.format_version 1.7 is not supported (reads 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6)",
        ),
        (
            '{"info": {"format_version": "1.4"}, "detection_categories": {"1": "person"}, "images": []}',
            "detection_categories {'1': 'person'} has no 'animal' category",
        ),
    ],
)
def test_megadetector_file_errors_are_one_line(tmp_path, text, message):
    path = tmp_path / "md.json"
    path.write_text(text)
    with pytest.raises(IngestError) as err:
        ingest_megadetector(path, tmp_path, species="x")
    assert str(err.value) == f"{path}: {message}"
    assert "\n" not in str(err.value)


BAD_BOXES = [
    (
        [0.6, 0.1, 0.5, 0.2],
        "bad box",
        "bbox [0.6, 0.1, 0.5, 0.2] is out of range (x, y >= 0 and x + w, y + h <= 1)",
    ),
    (
        [-0.1, 0.1, 0.5, 0.2],
        "bad box",
        "bbox [-0.1, 0.1, 0.5, 0.2] is out of range (x, y >= 0 and x + w, y + h <= 1)",
    ),
    (
        [0.1, 0.1, 0.5, 1.2],
        "bad box",
        "bbox [0.1, 0.1, 0.5, 1.2] is out of range (x, y >= 0 and x + w, y + h <= 1)",
    ),
    (
        [0.1, float("nan"), 0.5, 0.2],
        "bad box",
        "bbox [0.1, nan, 0.5, 0.2] has a value that is not a finite number",
    ),
    ([0.1, 0.1, 0.0, 0.2], "bad box", "bbox [0.1, 0.1, 0.0, 0.2] has zero or negative size"),
    ([0.1, 0.1, 0.5], "bad box", "bbox [0.1, 0.1, 0.5] is not 4 numbers [x, y, w, h]"),
    (["0.1", 0.1, 0.5, 0.2], "bad box", "bbox ['0.1', 0.1, 0.5, 0.2] is not 4 numbers [x, y, w, h]"),
]


@pytest.mark.parametrize("bbox, reason, problem", BAD_BOXES)
def test_out_of_range_box_is_a_skip_naming_image_and_detection(tmp_path, bbox, reason, problem):
    photo(tmp_path / "cards" / "a.jpg")
    path = write_json(
        tmp_path / "md.json", md([{"file": "a.jpg", "detections": [det([0, 0, 1, 1]), det(bbox)]}])
    )
    anns, skips = ingest_megadetector(path, tmp_path / "cards", species="x")
    assert [a.annotation_id for a in anns] == ["a.jpg#0"]
    row = "images[0] ('a.jpg') detections[1]"
    assert skips == [Skip(str(path), row, reason, f"{path} {row}: {problem}")]


@pytest.mark.parametrize(
    "conf, problem",
    [
        (1.5, "conf 1.5 is not a number in [0, 1]"),
        ("0.9", "conf '0.9' is not a number in [0, 1]"),
        (None, "conf None is not a number in [0, 1]"),
    ],
)
def test_bad_conf_is_a_skip(tmp_path, conf, problem):
    photo(tmp_path / "a.jpg")
    path = write_json(tmp_path / "md.json", md([{"file": "a.jpg", "detections": [det([0, 0, 1, 1], conf)]}]))
    anns, skips = ingest_megadetector(path, tmp_path, species="x")
    row = "images[0] ('a.jpg') detections[0]"
    assert anns == [] and skips == [Skip(str(path), row, "malformed row", f"{path} {row}: {problem}")]


@pytest.mark.parametrize("file", ["gone.jpg", "site9/IMG_0001.JPG", "a.JPG"])
def test_missing_photo_is_a_skip(tmp_path, file):
    photo(tmp_path / "cards" / "a.jpg")
    path = write_json(tmp_path / "md.json", md([{"file": file, "detections": [det([0, 0, 1, 1])]}]))
    anns, skips = ingest_megadetector(path, tmp_path / "cards", species="x")
    row = f"images[0] ({file!r})"
    missing = tmp_path / "cards" / file
    assert anns == [] and skips == [
        Skip(str(path), row, "missing photo", f"{path} {row}: no such photo {missing.resolve()}")
    ]


def _outside_file(tmp_path: Path, case: str) -> str:
    photo(tmp_path / "elsewhere" / "secret.jpg")
    photo(tmp_path / "cards2" / "secret.jpg")
    if case == "dotdot":
        return "../elsewhere/secret.jpg"
    if case == "absolute":
        return str(tmp_path / "elsewhere" / "secret.jpg")
    if case == "prefix":
        return str(tmp_path / "cards2" / "secret.jpg")
    os.symlink(tmp_path / "elsewhere" / "secret.jpg", tmp_path / "cards" / "link.jpg")
    return "link.jpg"


@pytest.mark.parametrize("case", ["dotdot", "absolute", "prefix", "link"])
def test_photo_outside_the_image_folder_is_skipped_never_read(tmp_path, monkeypatch, case):
    import animal_reid.season.ingest_megadetector as mdmod

    photo(tmp_path / "cards" / "in.jpg")
    file = _outside_file(tmp_path, case)
    path = write_json(
        tmp_path / "md.json",
        md(
            [
                {"file": file, "detections": [det([0, 0, 1, 1])]},
                {"file": "in.jpg", "detections": [det([0, 0, 1, 1])]},
            ]
        ),
    )
    opened = []
    real = mdmod.read_photo
    monkeypatch.setattr(mdmod, "read_photo", lambda p, **kw: opened.append(Path(p).name) or real(p, **kw))
    anns, skips = ingest_megadetector(path, tmp_path / "cards", species="x")
    assert opened == ["in.jpg"] and [a.annotation_id for a in anns] == ["in.jpg#0"]
    row = f"images[0] ({file!r})"
    root = (tmp_path / "cards").resolve()
    assert skips == [
        Skip(
            str(path),
            row,
            "outside the root",
            f"{path} {row}: resolves outside the image folder {root}: not read",
        )
    ]


@pytest.mark.parametrize(
    "entry, reason, problem",
    [
        (
            {"file": "a.jpg", "failure": "Failure image access", "detections": None},
            "detector failure",
            "MegaDetector failed on this image: 'Failure image access'",
        ),
        (
            {"file": "a.jpg", "failure": "Failure inference"},
            "detector failure",
            "MegaDetector failed on this image: 'Failure inference'",
        ),
        (
            {"file": "a.jpg", "failure": "Failure image access", "detections": []},
            "detector failure",
            "MegaDetector failed on this image: 'Failure image access'",
        ),
        ({"file": "a.jpg"}, "malformed row", "detections None is not a list"),
        (
            {"file": "v.mp4", "frame_rate": 20, "frames_processed": [0], "detections": []},
            "malformed row",
            "a video: only photos are ingested",
        ),
    ],
)
def test_failure_entries_are_skips_with_their_message(tmp_path, entry, reason, problem):
    photo(tmp_path / "a.jpg")
    path = write_json(tmp_path / "md.json", md([entry]))
    anns, skips = ingest_megadetector(path, tmp_path, species="x")
    row = f"images[0] ({entry['file']!r})"
    assert anns == [] and skips == [Skip(str(path), row, reason, f"{path} {row}: {problem}")]


@pytest.mark.parametrize("entry", [None, {"detections": []}, {"file": 3}, {"file": ""}])
def test_image_entry_without_a_file_is_a_skip(tmp_path, entry):
    path = write_json(tmp_path / "md.json", md([entry]))
    _, skips = ingest_megadetector(path, tmp_path, species="x")
    assert skips == [
        Skip(
            str(path),
            "images[0]",
            "malformed row",
            f"{path} images[0]: expected an object with a 'file', got {entry!r}",
        )
    ]


@pytest.mark.parametrize("second", ["a.jpg", "./a.jpg", "sub/../a.jpg", "alias.jpg"])
def test_a_photo_listed_twice_is_a_skip_naming_both(tmp_path, second):
    photo(tmp_path / "a.jpg")
    os.symlink(tmp_path / "a.jpg", tmp_path / "alias.jpg")
    path = write_json(
        tmp_path / "md.json",
        md(
            [
                {"file": "a.jpg", "detections": [det([0, 0, 1, 1])]},
                {"file": second, "detections": [det([0, 0, 0.5, 0.5])]},
            ]
        ),
    )
    (tmp_path / "sub").mkdir()
    anns, skips = ingest_megadetector(path, tmp_path, species="x")
    assert [a.box for a in anns] == [[0.0, 0.0, 96.0, 56.0]]
    row = f"images[1] ({second!r})"
    assert skips == [
        Skip(
            str(path), row, "duplicate", f"{path} {row}: the same photo as images[0]: skipped, images[0] kept"
        )
    ]


@pytest.mark.parametrize("data", [b"not a jpeg", b"", turned_jpeg(1)[:-200]])
def test_megadetector_unreadable_photo(tmp_path, data):
    (tmp_path / "a.jpg").write_bytes(data)
    path = write_json(tmp_path / "md.json", md([{"file": "a.jpg", "detections": [det([0, 0, 1, 1])]}]))
    _, [skip] = ingest_megadetector(path, tmp_path, species="x")
    assert skip.reason == "unreadable photo"
    assert skip.message.startswith(
        f"{path} images[0] ('a.jpg'): unreadable photo {tmp_path.resolve() / 'a.jpg'} ("
    )


# ------------------------------------------------------------------------------------------------------------------
# COCO and CSV
def coco(images, annotations, categories=({"id": 1, "name": "giraffe"},)) -> dict:
    return {"images": images, "annotations": annotations, "categories": list(categories)}


def test_coco(tmp_path):
    root = tmp_path / "imgs"
    photo(root / "a.jpg", make="Nikon", model="D850", taken="2024:01:02 03:04:05")
    photo(root / "turned.jpg", 6)
    data = coco(
        [
            {
                "id": 1,
                "file_name": "a.jpg",
                "date_captured": "2023-07-01 10:00:00",
                "latitude": -1.5,
                "longitude": 36.25,
                "location": "mara",
                "seq_id": "s1",
            },
            {"id": 2, "file_name": "turned.jpg"},
        ],
        [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 2, 30, 40],
                "individual_id": "G7",
                "viewpoint": "left",
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 1,
                "bbox": [40, 2, 30, 40],
                "name": "____",
                "encounter": "e9",
            },
            {"id": 12, "image_id": 2, "category_id": 1, "bbox": [0, 0, 56, 96], "theta": 0.5},
        ],
    )
    anns, skips = ingest_coco(write_json(tmp_path / "c.json", data), root)
    assert skips == []
    a, b, c = anns
    assert (a.annotation_id, a.box, a.species, a.individual, a.viewpoint) == (
        "10",
        [1.0, 2.0, 30.0, 40.0],
        "giraffe",
        "G7",
        "left",
    )
    assert (a.datetime, a.latitude, a.longitude, a.site, a.encounter, a.camera) == (
        "2023-07-01T10:00:00",
        -1.5,
        36.25,
        "mara",
        "s1",
        "Nikon D850",
    )  # the table's date wins, EXIF fills camera
    assert (b.individual, b.encounter) == (None, "e9")
    assert (c.box, c.theta, c.encounter, c.source) == (
        [0.0, 0.0, 56.0, 96.0],
        0.5,
        None,
        "c.json annotations[2]",
    )


@pytest.mark.parametrize(
    "images, ann, reason, problem",
    [
        (
            [{"id": 1, "file_name": "a.jpg"}],
            {"id": 5, "image_id": 1, "bbox": [80, 0, 30, 10]},
            "bad box",
            "box [80, 0, 30, 10] does not fit the photo (96 x 56 displayed)",
        ),
        (
            [{"id": 1, "file_name": "a.jpg"}],
            {"id": 5, "image_id": 1, "bbox": [1, 2, 3]},
            "bad box",
            "box [1, 2, 3] is not 4 numbers [x, y, w, h]",
        ),
        (
            [{"id": 1, "file_name": "gone.jpg"}],
            {"id": 5, "image_id": 1},
            "missing photo",
            "no such photo {root}/gone.jpg",
        ),
        (
            [{"id": 1, "file_name": "../out.jpg"}],
            {"id": 5, "image_id": 1},
            "outside the root",
            "photo '../out.jpg' resolves outside {root}: not read",
        ),
        (
            [{"id": 1, "file_name": "a.jpg"}],
            {"id": 5, "image_id": 9},
            "malformed row",
            "image_id 9 is not an image with a file_name",
        ),
        (
            [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
            {"id": 5, "image_id": 1},
            "duplicate",
            "image_id 1 names two photos (images[0] and images[1])",
        ),
        (
            [{"id": 1, "file_name": "a.jpg", "date_captured": "last june"}],
            {"id": 5, "image_id": 1},
            "malformed row",
            "date_captured 'last june' is not a date-time (ISO 8601 or EXIF)",
        ),
    ],
)
def test_coco_bad_rows_are_skips(tmp_path, images, ann, reason, problem):
    root = tmp_path / "imgs"
    photo(root / "a.jpg")
    photo(tmp_path / "out.jpg")
    images = [{"id": 100, "file_name": "a.jpg"}, *images]
    good = {"id": 4, "image_id": 100, "bbox": [0, 0, 10, 10]}
    path = write_json(tmp_path / "c.json", coco(images, [good, ann]))
    anns, skips = ingest_coco(path, root)
    row = "annotations[1]"
    problem = problem.format(root=root.resolve()).replace(
        "images[0] and images[1]", "images[1] and images[2]"
    )
    assert skips == [Skip(str(path), row, reason, f"{path} {row}: {problem}")]
    assert [a.annotation_id for a in anns] == ["4"]


@pytest.mark.parametrize(
    "first, second, shown",
    [
        ({"id": 7}, {"id": 7}, "'7'"),
        ({"uuid": "u-1", "id": 1}, {"uuid": "u-1", "id": 2}, "'u-1'"),
        ({"id": "7"}, {"id": 7}, "'7'"),
    ],
)
def test_coco_duplicate_ids_name_both_rows(tmp_path, first, second, shown):
    photo(tmp_path / "a.jpg")
    anns_in = [
        {**first, "image_id": 1, "bbox": [0, 0, 5, 5]},
        {**second, "image_id": 1, "bbox": [5, 5, 5, 5]},
    ]
    path = write_json(tmp_path / "c.json", coco([{"id": 1, "file_name": "a.jpg"}], anns_in))
    anns, skips = ingest_coco(path, tmp_path)
    assert [a.box for a in anns] == [[0.0, 0.0, 5.0, 5.0]]
    msg = f"{path} annotations[1]: annotation id {shown} repeats annotations[0]: skipped, annotations[0] kept"
    assert skips == [Skip(str(path), "annotations[1]", "duplicate", msg)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        ('{"images": []}', "not a COCO file (expected an object with 'images' and 'annotations' lists)"),
        ("[]", "not a COCO file (expected an object with 'images' and 'annotations' lists)"),
    ],
)
def test_coco_file_errors(tmp_path, text, message):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(IngestError) as err:
        ingest_coco(path, tmp_path)
    assert str(err.value) == f"{path}: {message}"


def test_csv(tmp_path):
    photo(tmp_path / "p" / "a.jpg", make="Sony", model="A7", taken="2024:02:03 04:05:06")
    photo(tmp_path / "p" / "b.jpg", seed=2)
    (tmp_path / "t.csv").write_text(
        "path,identity,species,encounter,viewpoint,datetime,latitude,longitude,box\n"
        'p/a.jpg,N1,nyala,enc1,left,,-25.5,31.25,"[1, 2, 10, 20]"\n'
        'p/a.jpg,N2,nyala,enc1,right,2024-02-03T04:05:06+02:00,,,"20 2 10 20"\n'
        "p/b.jpg,,,,,2024:02:03 04:06:00,,,\n"
    )
    anns, skips = ingest_csv(tmp_path / "t.csv", species="impala")
    assert skips == []
    assert [a.annotation_id for a in anns] == ["p/a.jpg#1", "p/a.jpg#2", "p/b.jpg"]
    a1, a2, b = anns
    assert (a1.individual, a1.species, a1.encounter, a1.viewpoint, a1.box) == (
        "N1",
        "nyala",
        "enc1",
        "left",
        [1.0, 2.0, 10.0, 20.0],
    )
    assert (a1.datetime, a1.latitude, a1.longitude, a1.camera) == (
        "2024-02-03T04:05:06",
        -25.5,
        31.25,
        "Sony A7",
    )
    assert (a2.datetime, a2.box, a2.source) == (
        "2024-02-03T04:05:06+02:00",
        [20.0, 2.0, 10.0, 20.0],
        "t.csv line 3",
    )
    assert (b.individual, b.species, b.box, b.datetime) == (None, "impala", None, "2024-02-03T04:06:00")


@pytest.mark.parametrize(
    "line, reason, problem",
    [
        (
            'a.jpg,N1,"[90, 0, 10, 10]"',
            "bad box",
            "box '[90, 0, 10, 10]' does not fit the photo (96 x 56 displayed)",
        ),
        ("a.jpg,N1,1 2 x 4", "bad box", "box '1 2 x 4' is not 4 numbers [x, y, w, h]"),
        ("a.jpg,N1,1 2 0 4", "bad box", "box '1 2 0 4' is not 4 finite numbers with w, h > 0"),
        ("gone.jpg,N1,", "missing photo", "no such photo {root}/gone.jpg"),
        ("../x/a.jpg,N1,", "outside the root", "photo '../x/a.jpg' resolves outside {root}: not read"),
        ("/etc/passwd,N1,", "outside the root", "photo '/etc/passwd' resolves outside {root}: not read"),
        (",N1,", "malformed row", "no photo path (columns path, photo, file_path, file_name empty)"),
    ],
)
def test_csv_bad_rows_are_skips(tmp_path, line, reason, problem):
    root = tmp_path / "t"
    photo(root / "a.jpg")
    photo(tmp_path / "x" / "a.jpg")
    (root / "t.csv").write_text(f"path,identity,box\na.jpg,N0,\n{line}\n")
    anns, skips = ingest_csv(root / "t.csv")
    assert skips == [
        Skip(
            str(root / "t.csv"),
            "line 3",
            reason,
            f"{root / 't.csv'} line 3: {problem.format(root=root.resolve())}",
        )
    ]


@pytest.mark.parametrize(
    "rows",
    [
        ["x1,a.jpg,", "x1,a.jpg,"],
        ["x1,a.jpg,", "x1,b.jpg,"],
        ["7,a.jpg,", "7,a.jpg,[0 0 4 4]"],
    ],
)
def test_csv_duplicate_ids_name_both_rows(tmp_path, rows):
    photo(tmp_path / "a.jpg")
    photo(tmp_path / "b.jpg")
    (tmp_path / "t.csv").write_text("annotation_id,path,box\n" + "\n".join(rows) + "\n")
    anns, skips = ingest_csv(tmp_path / "t.csv")
    assert len(anns) == 1
    ann_id = rows[0].split(",")[0]
    msg = f"{tmp_path / 't.csv'} line 3: annotation id {ann_id!r} repeats line 2: skipped, line 2 kept"
    assert skips == [Skip(str(tmp_path / "t.csv"), "line 3", "duplicate", msg)]


@pytest.mark.parametrize(
    "content, message",
    [
        (
            b"identity,species\nN1,x\n",
            "{p}: no path column (expected one of path, photo, file_path, file_name; got ['identity', 'species'])",
        ),
        (b"", "{p}: no path column (expected one of path, photo, file_path, file_name; got None)"),
        (b"path\n\xff\xfe\n", "{p}: not UTF-8 text (invalid start byte at byte 5)"),
    ],
)
def test_csv_file_errors(tmp_path, content, message):
    p = tmp_path / "t.csv"
    p.write_bytes(content)
    with pytest.raises(IngestError) as err:
        ingest_csv(p)
    assert str(err.value) == message.format(p=p)


def test_an_ingested_table_reads_back(tmp_path):
    photo(
        tmp_path / "s" / "a.jpg", make="RECONYX", model="HC600", taken="2026:05:01 06:12:30", gps=SYDNEY_GPS
    )
    photo(tmp_path / "s" / "b.jpg", 6)
    path = write_json(
        tmp_path / "md.json",
        md(
            [
                {"file": "a.jpg", "detections": [det([0.25, 0.5, 0.5, 0.25])]},
                {"file": "b.jpg", "detections": [det([0.25, 0.5, 0.5, 0.25])]},
            ]
        ),
    )
    anns, _ = ingest_megadetector(path, tmp_path / "s", species="nyala")
    table = tmp_path / "s" / "annotations.csv"
    table.write_bytes(annotations_csv(anns))
    again, skips = ingest_csv(table)
    assert skips == []
    keep = ("annotation_id", "photo", "box", "species", "datetime", "camera", "confidence")
    assert [[getattr(a, k) for k in keep] for a in again] == [[getattr(a, k) for k in keep] for a in anns]


# ------------------------------------------------------------------------------------------------------------------
# the command
def _season(tmp_path: Path) -> Path:
    root = tmp_path / "season"
    photo(root / "site1" / "a.jpg", make="RECONYX", model="HC600", taken="2026:05:01 06:12:30")
    photo(root / "site1" / "b.jpg", 6)
    raw_exif_jpeg(root / "site2" / "c.jpg", CORRUPT_EXIF[0][0])
    (root / "site2" / "broken.jpg").write_bytes(b"nope")
    return root


def test_cli_folder_end_to_end(tmp_path, capsys):
    root = _season(tmp_path)
    out = tmp_path / "out" / "annotations.csv"
    assert main(["--folder", str(root), "--species", "nyala", "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert line == (
        "3 annotations from 3 photos, 1 skipped (1 unreadable photo); 1 photos with an EXIF problem (see the notes "
        f"column); wrote {out} and annotations.skipped.csv\n"
    )
    rows = read_annotations(out)
    assert [(r.annotation_id, r.species, r.datetime) for r in rows] == [
        ("site1/a.jpg", "nyala", "2026-05-01T06:12:30"),
        ("site1/b.jpg", "nyala", None),
        ("site2/c.jpg", "nyala", None),
    ]
    skipped = (tmp_path / "out" / "annotations.skipped.csv").read_text().splitlines()
    broken = root.resolve() / "site2" / "broken.jpg"
    assert skipped == [
        "source,row,reason,message",
        f"{root.resolve()},site2/broken.jpg,unreadable photo,{broken}: unreadable photo (not an image Pillow can read): skipped",
    ]


def test_cli_refuses_to_overwrite(tmp_path, capsys):
    root = _season(tmp_path)
    out = tmp_path / "annotations.csv"
    out.write_text("mine\n")
    assert main(["--folder", str(root), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: --out {out} exists: pass --overwrite to replace it, or choose another file name\n"
    )
    assert out.read_text() == "mine\n" and not skipped_path(out).exists()
    out.unlink()
    skipped_path(out).write_text("mine too\n")
    assert main(["--folder", str(root), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: --out {skipped_path(out)} exists: pass --overwrite to replace it, or choose another file name\n"
    )
    assert main(["--folder", str(root), "--out", str(out), "--overwrite"]) == 0
    assert len(read_annotations(out)) == 3 and skipped_path(out).read_text().startswith(
        "source,row,reason,message\n"
    )


def test_cli_megadetector_and_species_map(tmp_path, capsys):
    root = tmp_path / "cards"
    photo(root / "north" / "a.jpg")
    photo(root / "south" / "b.jpg")
    smap = write_json(tmp_path / "species.json", {"north": "lynx", "south": "wolf"})
    data = md(
        [
            {"file": "north/a.jpg", "detections": [det([0, 0, 0.5, 0.5]), det([0.5, 0.5, 0.5, 0.5], 0.3)]},
            {"file": "south/b.jpg", "detections": [det([0, 0, 1, 1])]},
            {"file": "gone.jpg", "detections": [det([0, 0, 1, 1])]},
        ]
    )
    mdj = write_json(tmp_path / "md.json", data)
    out = tmp_path / "ann.csv"
    argv = [
        "--megadetector",
        str(mdj),
        "--images",
        str(root),
        "--species-map",
        str(smap),
        "--min-conf",
        "0.5",
    ]
    assert main([*argv, "--out", str(out)]) == 0
    assert capsys.readouterr().out == (
        f"2 annotations from 2 photos, 1 skipped (1 missing photo); wrote {out} and ann.skipped.csv\n"
    )
    assert [(r.annotation_id, r.species, r.box) for r in read_annotations(out)] == [
        ("north/a.jpg#0", "lynx", [0.0, 0.0, 48.0, 28.0]),
        ("south/b.jpg#0", "wolf", [0.0, 0.0, 96.0, 56.0]),
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--megadetector", "{t}/md.json"], "--megadetector needs --images DIR"),
        (["--coco", "{t}/md.json"], "--coco needs --images DIR"),
        (["--folder", "{t}", "--images", "{t}"], "--images goes with --megadetector or --coco"),
        (["--folder", "{t}", "--min-conf", "0.3"], "--min-conf goes with --megadetector or --camtrapdp"),
        (
            ["--megadetector", "{t}/md.json", "--images", "{t}", "--min-conf", "1.5"],
            "--min-conf must be in [0, 1], got 1.5",
        ),
        (
            ["--megadetector", "{t}/md.json", "--images", "{t}", "--min-conf", "nan"],
            "--min-conf must be in [0, 1], got nan",
        ),
        (["--folder", "{t}/nope"], "--folder {t}/nope: no such folder"),
        (["--folder", "{t}/md.json"], "--folder {t}/md.json: not a folder"),
        (["--csv", "{t}/gone.csv"], "--csv {t}/gone.csv: no such file"),
        (["--folder", "{t}", "--species-map", "{t}/gone.json"], "--species-map {t}/gone.json: no such file"),
        (
            ["--folder", "{t}", "--species-map", "{t}/md.json"],
            "--species-map {t}/md.json: expected a JSON object {{folder: species}}, got list",
        ),
        (["--folder", "{t}", "--species", " "], "--species is empty"),
        (
            ["--folder", "{t}", "--species", "a", "--species-map", "{t}/md.json"],
            "argument --species-map: not allowed with argument --species (see --help)",
        ),
        (
            ["--folder", "{t}", "--csv", "{t}/md.json"],
            "argument --csv: not allowed with argument --folder (see --help)",
        ),
        (["--csv", "{t}/md.json", "--out-of-place"], "unrecognized arguments: --out-of-place (see --help)"),
    ],
)
def test_cli_usage_errors_are_one_line(tmp_path, capsys, args, message):
    (tmp_path / "md.json").write_text("[]")
    argv = [a.format(t=tmp_path) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "o" / "a.csv")]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"error: {message.format(t=tmp_path)}\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("what", ["out-is-folder", "out-is-input", "out-is-species-map"])
def test_cli_output_checks(tmp_path, capsys, what):
    photo(tmp_path / "a.jpg")
    (tmp_path / "t.csv").write_text("path\na.jpg\n")
    (tmp_path / "m.csv").write_text("folder,species\n.,x\n")
    argv, message = {
        "out-is-folder": (
            ["--csv", f"{tmp_path}/t.csv", "--out", str(tmp_path)],
            f"--out {tmp_path} is a folder, not a file",
        ),
        "out-is-input": (
            ["--csv", f"{tmp_path}/t.csv", "--out", f"{tmp_path}/t.csv", "--overwrite"],
            f"--out {tmp_path}/t.csv is an input: refusing to write over it",
        ),
        "out-is-species-map": (
            [
                "--csv",
                f"{tmp_path}/t.csv",
                "--species-map",
                f"{tmp_path}/m.csv",
                "--out",
                f"{tmp_path}/m.csv",
                "--overwrite",
            ],
            f"--out {tmp_path}/m.csv is an input: refusing to write over it",
        ),
    }[what]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        (
            '{"info": {"format_version": "3"}, "images": []}',
            "info.format_version '3' is not supported (reads 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6)",
        ),
        ('{"images": []}', "no info.format_version: not a MegaDetector batch output"),
    ],
)
def test_cli_unreadable_input_is_exit_1_and_writes_nothing(tmp_path, capsys, text, message):
    (tmp_path / "md.json").write_text(text)
    out = tmp_path / "a.csv"
    assert (
        main(["--megadetector", str(tmp_path / "md.json"), "--images", str(tmp_path), "--out", str(out)]) == 1
    )
    assert capsys.readouterr().err == f"error: {tmp_path / 'md.json'}: {message}\n"
    assert not out.exists() and not skipped_path(out).exists()


def test_cli_in_a_fresh_interpreter(tmp_path):
    root = _season(tmp_path)
    out = tmp_path / "a.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "animal_reid.season.ingest_cli", "--folder", str(root), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("3 annotations from 3 photos, 1 skipped (1 unreadable photo)")
    assert proc.stderr == ""
    assert len(read_annotations(out)) == 3


def test_species_map_by_scientific_name(tmp_path):
    path = tmp_path / "names.csv"
    path.write_text("scientificName,species\nTragelaphus angasii,nyala\nPanthera leo, lion \n")
    assert read_species_map(path, "scientificName") == {
        "Tragelaphus angasii": "nyala",
        "Panthera leo": "lion",
    }
    twice = write_json(tmp_path / "names.json", {"Panthera leo": "lion"})
    twice.write_text('{"Panthera leo": "lion", "Panthera leo": "cat"}')
    with pytest.raises(IngestError) as err:
        read_species_map(twice, "scientificName")
    assert (
        str(err.value)
        == f"{twice} entry 'Panthera leo' and entry 'Panthera leo': scientificName 'Panthera leo' twice"
    )


@pytest.mark.parametrize("descriptor", ["{", "[]", '{"resources": []}'])
def test_cli_camtrapdp_package_that_cannot_be_read_is_one_line(tmp_path, capsys, descriptor):
    """``--camtrapdp`` runs :func:`animal_reid.season.camtrapdp.read_camtrapdp`: its errors are one line, exit 1."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "datapackage.json").write_text(descriptor)
    out = tmp_path / "a.csv"
    assert main(["--camtrapdp", str(pkg), "--min-conf", "0.5", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {pkg / 'datapackage.json'}: ") and err.count("\n") == 1
    assert not out.exists()
