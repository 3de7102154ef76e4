"""The corpus builder's output folder and inputs under issue 31's policies.

Nothing replaced on a guess (the output is an ``OutputFolder``: only files of its manifest change), ambiguity in
an input (one COCO image id for two photos, one file under two identities, two rows with one key) reported
naming both rows, boxes judged in displayed coordinates (EXIF orientation applied), and one-line errors naming
what the user typed (a relative ``--coco``), a symbolic link pointing outside a source, a CSV saved with a BOM
and the exact trouble with a box. Every input is generated here.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("datasets")

from animal_reid.manifest import LOCK_NAME, MANIFEST_NAME, OutputFolder  # noqa: E402
from data_scripts.build import build, main  # noqa: E402
from data_scripts.schema import Record  # noqa: E402
from data_scripts.sources import coco_source, get_source, miewid_source  # noqa: E402
from data_scripts.splits import read_benchmark  # noqa: E402
from data_scripts.validate import (  # noqa: E402
    BOX_COVERS_IMAGE,
    BOX_OUTSIDE,
    BOX_PAST_BORDER,
    BOX_ZERO_AREA,
    DUPLICATE_ID,
    DUPLICATE_IMAGE_ENTRY,
    OUTSIDE_SOURCE,
    TWO_IDENTITIES,
    validate,
)

BOM = "\ufeff"


# ---------------------------------------------------------------------------------------------------- helpers
def _jpeg(seed: int, w: int = 64, h: int = 48, orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    if orientation is None:
        img.save(buf, format="JPEG", quality=90)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(buf, format="JPEG", quality=90, exif=exif)
    return buf.getvalue()


def _files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the lock excepted: each run rewrites its holder) with its sha256."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def _write_csv(path: Path, rows: list[dict], bom: bool = False, newline: str = "\n") -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator=newline)
        writer.writeheader()
        writer.writerows(rows)


def _write_coco(base: Path, images: list, annotations: list) -> None:
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    doc = {"images": images, "annotations": annotations, "categories": []}
    (base / "annotations" / "instances_train.json").write_text(json.dumps(doc))


def _coco(base: Path, n: int = 4) -> tuple[list, list]:
    """``n`` photos (64x48) of two sharks in ``base/images/train``, one boxed annotation each."""
    (base / "images" / "train").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        (base / "images" / "train" / f"{i}.jpg").write_bytes(_jpeg(i))
        images.append({"id": i, "file_name": f"{i}.jpg"})
        anns.append(
            {
                "id": 100 + i,
                "image_id": i,
                "bbox": [2, 3, 40, 30],
                "name": f"s{i % 2}",
                "species": "whale_shark",
            }
        )
    return images, anns


def _csv_source(folder: Path, n: int = 4) -> list[dict]:
    """``n`` photos in ``folder/img`` and their MiewID rows (two zebras, no box)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        (folder / "img" / f"{i}.jpg").write_bytes(_jpeg(i))
        rows.append(
            {
                "file_path": f"img/{i}.jpg",
                "name": f"z{i % 2}",
                "annot_uuid": f"u{i}",
                "species": "plains_zebra",
            }
        )
    return rows


def _build(src, tmp_path: Path, out: Path | None = None, **kwargs):
    out = out or tmp_path / "out"
    return build([src], out, data_root=tmp_path, min_per_identity=1, workers=1, progress=False, **kwargs)


def _skips(result, reason: str) -> dict[str, str]:
    """``{image id without the source's prefix: detail}`` of the rows skipped for ``reason``."""
    return {p.image_id.split(":", 2)[2]: p.detail for p in result.problems if p.reason == reason}


def _synthetic_args(out: Path, *extra: str, identities: int = 3) -> list[str]:
    return [
        "--sources", "synthetic", "--out", str(out), "--synthetic-identities", str(identities),
        "--synthetic-images", "3", "--synthetic-patterns", "stripes", "--synthetic-size", "40",
        "--no-progress", "--workers", "1", *extra,
    ]  # fmt: skip


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------- 1. nothing replaced on a guess
def _project(out: Path) -> None:
    (out / "data" / "raw_photos").mkdir(parents=True)
    (out / "data" / "raw_photos" / "lion1.jpg").write_bytes(_jpeg(1))
    (out / "notes.md").write_text("field notes")


