"""Batch uploads read for the review queue (animal_reid.serve.review_ingest): zips read safely (zip-slip, absolute
paths, links, sizes, entry counts refused naming the entry), photos checked as the app checks uploads, metadata read
through the season ingest (EXIF, MegaDetector, Camtrap DP), encounters formed. No model: a stand-in encoder."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from animal_reid.serve.review_ingest import (
    BatchError,
    ZipLimits,
    check_photo,
    embed_photos,
    encounters,
    extract_zip,
    read_batch,
    upload_name,
    write_uploads,
)
from animal_reid.serve.settings import Limits
from animal_reid.testing.images import turned_jpeg

EXIF_IFD = 0x8769


def jpeg(seed: int, taken: str | None = None, camera: str | None = None, size=(64, 48)) -> bytes:
    """A generated JPEG with an EXIF date-time (``2026:05:01 06:00:00``) and camera model when given."""
    exif = {}
    if camera:
        exif[0x010F], exif[0x0110] = "RECONYX", camera
    if taken:
        exif[EXIF_IFD] = {0x9003: taken}
    return turned_jpeg(1, size, seed, exif=exif)


def zip_bytes(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)
    buf.seek(0)
    return buf


def fake_encode(images, boxes, thetas):
    """Unit rows from each image's bytes and box (stable; distinct photos give distinct rows)."""
    rows = []
    for data, box in zip(images, boxes, strict=True):
        seed = int(hashlib.sha256(data + json.dumps(box).encode()).hexdigest()[:8], 16)
        v = np.random.default_rng(seed).normal(size=8)
        rows.append(v / np.linalg.norm(v))
    return np.asarray(rows, np.float32)


# ----------------------------------------------------------------------------------------------------------------
# zips refused, naming the entry; nothing written outside the folder
def _link(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


@pytest.mark.parametrize(
    ("entries", "message", "status"),
    [
        (
            [("ok.jpg", b"x"), ("../evil.jpg", b"x")],
            "entry '../evil.jpg' leaves the archive (a '..' in its path)",
            422,
        ),
        ([("a/../../evil.jpg", b"x")], "entry 'a/../../evil.jpg' leaves the archive", 422),
        ([("..\\evil.jpg", b"x")], "entry '..\\\\evil.jpg' leaves the archive", 422),
        ([("/tmp/evil.jpg", b"x")], "entry '/tmp/evil.jpg' has an absolute path", 422),
        ([("C:/evil.jpg", b"x")], "entry 'C:/evil.jpg' has an absolute path", 422),
        ([_link("cards/link.jpg", "../../etc/passwd")], "entry 'cards/link.jpg' is a symbolic link", 422),
        ([("a.jpg", b"x"), ("A.JPG", b"y")], "entry 'A.JPG' is in the archive twice", 422),
        (
            [("big.jpg", b"\0" * 3000)],
            "entry 'big.jpg' is 3000 bytes uncompressed, over the 2000 byte limit",
            413,
        ),
        (
            [("meta.json", b" " * 600)],
            "entry 'meta.json' is 600 bytes uncompressed, over the 500 byte limit",
            413,
        ),
        ([("a.jpg", b"\0" * 800), ("b.jpg", b"\0" * 800)], "entry 'b.jpg' is over the 400 byte limit", 413),
        ([(f"{i}.jpg", b"x") for i in range(6)], "cards.zip: 6 entries, over the limit of 5", 413),
    ],
)
def test_unsafe_zip_entries_are_refused_naming_the_entry(tmp_path, entries, message, status):
    dest = tmp_path / "batch" / "root"
    dest.mkdir(parents=True)
    limits = ZipLimits(max_entries=5, max_entry_bytes=500, max_total_bytes=1200)
    with pytest.raises(BatchError) as err:
        extract_zip(zip_bytes(entries), "cards.zip", dest, 2000, limits)
    assert message in str(err.value) and str(err.value).startswith("cards.zip: ")
    assert "\n" not in str(err.value) and err.value.status == status
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and dest not in p.parents]
    assert outside == []  # nothing landed beside or above the folder


def test_a_zip_is_read_into_its_folder(tmp_path):
    entries = [("cards/a.jpg", jpeg(1)), ("cards/sub/", b""), ("./b.jpg", jpeg(2)), ("notes.txt", b"hi")]
    rels = extract_zip(zip_bytes(entries), "cards.zip", tmp_path, 10**6, ZipLimits())
    assert rels == ["cards/a.jpg", "b.jpg", "notes.txt"]
    assert (tmp_path / "cards" / "a.jpg").read_bytes() == jpeg(1)