def _old_corpus(out: Path) -> None:
    """A corpus as built before manifests existed: card, report and shards, no manifest."""
    (out / "data" / "lion").mkdir(parents=True)
    (out / "data" / "lion" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    (out / "README.md").write_text("---\nconfigs: []\n---\n")
    (out / "build_report.json").write_text("{}")


def _only_data(out: Path) -> None:
    (out / "data").mkdir(parents=True)  # the old guess called this a corpus


@pytest.mark.parametrize(
    "make, shown",
    [(_project, "2 entries: data, notes.md"), (_old_corpus, "3 entries: README.md, build_report.json, data"),
     (_only_data, "1 entry: data")],
    ids=["project", "corpus-before-manifests", "bare-data-folder"],
)  # fmt: skip
@pytest.mark.parametrize("overwrite", [False, True])
def test_folder_without_manifest_is_refused_even_with_overwrite(tmp_path, capsys, make, shown, overwrite):
    out = tmp_path / "target"
    make(out)
    before = _files(out)
    with pytest.raises(SystemExit) as exit_info:
        main(_synthetic_args(out, *(["--overwrite"] if overwrite else [])))
    assert exit_info.value.code == 2
    assert _error_line(capsys) == (
        f"error: --out {out} is not empty ({shown}) and was not written by animal-reid (no {MANIFEST_NAME}; an "
        "output written before manifests existed has none either): choose a new or empty folder, or move it "
        f"aside first (mv {out} {out}.old)"
    )
    assert _files(out) == before and not (out / MANIFEST_NAME).exists()


def _notes(out: Path) -> dict[str, bytes]:
    return {"notes.txt": b"my notes"}


def _analysis(out: Path) -> dict[str, bytes]:
    return {"analysis/plot.png": _jpeg(5), "analysis/deep/table.csv": b"a,b\n1,2\n"}


def _inside_data(out: Path) -> dict[str, bytes]:
    return {"data/synth_stripes/my_selection.txt": b"rows 1-5", "data/README.txt": b"mine"}


@pytest.mark.parametrize("added", [_notes, _analysis, _inside_data], ids=["notes", "analysis", "inside-data"])
def test_files_beside_a_corpus_survive_overwrite(tmp_path, added):
    out = tmp_path / "corpus"
    main(_synthetic_args(out, identities=3))
    old_manifest = json.loads((out / MANIFEST_NAME).read_text())["files"]
    mine = added(out)
    for rel, data in mine.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    result = main(_synthetic_args(out, "--overwrite", identities=4))
    assert result.counts["all"]["identities"] == 4
    assert {rel: (out / rel).read_bytes() for rel in mine} == mine  # the user's files, byte for byte
    new_manifest = json.loads((out / MANIFEST_NAME).read_text())["files"]
    assert not set(new_manifest) & set(mine)
    assert set(_files(out)) == set(new_manifest) | set(mine) | {MANIFEST_NAME}
    assert old_manifest != new_manifest
    assert not [p for p in out.iterdir() if p.name.startswith(".animal-reid-staging")]


@pytest.mark.parametrize(
    "name", ["README.md", "build_report.json", "data/synth_stripes/train-00000-of-00001.parquet"]
)
def test_an_edited_corpus_file_is_kept_aside_on_overwrite(tmp_path, name):
    out = tmp_path / "corpus"
    main(_synthetic_args(out, identities=3))
    with open(out / name, "ab") as fh:
        fh.write(b"\n<!-- my edit -->\n")
    edited = (out / name).read_bytes()
    main(_synthetic_args(out, "--overwrite", identities=4))
    aside = sorted((out / name).parent.glob(Path(name).name + ".edited-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == edited
    assert (out / name).read_bytes() != edited


@pytest.mark.parametrize("where", ["data-root", "source", "current-folder"])
def test_output_holding_an_input_or_the_current_folder_is_refused(tmp_path, capsys, monkeypatch, where):
    out = tmp_path / "out"
    rows = _csv_source(out / "src" if where == "source" else tmp_path / "src")
    csv_path = (out / "src" if where == "source" else tmp_path / "src") / "t.csv"
    _write_csv(csv_path, rows)
    data_root = out / "root" if where == "data-root" else tmp_path
    data_root.mkdir(parents=True, exist_ok=True)
    if where == "current-folder":
        (out / "work").mkdir(parents=True)
        monkeypatch.chdir(out / "work")
    before = _files(tmp_path)
    argv = ["--miewid", f"toy={csv_path}", "--out", str(out), "--data-root", str(data_root), "--overwrite"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--no-progress", "--workers", "1"])
    assert exit_info.value.code == 2
    what = {
        "data-root": f"the input ({data_root})",
        "source": f"the input ({data_root / csv_path})",
        "current-folder": f"the current folder ({out / 'work'})",
    }[where]
    assert _error_line(capsys) == f"error: --out {out} holds {what}: refusing to write over it"
    assert _files(tmp_path) == before


def test_a_second_build_into_a_locked_output_is_refused(tmp_path, capsys):
    out = tmp_path / "corpus"
    with OutputFolder(out, tool="someone else"):
        with pytest.raises(SystemExit) as exit_info:
            main(_synthetic_args(out))
    assert exit_info.value.code == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: --out {out} is being written by ") and "process" in line


@pytest.mark.parametrize(
    "fails, err, words",
    [
        ("parquet", errno.ENOSPC, "no space left on the device (disk full)"),
        ("README.md", errno.EACCES, "permission denied"),
        ("build_report.json", errno.EDQUOT, "disk quota exceeded"),
    ],
)
def test_disk_full_or_permission_denied_names_the_file_and_keeps_the_corpus(
    tmp_path, capsys, monkeypatch, fails, err, words
):
    import pyarrow.parquet as pq

    out = tmp_path / "corpus"
    main(_synthetic_args(out))
    (out / "notes.txt").write_text("mine")
    before = _files(out)
    failed: list[Path] = []
    if fails == "parquet":  # pyarrow's own error when the disk is full: no file name in it

        def disk_full(table, where, **kwargs):
            failed.append(Path(where))
            raise OSError(err, "Error writing bytes to file. Detail: [errno 28] No space left on device")

        monkeypatch.setattr(pq, "write_table", disk_full)
    else:
        real_write_text = Path.write_text

        def refuse(self, *args, **kwargs):
            if self.name == fails and ".animal-reid-staging-" in str(self):
                failed.append(self)
                raise OSError(err, "simulated", str(self))
            return real_write_text(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(SystemExit) as exit_info:
        main(_synthetic_args(out, "--overwrite", identities=4))
    assert exit_info.value.code == 1
    assert _error_line(capsys) == (
        f"error: cannot write the corpus: {failed[0]}: {words}; the previous content of {out} is left as it was"
    )
    assert _files(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".animal-reid-staging")]


class _FakeApi:
    calls: list[dict] = []

    def __init__(self, token=None):
        pass

    def create_repo(self, *args, **kwargs):
        return None

    def upload_folder(self, **kwargs):
        _FakeApi.calls.append(kwargs)
        return "ok"


@pytest.mark.parametrize(
    "extra",
    [
        {"notes.txt": b"private notes"},
        {".animal-reid-staging-dead0000/data/synth_stripes/train-00000-of-00001.parquet": b"PAR1"},
        {"analysis/plot.png": b"png", "data/synth_stripes/mine.parquet": b"PAR1"},
    ],
    ids=["notes", "left-over-staging", "analysis-and-shard-like"],
)
def test_push_uploads_the_corpus_files_only(tmp_path, monkeypatch, extra):
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    from data_scripts.write import push_to_hub

    out = tmp_path / "corpus"
    main(_synthetic_args(out))
    for rel, data in extra.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    _FakeApi.calls = []
    push_to_hub(out, "alice/corpus")
    (call,) = _FakeApi.calls
    present = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert LOCK_NAME in present and MANIFEST_NAME in present
    uploaded = set(
        filter_repo_objects(
            present, allow_patterns=call["allow_patterns"], ignore_patterns=call["ignore_patterns"]
        )
    )
    listed = set(json.loads((out / MANIFEST_NAME).read_text())["files"])
    assert uploaded == listed and {"README.md", "build_report.json"} <= uploaded
    assert not uploaded & set(extra)


# ------------------------------------------------------------------------ 2. ambiguity: both rows named
@pytest.mark.parametrize(
    "entries, shown",
    [
        ([{"id": 7, "file_name": "0.jpg"}, {"id": 7, "file_name": "1.jpg"}], "images[4] '0.jpg' and images[5] '1.jpg'"),
        ([{"id": 7, "file_name": "2.jpg"}, {"id": 7.0, "file_name": "3.jpg"}, {"id": 7, "file_name": "0.jpg"}],
         "images[4] '2.jpg' and images[5] '3.jpg' and images[6] '0.jpg'"),
        ([{"id": "7", "file_name": "0.jpg"}, {"id": 7, "file_name": "1.jpg"}, {"id": "7", "file_name": "3.jpg"}],
         "images[4] '0.jpg' and images[6] '3.jpg'"),
    ],
    ids=["two", "three-int-and-float", "text-ids"],
)  # fmt: skip
def test_duplicate_coco_image_ids_skip_their_annotations_naming_both(tmp_path, entries, shown):
    base = tmp_path / "ws.coco"
    images, anns = _coco(base)
    images += entries
    ref = entries[0]["id"]
    anns += [{"id": 200, "image_id": ref, "bbox": [2, 3, 40, 30], "name": "s0"},
             {"id": 201, "image_id": ref, "bbox": [5, 5, 20, 20], "name": "s1"}]  # fmt: skip
    _write_coco(base, images, anns)
    result = _build(coco_source("wsx", base, species=("whale_shark",)), tmp_path)
    skipped = _skips(result, DUPLICATE_IMAGE_ENTRY)
    ref_text = repr(ref)
    for ann_id in (200, 201):
        assert skipped[f"instances_train/{ann_id}"] == (
            f"instances_train.json annotation {ann_id}: image_id {ref_text} is listed more than once among the "
            f"file's images, with different files ({shown}): which photo the annotation is on is unknown"
        )
    assert result.rows_written == 4  # the annotations of other photos are kept


def test_coco_image_listed_twice_with_one_file_is_one_photo(tmp_path):
    base = tmp_path / "ws.coco"
    images, anns = _coco(base)
    images += [{"id": 0, "file_name": "0.jpg", "width": 64}]  # the same photo again: no ambiguity
    _write_coco(base, images, anns)
    result = _build(coco_source("wsx", base, species=("whale_shark",)), tmp_path)
    assert result.rows_written == 4 and result.problems == []


def _two_ids_csv(tmp_path: Path):
    rows = _csv_source(tmp_path / "src")
    rows.append({"file_path": "img/0.jpg", "name": "z1", "annot_uuid": "again"})  # z0's photo, as z1
    _write_csv(tmp_path / "src" / "t.csv", rows)
    src = miewid_source("toy", tmp_path / "src" / "t.csv", species=("plains_zebra",))
    photo = tmp_path / "src" / "img" / "0.jpg"
    return src, {
        "t/u0": f"t.csv line 2 labels {photo} (the whole photo) as 'toy:plains_zebra:z0', but t.csv line 6 says "
        "'toy:plains_zebra:z1': all skipped",
        "t/again": f"t.csv line 6 labels {photo} (the whole photo) as 'toy:plains_zebra:z1', but t.csv line 2 "
        "says 'toy:plains_zebra:z0': all skipped",
    }


def _two_ids_csv_same_box_bom(tmp_path: Path):
    rows = _csv_source(tmp_path / "src")
    for r in rows:
        r["bbox"] = "[2, 3, 40, 30]"
    rows.append({"file_path": "./img/../img/1.jpg", "name": "z0", "annot_uuid": "again", "bbox": "2 3 40 30"})
    _write_csv(tmp_path / "src" / "t.csv", rows, bom=True, newline="\r\n")
    src = miewid_source("toy", tmp_path / "src" / "t.csv", species=("plains_zebra",))
    one, again = tmp_path / "src" / "img" / "1.jpg", tmp_path / "src" / "img/../img/1.jpg"
    return src, {
        "t/u1": f"t.csv line 3 labels {one} (box [2, 3, 40, 30]) as 'toy:plains_zebra:z1', but t.csv line 6 "
        "says 'toy:plains_zebra:z0': all skipped",
        "t/again": f"t.csv line 6 labels {again} (box [2, 3, 40, 30]) as 'toy:plains_zebra:z0', but "
        "t.csv line 3 says 'toy:plains_zebra:z1': all skipped",
    }


def _two_ids_coco(tmp_path: Path):
    base = tmp_path / "ws.coco"
    images, anns = _coco(base)
    anns += [
        {"id": 300, "image_id": 2, "bbox": [2, 3, 40, 30], "name": "s1"},  # photo 2's box, another shark
        {"id": 301, "image_id": 2, "bbox": [30, 20, 30, 25], "name": "s1"},  # another box: a second animal
    ]
    _write_coco(base, images, anns)
    photo = base / "images" / "train" / "2.jpg"
    return coco_source("wsx", base, species=("whale_shark",)), {
        "instances_train/102": f"instances_train.json annotations[2] (id 102) labels {photo} (box [2, 3, 40, 30]) "
        "as 'wsx:whale_shark:s0', but instances_train.json annotations[4] (id 300) says 'wsx:whale_shark:s1': "
        "all skipped",
        "instances_train/300": f"instances_train.json annotations[4] (id 300) labels {photo} (box [2, 3, 40, 30]) "
        "as 'wsx:whale_shark:s1', but instances_train.json annotations[2] (id 102) says 'wsx:whale_shark:s0': "
        "all skipped",
    }


@pytest.mark.parametrize("make", [_two_ids_csv, _two_ids_csv_same_box_bom, _two_ids_coco])
def test_one_image_under_two_identities_skips_both_naming_both(tmp_path, make):
    src, expected = make(tmp_path)
    result = _build(src, tmp_path)
    assert _skips(result, TWO_IDENTITIES) == expected
    written = result.rows_written
    assert written == result.report["rows_read"] - len(expected)  # the rest is kept (a second animal too)


def _dup_key_csv(tmp_path: Path):
    rows = _csv_source(tmp_path / "src")
    rows[3]["annot_uuid"] = "u1"  # two different photos under one key
    _write_csv(tmp_path / "src" / "t.csv", rows)
    src = miewid_source("toy", tmp_path / "src" / "t.csv", species=("plains_zebra",))
    one, three = repr(str(tmp_path / "src" / "img" / "1.jpg")), repr(str(tmp_path / "src" / "img" / "3.jpg"))
    return src, 2, [
        ("t/u1", f"t.csv line 3 and t.csv line 5 have the same id but differ (path {one} vs {three}): all skipped"),
        ("t/u1", f"t.csv line 5 and t.csv line 3 have the same id but differ (path {three} vs {one}): all skipped"),
    ]  # fmt: skip


def _dup_key_coco(tmp_path: Path):
    base = tmp_path / "ws.coco"
    images, anns = _coco(base)
    anns[1]["id"] = 100  # annotation ids 100, 100: the second on another photo with another shark
    _write_coco(base, images, anns)
    first, second = (
        "instances_train.json annotations[0] (id 100)",
        "instances_train.json annotations[1] (id 100)",
    )
    s0, s1 = "'wsx:whale_shark:s0'", "'wsx:whale_shark:s1'"
    return coco_source("wsx", base, species=("whale_shark",)), 2, [
        ("instances_train/100", f"{first} and {second} have the same id but differ (identity {s0} vs {s1}): all skipped"),
        ("instances_train/100", f"{second} and {first} have the same id but differ (identity {s1} vs {s0}): all skipped"),
    ]  # fmt: skip


def _dup_key_repeat(tmp_path: Path):
    rows = _csv_source(tmp_path / "src")
    rows.append(dict(rows[2]))  # an exact repeat: no ambiguity, kept once
    _write_csv(tmp_path / "src" / "t.csv", rows)
    src = miewid_source("toy", tmp_path / "src" / "t.csv", species=("plains_zebra",))
    return src, 4, [("t/u2", "t.csv line 6 repeats t.csv line 4 (same file, identity and box): kept once")]


def _dup_key_macaque(tmp_path: Path):
    base = tmp_path / "MacaqueFaces"
    folder = base / "MacaqueFaces" / "Good" / "Ape"
    folder.mkdir(parents=True)
    rows = []
    for i in range(3):
        (folder / f"f{i}.jpg").write_bytes(_jpeg(i))
        rows.append({"ID": "Ape", "Path": "/Good/Ape/", "FileName": f"f{i}.jpg", "DateTaken": "2020-01-01",
                     "Category": "Good", "Group": "A"})  # fmt: skip
    rows.append({**rows[1], "ID": "Bob"})  # f1.jpg again, under another monkey
    _write_csv(base / "MacaqueFaces_ImageInfo.csv", rows, bom=True)
    line3, line5 = "MacaqueFaces_ImageInfo.csv line 3", "MacaqueFaces_ImageInfo.csv line 5"
    ape, bob = "'macaquefaces:macaque:Ape'", "'macaquefaces:macaque:Bob'"
    return get_source("macaquefaces"), 2, [
        ("MacaqueFaces/Good/Ape/f1.jpg", f"{line3} and {line5} have the same id but differ (identity {ape} vs {bob}): all skipped"),
        ("MacaqueFaces/Good/Ape/f1.jpg", f"{line5} and {line3} have the same id but differ (identity {bob} vs {ape}): all skipped"),
    ]  # fmt: skip


@pytest.mark.parametrize("make", [_dup_key_csv, _dup_key_coco, _dup_key_repeat, _dup_key_macaque])
def test_two_rows_with_one_key_are_reported_naming_both(tmp_path, make):
    src, written, expected = make(tmp_path)
    result = _build(src, tmp_path)
    assert [(p.image_id.split(":", 2)[2], p.detail) for p in result.problems] == expected
    assert {p.reason for p in result.problems} == {DUPLICATE_ID}
    assert result.rows_written == written


# ------------------------------------------------------------------------------------ 3. one orientation
@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_boxes_are_judged_on_the_displayed_photo(tmp_path, orientation):
    """A photo stored 80x40 with an EXIF orientation that turns it: displayed 40x80. A box that fits the
    displayed photo is kept, one that fits only the stored pixels is skipped saying both sizes."""
    rows = _csv_source(tmp_path / "src")
    (tmp_path / "src" / "img" / "turned.jpg").write_bytes(_jpeg(9, 80, 40, orientation=orientation))
    rows += [
        {"file_path": "img/turned.jpg", "name": "z0", "annot_uuid": "displayed", "bbox": "[2, 30, 30, 45]"},
        {"file_path": "img/turned.jpg", "name": "z1", "annot_uuid": "stored", "bbox": "[30, 2, 45, 30]"},
    ]
    _write_csv(tmp_path / "src" / "t.csv", rows)
    result = _build(miewid_source("toy", tmp_path / "src" / "t.csv", species=("plains_zebra",)), tmp_path)
    assert [(p.image_id, p.reason, p.detail) for p in result.problems] == [
        ("toy:plains_zebra:t/stored", BOX_PAST_BORDER,
         "bbox [30, 2, 45, 30] extends past the right border of the 40x80 image (x + w = 75 > 40); the photo is "
         f"displayed 40x80 (EXIF orientation {orientation}; stored 80x40): boxes are in displayed coordinates"),
    ]  # fmt: skip
    assert result.rows_written == 5


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
def test_orientations_that_keep_the_size_judge_boxes_on_it(orientation):
    data = _jpeg(4, 80, 40, orientation=orientation)
    records = [
        Record("s", "dog", "rex", "s:dog:fits", data=data, bbox=(30.0, 2.0, 45.0, 30.0)),
        Record("s", "dog", "rex", "s:dog:tall", data=data, bbox=(2.0, 2.0, 30.0, 45.0)),
    ]
    result = validate(records, min_per_identity=1, workers=1, progress=False)
    note = (
        ""
        if orientation == 1
        else f"; the photo is displayed 80x40 (EXIF orientation {orientation}; stored 80x40): boxes are in "
        "displayed coordinates"
    )
    assert [(p.image_id, p.detail) for p in result.problems] == [
        ("s:dog:tall", "bbox [2, 2, 30, 45] extends past the bottom border of the 80x40 image (y + h = 47 > 40)" + note)
    ]  # fmt: skip
    assert [r.record.image_id for r in result.rows] == ["s:dog:fits"]


def test_kept_rows_carry_the_displayed_size_and_the_original_bytes(tmp_path):
    data = _jpeg(3, 80, 40, orientation=6)
    result = validate([Record("s", "dog", "rex", "s:dog:0", data=data, bbox=(2.0, 30.0, 30.0, 45.0))],
                      min_per_identity=1, workers=1, progress=False)  # fmt: skip
    (row,) = result.rows
    assert (row.width, row.height) == (40, 80) and row.data == data  # EXIF kept: the processor turns it too


# ------------------------------------------------------------------------------------ 4. one-line errors
@pytest.mark.parametrize("flag", ["--coco", "--miewid"])
@pytest.mark.parametrize("where", ["current-folder", "data-root-only", "nowhere"])
def test_relative_input_paths_are_read_from_the_current_folder(tmp_path, capsys, monkeypatch, flag, where):
    work, root = tmp_path / "work", tmp_path / "root"
    home = {"current-folder": work, "data-root-only": root, "nowhere": tmp_path / "elsewhere"}[where]
    if flag == "--coco":
        images, anns = _coco(home / "mine.coco")
        _write_coco(home / "mine.coco", images, anns)
        typed = "mine.coco"
    else:
        _write_csv(home / "mine" / "t.csv", _csv_source(home / "mine"))
        typed = "mine/t.csv"
    work.mkdir(exist_ok=True)
    root.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    argv = [flag, f"x={typed}", "--out", str(tmp_path / "out"), "--data-root", str(root), "--no-progress",
            "--workers", "1", "--min-per-identity", "1"]  # fmt: skip
    if where == "current-folder":
        assert main(argv).rows_written == 4
        return
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    hint = (
        f"; {root / typed} exists: pass {flag} x={root / typed} to read it"
        if where == "data-root-only"
        else ""
    )
    assert _error_line(capsys) == (
        f"error: {flag} x={typed}: {typed} not found (looked for {work / typed}, relative to the current folder)"
        + hint
    )
    assert not (tmp_path / "out").exists()


def test_absolute_input_path_that_is_missing_names_it(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--coco", f"x={tmp_path / 'gone'}", "--out", str(tmp_path / "out")])
    assert (
        _error_line(capsys)
        == f"error: --coco x={tmp_path / 'gone'}: {tmp_path / 'gone'} not found (looked for {tmp_path / 'gone'})"
    )


def _link_file(base: Path, outside: Path) -> str:
    (base / "images" / "train" / "link.jpg").symlink_to(outside / "secret.jpg")
    return "link.jpg"


def _link_relative(base: Path, outside: Path) -> str:
    (base / "images" / "train" / "rel.jpg").symlink_to(Path("../../..") / outside.name / "secret.jpg")
    return "rel.jpg"


def _link_folder(base: Path, outside: Path) -> str:
    (base / "images" / "train" / "more").symlink_to(outside, target_is_directory=True)
    return "more/secret.jpg"


def _link_dangling(base: Path, outside: Path) -> str:
    (base / "images" / "train" / "gone.jpg").symlink_to(outside / "deleted.jpg")
    return "gone.jpg"


@pytest.mark.parametrize("make", [_link_file, _link_relative, _link_folder, _link_dangling])
def test_coco_symlink_pointing_outside_is_refused_not_missing(tmp_path, make):
    base, outside = tmp_path / "ws.coco", tmp_path / "outside"
    outside.mkdir()
    secret = _jpeg(99)
    (outside / "secret.jpg").write_bytes(secret)
    images, anns = _coco(base)
    name = make(base, outside)
    images.append({"id": 50, "file_name": name})
    anns.append({"id": 7, "image_id": 50, "name": "s0", "bbox": [0, 0, 20, 20]})
    _write_coco(base, images, anns)
    result = _build(coco_source("wsx", base, species=("whale_shark",)), tmp_path)
    assert [(p.image_id, p.reason, p.detail) for p in result.problems] == [
        ("wsx:whale_shark:instances_train/7", OUTSIDE_SOURCE,
         f"instances_train.json annotation 7: file_name {name!r} is a symbolic link that points outside the "
         "source folder"),
    ]  # fmt: skip
    assert result.rows_written == 4


@pytest.mark.parametrize("kind", ["file", "folder", "dangling"])
def test_csv_symlink_pointing_outside_is_refused(tmp_path, kind):
    folder, outside = tmp_path / "src", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(_jpeg(99))
    rows = _csv_source(folder)
    link = folder / "img" / "link"
    if kind == "file":
        link.symlink_to(outside / "secret.jpg")
        typed = "img/link"
    elif kind == "folder":
        link.symlink_to(outside, target_is_directory=True)
        typed = "img/link/secret.jpg"
    else:
        link.symlink_to(outside / "gone.jpg")
        typed = "img/link"
    rows.append({"file_path": typed, "name": "z0", "annot_uuid": "link"})
    _write_csv(folder / "t.csv", rows)
    result = _build(miewid_source("toy", folder / "t.csv", species=("plains_zebra",)), tmp_path)
    assert [(p.reason, p.detail) for p in result.problems] == [
        (
            OUTSIDE_SOURCE,
            f"t.csv line 6: path {typed!r} is a symbolic link that points outside the source folder",
        )
    ]


@pytest.mark.parametrize(
    "first, newline",
    [("file_path", "\r\n"), ("name", "\r\n"), ("annot_uuid", "\n")],
)
def test_csv_saved_by_excel_with_a_bom_is_read(tmp_path, first, newline):
    rows = _csv_source(tmp_path / "src")
    rows = [{first: r[first], **r} for r in rows]  # the BOM sits on the first column's name
    _write_csv(tmp_path / "src" / "t.csv", rows, bom=True, newline=newline)
    assert (tmp_path / "src" / "t.csv").read_bytes().startswith(b"\xef\xbb\xbf" + first.encode())
    result = _build(miewid_source("toy", tmp_path / "src" / "t.csv", species=("plains_zebra",)), tmp_path)
    assert result.rows_written == 4 and result.problems == []


@pytest.mark.parametrize("n", [1, 3, 5])
def test_benchmark_split_file_with_a_bom_is_read(tmp_path, n):
    rows = [{"image_id": i, "identity": "a", "path": f"x/{i}.jpg", "split": "train"} for i in range(n)]
    _write_csv(tmp_path / "b.csv", rows, bom=True, newline="\r\n")
    assert read_benchmark(tmp_path / "b.csv") == {f"x/{i}.jpg": "train" for i in range(n)}


_SIZE = "the 64x48 image"


@pytest.mark.parametrize(
    "bbox, reason, detail",
    [
        ((60, 1, 20, 20), BOX_PAST_BORDER, f"bbox [60, 1, 20, 20] extends past the right border of {_SIZE} (x + w = 80 > 64)"),
        ((-5, 10, 30, 45), BOX_PAST_BORDER,
         f"bbox [-5, 10, 30, 45] extends past the left and bottom borders of {_SIZE} (x = -5 < 0, y + h = 55 > 48)"),
        ((10, -3.5, 20, 20), BOX_PAST_BORDER, f"bbox [10, -3.5, 20, 20] extends past the top border of {_SIZE} (y = -3.5 < 0)"),
        ((-4, -4, 72, 56), BOX_COVERS_IMAGE, "bbox [-4, -4, 72, 56] covers the whole 64x48 image and extends past all four of its borders"),
        ((-10, -10, 100, 100), BOX_COVERS_IMAGE, "bbox [-10, -10, 100, 100] covers the whole 64x48 image and extends past all four of its borders"),
        ((70, 10, 20, 20), BOX_OUTSIDE, f"bbox [70, 10, 20, 20] lies outside {_SIZE}: no pixel of it is in the image"),
        ((-30, -30, 20, 20), BOX_OUTSIDE, f"bbox [-30, -30, 20, 20] lies outside {_SIZE}: no pixel of it is in the image"),
        ((5, 5, 0, 10), BOX_ZERO_AREA, "bbox [5, 5, 0, 10] has zero width"),
        ((5, 5, 10, -3), BOX_ZERO_AREA, "bbox [5, 5, 10, -3] has negative height (-3)"),
        ((5, 5, -2.5, 0), BOX_ZERO_AREA, "bbox [5, 5, -2.5, 0] has negative width (-2.5) and zero height"),
        ((0, 0, 64, 48), None, None),  # the whole image: fine
        ((-0.5, 0, 64.5, 48.9), None, None),  # within the 1 px tolerance
        ((10, 10, 20, 20), None, None),
    ],
)  # fmt: skip
def test_box_messages_say_exactly_what_is_wrong(bbox, reason, detail):
    rec = Record("s", "dog", "rex", "s:dog:0", data=_jpeg(0), bbox=tuple(float(v) for v in bbox))
    result = validate([rec], min_per_identity=1, workers=1, progress=False)
    assert [(p.reason, p.detail) for p in result.problems] == ([(reason, detail)] if reason else [])
    if reason is not None and reason != BOX_OUTSIDE:
        assert "lies outside" not in detail


# ------------------------------------------------- property: the builder and the processor agree on orientation
_hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.fixture(scope="module")
def processor():
    from modeling.image_processing_animal_reid import AnimalReIDImageProcessor

    return AnimalReIDImageProcessor()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    orientation=st.integers(1, 8),
    size=st.tuples(st.integers(16, 72), st.integers(16, 72)),
    box=st.tuples(st.integers(-12, 80), st.integers(-12, 80), st.integers(-4, 80), st.integers(-4, 80)),
)
def test_builder_and_processor_agree_on_random_orientations_and_boxes(processor, orientation, size, box):
    """A box the builder keeps is cropped by the processor to the same pixels (both in displayed coordinates);
    a box fully inside the displayed photo is kept; a refused box on a turned photo says the orientation."""
    w, h = size
    dw, dh = (h, w) if orientation >= 5 else (w, h)
    data = _jpeg(orientation, w, h, orientation=orientation)
    bbox = tuple(float(v) for v in box)
    result = validate([Record("s", "dog", "rex", "s:dog:0", data=data, bbox=bbox)],
                      min_per_identity=1, workers=1, progress=False)  # fmt: skip
    x, y, bw, bh = box
    inside = x >= 0 and y >= 0 and x + bw <= dw and y + bh <= dh and min(bw, bh) >= 8
    if inside:
        assert len(result.rows) == 1, result.problems
    if result.rows:
        assert (result.rows[0].width, result.rows[0].height) == (dw, dh)
        crop = processor.crop(processor.load_image(data), list(bbox))
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + bw, dw), min(y + bh, dh)
        assert crop.size == (x1 - x0, y1 - y0)
    else:
        (problem,) = result.problems
        note = f"; the photo is displayed {dw}x{dh} (EXIF orientation {orientation}; stored {w}x{h})"
        assert (note in problem.detail) == (orientation != 1 and problem.reason != BOX_ZERO_AREA)
        assert "\n" not in problem.detail


@pytest.fixture(scope="module")
def built_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "corpus"
    main(_synthetic_args(out, identities=3))
    return out


_SEGMENTS = st.sampled_from(["notes", "data", "analysis", "synth_stripes", "old", ".hidden", "README"])
_NAMES = st.sampled_from(["x.txt", "plot.png", "train-00000-of-00001.parquet.bak", "README.md", "keep.json"])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    user=st.dictionaries(
        st.tuples(st.lists(_SEGMENTS, max_size=3), _NAMES).map(lambda t: "/".join([*t[0], t[1]])),
        st.binary(max_size=64),
        max_size=5,
    )
)
def test_overwrite_changes_only_files_of_the_manifest(tmp_path_factory, built_corpus, user):
    import shutil

    out = tmp_path_factory.mktemp("prop") / "corpus"
    shutil.copytree(built_corpus, out)
    ours = set(json.loads((out / MANIFEST_NAME).read_text())["files"])
    user = {
        rel: data
        for rel, data in user.items()
        if rel not in ours and not any(o.startswith(rel + "/") or rel.startswith(o + "/") for o in ours)
    }
    user = {r: d for r, d in user.items() if not any(o.startswith(r + "/") for o in user if o != r)}
    for rel, data in user.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    main(_synthetic_args(out, "--overwrite", identities=4))
    assert {rel: (out / rel).read_bytes() for rel in user} == user
    new = set(json.loads((out / MANIFEST_NAME).read_text())["files"])
    assert set(_files(out)) == new | set(user) | {MANIFEST_NAME}