def test_not_a_zip_is_one_line(tmp_path):
    with pytest.raises(BatchError, match=r"^photos\.zip: not a readable zip archive") as err:
        extract_zip(io.BytesIO(b"PK not really"), "photos.zip", tmp_path, 10**6, ZipLimits())
    assert err.value.status == 422


def test_upload_names_are_plain_and_unique(tmp_path):
    taken: set[str] = set()
    assert [upload_name(n, taken) for n in ("../../x.jpg", "x.jpg", "C:\\cam\\x.jpg", None, "a b?.png")] == [
        "x.jpg", "x-2.jpg", "x-3.jpg", "photo", "a b_.png",
    ]  # fmt: skip
    assert write_uploads([("../up.jpg", b"1")], tmp_path) == ["up.jpg"]
    assert (tmp_path / "up.jpg").read_bytes() == b"1" and not (tmp_path.parent / "up.jpg").exists()


# ----------------------------------------------------------------------------------------------------------------
# photos checked like the app's uploads
def test_check_photo_is_the_app_rule():
    service = SimpleNamespace(limits=Limits(max_upload_bytes=10_000, max_pixels=64 * 48))
    photo = check_photo(jpeg(1), "a.jpg", service)
    assert (photo.format, photo.width, photo.height) == ("JPEG", 64, 48)
    big = jpeg(1, size=(80, 48))
    for data, status, text in [
        (b"", 400, "a.jpg: the upload is empty"),
        (b"not an image", 415, "a.jpg: not an image in an allowed format (JPEG, PNG, WEBP)"),
        (_gif(), 415, "a.jpg: GIF images are not accepted (allowed: JPEG, PNG, WEBP)"),
        (big, 413, "a.jpg: image is 80x48 pixels, over the 3072 pixel limit"),
        (b"\xff" * 10_001, 413, "a.jpg: upload is over the 10000 byte limit"),
    ]:
        with pytest.raises(BatchError) as err:
            check_photo(data, "a.jpg", service)
        assert (err.value.status, str(err.value)) == (status, text)


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "GIF")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# metadata and encounters
def _read(root: Path, species="lion", limits=None, **kw):
    rels = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    read = read_batch(root, rels, species, SimpleNamespace(limits=limits or Limits()), **kw)
    photos = embed_photos(fake_encode, read.photos, read.skipped)
    return read, photos


def test_photos_with_exif_form_encounters_by_camera_and_gap(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg(1, "2026:05:01 06:00:00", "HC600"))
    (tmp_path / "b.jpg").write_bytes(jpeg(2, "2026:05:01 06:40:00", "HC600"))
    (tmp_path / "c.jpg").write_bytes(jpeg(3, "2026:05:01 09:00:00", "HC600"))
    (tmp_path / "d.jpg").write_bytes(jpeg(4))  # no date: an encounter of its own
    (tmp_path / "copy.jpg").write_bytes(jpeg(1, "2026:05:01 06:00:00", "HC600"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "readme.txt").write_text("cards from the north pan")
    read, photos = _read(tmp_path, site="North pan", observer="Ana")
    assert read.source == "photos" and read.n_files == 6
    assert sorted(p.file for p in photos) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    a = next(p for p in photos if p.file == "a.jpg")
    assert (a.taken_at, a.camera, a.site, a.observer, a.box) == (
        "2026-05-01T06:00:00", "RECONYX HC600", "North pan", "Ana", None,
    )  # fmt: skip
    assert a.embedding.shape == (8,)
    reasons = {s["file"]: s["reason"] for s in read.skipped}
    assert reasons["copy.jpg"] == "copy.jpg: the same photo as a.jpg: skipped"
    assert reasons["broken.jpg"].startswith("broken.jpg: not an image in an allowed format")
    assert reasons["readme.txt"] == "readme.txt: not a photo (by its name): skipped"
    assert [[p.file for p in g] for g in encounters(photos, "lion", gap_min=60)] == [
        ["d.jpg"], ["a.jpg", "b.jpg"], ["c.jpg"],
    ]  # fmt: skip
    assert len(encounters(photos, "lion", gap_min=30)) == 4
    assert len(encounters(photos, "lion", gap_min=180)) == 2


def _md(images: list) -> bytes:
    doc = {
        "info": {"format_version": "1.4"},
        "detection_categories": {"1": "animal", "2": "person"},
        "images": images,
    }
    return json.dumps(doc).encode()


def test_megadetector_boxes_and_two_animals_in_one_photo(tmp_path):
    entries = [
        ("cards/a.jpg", jpeg(1, "2026:05:01 06:00:00", "HC600", size=(100, 80))),
        ("cards/b.jpg", jpeg(2, "2026:05:01 06:01:00", "HC600", size=(100, 80))),
        ("cards/empty.jpg", jpeg(3, "2026:05:01 06:02:00", "HC600")),
        ("cards/md.json", _md([
            {"file": "a.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.3, 0.5]},
                                             {"category": "1", "conf": 0.8, "bbox": [0.5, 0.2, 0.4, 0.5]}]},
            {"file": "b.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": [0.0, 0.0, 0.5, 0.5]},
                                             {"category": "2", "conf": 0.9, "bbox": [0.5, 0.5, 0.5, 0.5]}]},
            {"file": "empty.jpg", "detections": []},
            {"file": "../outside.jpg", "detections": []},
        ])),
    ]  # fmt: skip
    extract_zip(zip_bytes(entries), "cards.zip", tmp_path, 10**6, ZipLimits())
    read, photos = _read(tmp_path)
    assert read.source == "megadetector"
    assert [(p.file, p.box) for p in photos] == [
        ("cards/a.jpg", pytest.approx([10.0, 8.0, 30.0, 40.0])),
        ("cards/a.jpg", pytest.approx([50.0, 16.0, 40.0, 40.0])),
        ("cards/b.jpg", pytest.approx([0.0, 0.0, 50.0, 40.0])),
    ]
    reasons = {s["file"]: s["reason"] for s in read.skipped}
    assert (
        reasons["cards/empty.jpg"]
        == "cards/empty.jpg: no animal in this photo by the batch's metadata: skipped"
    )
    assert any("../outside.jpg" in r and "outside" in r for r in reasons.values())
    assert all("/tmp" not in r for r in reasons.values())  # no temporary path shown to the user
    groups = encounters(photos, "lion", gap_min=60)
    # one camera, one minute apart: one encounter, split in two animals (a.jpg has two)
    assert len(groups) == 2 and sorted(len(g) for g in groups) == [1, 2]
    assert all(len({p.file for p in g}) == len(g) for g in groups)  # never two boxes of one photo together


def test_camtrap_dp_package(tmp_path):
    from test_season_camtrapdp import make_package

    pkg = make_package(tmp_path / "pkg")
    read, photos = _read(tmp_path, species="tragelaphus_angasii")
    assert read.source == "camtrapdp"
    assert sorted((p.file, p.encounter, p.site) for p in photos) == [
        ("pkg/media/d1/IMG_0001.JPG", "e1", "North pan"),
        ("pkg/media/d1/IMG_0001.JPG", "e1", "North pan"),
        ("pkg/media/d2/IMG_0002.JPG", "e2", "L2"),
    ]
    first = next(p for p in photos if p.viewpoint == "left")
    assert (first.observer, first.notes, first.lat, first.lon) == ("Ann Ranger", "limping", -24.5, 31.25)
    reasons = " | ".join(s["reason"] for s in read.skipped)
    assert "a Panthera leo observation, not tragelaphus_angasii: skipped" in reasons
    assert "event-level observation" in reasons
    assert "pkg/media/d3/IMG_0004.JPG: no animal in this photo" in reasons
    groups = encounters(photos, "tragelaphus_angasii", gap_min=60)
    assert sorted(len(g) for g in groups) == [1, 1, 1]  # e1's two animals apart, e2
    with pytest.raises(
        BatchError, match=r"names several species \(Panthera leo, Tragelaphus angasii\), none of"
    ):
        _read(tmp_path, species="nyala")
    assert pkg.is_dir()


def test_a_photo_the_model_refuses_is_skipped(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    (tmp_path / "b.jpg").write_bytes(jpeg(2))
    read = read_batch(tmp_path, ["a.jpg", "b.jpg"], "lion", SimpleNamespace(limits=Limits()))
    bad = read.photos[1].photo.read().data

    def encode(images, boxes, thetas):
        if bad in images:
            raise ValueError("<123 bytes>: box [0, 0, 500, 500] is outside the 64x48 image\nmore")
        return fake_encode(images, boxes, thetas)

    photos = embed_photos(encode, read.photos, read.skipped)
    assert [p.file for p in photos] == ["a.jpg"]
    assert read.skipped[-1]["file"] == "b.jpg" and "is outside the 64x48 image" in read.skipped[-1]["reason"]
