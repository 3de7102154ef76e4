"""The corpus builder on hostile input: paths outside a source, an --out it must not replace, malformed rows
and files, one-line errors; property-based tests of the COCO and MiewID CSV readers."""

import csv
import hashlib
import io
import json
import math
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("datasets")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from animal_reid.manifest import LOCK_NAME, OutputError  # noqa: E402
from data_scripts.build import BuildError, build, main  # noqa: E402
from data_scripts.schema import Record  # noqa: E402
from data_scripts.sources import SourceError, coco_source, is_inside, miewid_source  # noqa: E402
from data_scripts.validate import (  # noqa: E402
    BOX_NOT_FINITE,
    BOX_PAST_BORDER,
    BOX_TOO_SMALL,
    BOX_ZERO_AREA,
    MALFORMED_ROW,
    MISSING_FIELD,
    OUTSIDE_SOURCE,
    TWO_IDENTITIES,
    validate,
)
from data_scripts.write import OutRow, to_table  # noqa: E402

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _jpeg(seed: int, w: int = 64, h: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write_coco(base, images, annotations, categories=None, name="instances_train.json"):
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    coco = {"images": images, "annotations": annotations, "categories": categories or []}
    (base / "annotations" / name).write_text(json.dumps(coco))


def _write_csv(path, rows, fields=None):
    fields = fields or list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _good_coco(base, n_ids=2, per_id=2):
    """A COCO source of ``n_ids`` sharks x ``per_id`` photos (64x48), each with one upright box."""
    (base / "images" / "train").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_ids * per_id):
        (base / "images" / "train" / f"{i}.jpg").write_bytes(_jpeg(i))
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48})
        anns.append({"id": 100 + i, "image_id": i, "bbox": [2, 3, 40, 30], "name": f"s{i % n_ids}"})
    return images, anns


def _files(folder):
    """Every file under ``folder`` with its sha256: what "left untouched" compares (not the lock file, which
    each run that takes the lock rewrites with its holder)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def _image_bytes(out):
    import pyarrow.parquet as pq

    return [
        row["image"]["bytes"]
        for f in sorted((out / "data").glob("*/*.parquet"))
        for row in pq.read_table(f, columns=["image"]).to_pylist()
    ]


def _synthetic_args(out, *extra, identities=3):
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


# ---------------------------------------------------------------- paths outside a source


def test_coco_file_name_outside_the_source_is_never_read(tmp_path):
    base = tmp_path / "data" / "ws.coco"
    images, anns = _good_coco(base)
    secret = _jpeg(99)
    (tmp_path / "data" / "secret.jpg").write_bytes(secret)  # next to the source, not in it
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret.jpg").write_bytes(secret)
    images += [
        {"id": 50, "file_name": "../../../secret.jpg"},  # images/train/../../../ = the data root
        {"id": 51, "file_name": str(tmp_path / "elsewhere" / "secret.jpg")},  # absolute
        {"id": 52, "file_name": "../train/0.jpg"},  # a ../ that stays inside the source: fine
    ]
    anns += [
        {"id": 7, "image_id": 50, "name": "s0", "bbox": [0, 0, 20, 20]},
        {"id": 8, "image_id": 51, "name": "s1", "bbox": [0, 0, 20, 20]},
        {"id": 9, "image_id": 52, "name": "s1", "bbox": [0, 0, 20, 20]},
    ]
    _write_coco(base, images, anns)
    src = coco_source("wsx", base, species=("whale_shark",))
    out = tmp_path / "out"
    result = build([src], out, data_root=tmp_path / "data", workers=1, progress=False)
    outside = {p["image_id"]: p["detail"] for p in result.report["skipped"] if p["reason"] == OUTSIDE_SOURCE}
    assert set(outside) == {"wsx:whale_shark:instances_train/7", "wsx:whale_shark:instances_train/8"}
    assert "annotation 7" in outside["wsx:whale_shark:instances_train/7"]
    assert result.rows_written == 5
    assert secret not in _image_bytes(out)


def test_csv_path_outside_the_source_is_never_read(tmp_path):
    folder = tmp_path / "src"
    (folder / "img").mkdir(parents=True)
    secret = _jpeg(99)
    (tmp_path / "secret.jpg").write_bytes(secret)
    (folder / "img" / "link.jpg").symlink_to(tmp_path / "secret.jpg")  # inside by name, outside by target
    rows = []
    for i in range(4):
        (folder / "img" / f"{i}.jpg").write_bytes(_jpeg(i))
        rows.append({"file_path": f"img/{i}.jpg", "name": f"z{i % 2}", "annot_uuid": f"ok{i}"})
    rows[3]["file_path"] = str(folder / "img" / "3.jpg")  # absolute, but inside the source: kept
    rows += [
        {"file_path": "../secret.jpg", "name": "z0", "annot_uuid": "dotdot"},
        {"file_path": str(tmp_path / "secret.jpg"), "name": "z0", "annot_uuid": "absolute"},
        {"file_path": "img/link.jpg", "name": "z0", "annot_uuid": "symlink"},
    ]
    _write_csv(folder / "train.csv", rows)
    src = miewid_source("toy", folder / "train.csv", species=("plains_zebra",))
    out = tmp_path / "out"
    result = build([src], out, data_root=tmp_path, workers=1, progress=False)
    outside = {
        p["image_id"].rsplit("/", 1)[-1] for p in result.report["skipped"] if p["reason"] == OUTSIDE_SOURCE
    }
    assert outside == {"dotdot", "absolute", "symlink"}
    assert result.rows_written == 4 and secret not in _image_bytes(out)


def test_records_of_any_source_outside_its_folder_are_refused(tmp_path):
    """The check is in Source.records, for every declaration, not only the two importers."""
    from data_scripts.sources.base import Source, SourceInfo

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.jpg").write_bytes(_jpeg(1))
    (tmp_path / "b.jpg").write_bytes(_jpeg(2))

    class Mine(Source):
        info = SourceInfo("mine", ("dog",), "CC0", "", "", "1", "mine")

        def scan(self, root):
            for name in ("mine/a.jpg", "mine/../b.jpg"):
                yield Record("mine", "dog", "rex", name, path=root / name)

    recs = list(Mine().records(tmp_path))
    assert recs[0].path is not None and recs[1].path is None
    assert recs[1].extra["invalid"][0] == OUTSIDE_SOURCE


# ---------------------------------------------------------------- no data destroyed


def test_existing_out_is_refused_without_overwrite_and_nothing_deleted(tmp_path, capsys):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(_synthetic_args(out))
    assert exit_info.value.code == 2
    line = _error_line(capsys)
    assert str(out) in line and "was not written by animal-reid" in line
    assert _files(out) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}
    # --overwrite replaces only a corpus built here (a manifest): a folder of other files is refused even then
    with pytest.raises(SystemExit) as exit_info:
        main(_synthetic_args(out, "--overwrite"))
    assert exit_info.value.code == 2 and "was not written by animal-reid" in _error_line(capsys)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(OutputError):
        build([], out, data_root=tmp_path)


def test_rebuild_needs_overwrite_and_swaps_the_new_corpus_in(tmp_path, capsys):
    out = tmp_path / "corpus"
    main(_synthetic_args(out, identities=3))
    before = _files(out)
    with pytest.raises(SystemExit) as exit_info:
        main(_synthetic_args(out, identities=4))
    assert exit_info.value.code == 2 and "--overwrite" in _error_line(capsys)
    assert _files(out) == before
    result = main(_synthetic_args(out, "--overwrite", identities=4))
    assert result.counts["all"]["identities"] == 4 and _files(out) != before
    assert json.loads((out / "build_report.json").read_text())["cli"]["overwrite"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # no staging or old folder left
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(_synthetic_args(empty)).rows_written == 9  # an empty folder is fine without --overwrite


def test_failed_rebuild_keeps_the_old_corpus(tmp_path, capsys, monkeypatch):
    out = tmp_path / "corpus"
    main(_synthetic_args(out))
    before = _files(out)
    # a malformed whole file: one line naming it, exit 1
    bad = tmp_path / "bad.coco"
    (bad / "annotations").mkdir(parents=True)
    (bad / "annotations" / "x.json").write_text('{"images": [}')
    with pytest.raises(SystemExit) as exit_info:
        main(["--coco", f"bad={bad}", "--out", str(out), "--overwrite", "--data-root", str(tmp_path)])
    assert exit_info.value.code == 1
    line = _error_line(capsys)
    assert "x.json" in line and "not valid JSON" in line
    assert _files(out) == before
    # a failure while writing the new corpus: the half-written folder is removed, the old one stays
    import data_scripts.build as build_module

    def write_then_fail(rows, folder, *args, **kwargs):
        (folder / "data").mkdir()
        (folder / "data" / "half.parquet").write_bytes(b"PAR1")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build_module, "write_corpus", write_then_fail)
    with pytest.raises(SystemExit) as exit_info:
        main(_synthetic_args(out, "--overwrite", identities=4))
    assert exit_info.value.code == 1
    assert f"cannot write the corpus: {out}: no space left on the device (disk full)" in _error_line(capsys)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.coco", "corpus"]


def test_zero_valid_rows_exits_non_zero_and_keeps_the_old_corpus(tmp_path, capsys):
    folder = tmp_path / "src"
    folder.mkdir()
    _write_csv(
        folder / "t.csv",
        [
            {"file_path": f"gone{i}.jpg", "name": "z", "species": "plains_zebra", "annot_uuid": i}
            for i in range(3)
        ],
    )
    args = [
        "--miewid",
        f"toy={folder / 't.csv'}",
        "--data-root",
        str(tmp_path),
        "--no-progress",
        "--workers",
        "1",
    ]
    fresh = tmp_path / "fresh"
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(fresh)])
    assert exit_info.value.code == 1
    line = _error_line(capsys)
    assert "no valid rows" in line and "missing file: 3" in line and "toy:" in line
    assert not fresh.exists()
    out = tmp_path / "corpus"
    main(_synthetic_args(out))
    before = _files(out)
    with pytest.raises(SystemExit):
        main([*args, "--out", str(out), "--overwrite"])
    assert "no valid rows" in _error_line(capsys) and _files(out) == before
    src = miewid_source("toy", folder / "t.csv", species=("plains_zebra",))
    with pytest.raises(BuildError, match="no valid rows"):
        build([src], out, data_root=tmp_path, overwrite=True, workers=1, progress=False)
    assert _files(out) == before


# ---------------------------------------------------------------- malformed rows and files

# annotation id -> (annotation fields over a good one, reason, words of the detail)
BAD_ANNOTATIONS = {
    20: ({"bbox": [1, 2, 3]}, MALFORMED_ROW, "4 numbers"),
    21: ({"bbox": ["a", "b", "c", "d"]}, MALFORMED_ROW, "expected a number"),
    22: ({"bbox": [None, 1, 20, 20]}, MALFORMED_ROW, "expected a number"),
    23: ({"bbox": "left"}, MALFORMED_ROW, "bbox"),
    24: ({"theta": "abc"}, MALFORMED_ROW, "theta"),
    25: ({"theta": [1]}, MALFORMED_ROW, "theta"),
    26: ({"image_id": 60}, MALFORMED_ROW, "file_name missing"),  # image 60 has no file_name
    27: ({"name": None}, MISSING_FIELD, "identity"),
    28: ({"name": {"first": "s0"}}, MALFORMED_ROW, "name"),
    29: ({"bbox": [float("nan"), 1, 20, 20]}, BOX_NOT_FINITE, "nan"),
    30: ({"bbox": [1, 1, float("inf"), 20]}, BOX_NOT_FINITE, "inf"),
    31: ({"bbox": [1, 1, 4, 20]}, BOX_TOO_SMALL, "at least 8"),
    32: ({"bbox": [60, 1, 20, 20]}, BOX_PAST_BORDER, "extends past the right border of the 64x48 image"),
    33: ({"bbox": [1, 1, 0, 20]}, BOX_ZERO_AREA, "bbox [1, 1, 0, 20] has zero width"),
    34: ({"image_id": 12345}, MALFORMED_ROW, "not among the file's images"),
    35: ({"viewpoint": ["left"]}, MALFORMED_ROW, "viewpoint"),
    36: ({"theta": float("inf")}, BOX_NOT_FINITE, "theta"),
}


def test_malformed_coco_annotations_are_reported_with_id_and_reason(tmp_path):
    base = tmp_path / "ws.coco"
    images, anns = _good_coco(base)
    images += [{"id": 60, "width": 64, "height": 48}, ["not", "an", "image"], {"file_name": "0.jpg"}]
    for ann_id, (fields, _, _) in BAD_ANNOTATIONS.items():
        anns.append({"id": ann_id, "image_id": 0, "bbox": [2, 3, 40, 30], "name": "s0", **fields})
    anns += ["not an annotation", {"image_id": 1, "name": "s1", "bbox": [2, 3, 40, 30]}]  # the last: no id
    _write_coco(base, images, anns)
    src = coco_source("wsx", base, species=("whale_shark",))
    result = build([src], tmp_path / "out", data_root=tmp_path, workers=1, progress=False)
    skipped = {p["image_id"].rsplit("/", 1)[-1]: p for p in result.report["skipped"]}
    for ann_id, (_, reason, words) in BAD_ANNOTATIONS.items():
        problem = skipped[str(ann_id)]
        assert (problem["reason"], problem["source"]) == (reason, "wsx"), ann_id
        assert words in problem["detail"], (ann_id, problem)
        if reason == MALFORMED_ROW:
            assert f"instances_train.json annotation {ann_id}:" in problem["detail"]
    n = len(anns)
    assert skipped["#" + str(n - 2)]["reason"] == MALFORMED_ROW  # not an object: named by its position
    assert result.rows_written == 5  # the 4 good ones and the one without an id (named by position)
    assert result.report["rows_read"] == n


def test_malformed_csv_rows_are_reported_with_line_and_reason(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    rows = []
    for i in range(4):
        (folder / f"{i}.jpg").write_bytes(_jpeg(i))
        rows.append(
            {"file_path": f"{i}.jpg", "name": f"z{i % 2}", "bbox": "[2, 3, 40, 30]", "annot_uuid": f"ok{i}"}
        )
    bad = {
        "three": ({"bbox": "[1, 2, 3]"}, MALFORMED_ROW, "4 numbers"),
        "words": ({"bbox": "left side"}, MALFORMED_ROW, "bbox"),
        "theta": ({"theta": "abc"}, MALFORMED_ROW, "theta"),
        "partial": ({"bbox": "", "x": "1", "y": "2"}, MALFORMED_ROW, "x/y/w/h"),
        "nopath": ({"file_path": ""}, MALFORMED_ROW, "no image path"),
        "noname": ({"name": ""}, MISSING_FIELD, "identity"),
        "nan": ({"bbox": "[nan, 0, 20, 20]"}, BOX_NOT_FINITE, "nan"),
        "small": ({"bbox": "[0, 0, 5, 40]"}, BOX_TOO_SMALL, "at least 8"),
    }
    for uid, (fields, _, _) in bad.items():
        rows.append({**rows[0], "annot_uuid": uid, **fields})
    _write_csv(
        folder / "t.csv", rows, ["file_path", "name", "bbox", "theta", "x", "y", "w", "h", "annot_uuid"]
    )
    src = miewid_source("toy", folder / "t.csv", species=("plains_zebra",))
    result = build([src], tmp_path / "out", data_root=tmp_path, workers=1, progress=False)
    skipped = {p["image_id"].rsplit("/", 1)[-1]: p for p in result.report["skipped"]}
    for line, (uid, (_, reason, words)) in enumerate(bad.items(), start=6):  # header + 4 good rows first
        assert skipped[uid]["reason"] == reason and words in skipped[uid]["detail"], skipped[uid]
        if reason == MALFORMED_ROW:
            assert skipped[uid]["detail"].startswith(f"t.csv line {line}:")
    assert result.rows_written == 4


@pytest.mark.parametrize(
    "content, words",
    [
        ('{"images": [], "annotations": [', "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        ("[1, 2, 3]", "expected a COCO JSON object, got a list"),
        ('{"images": []}', "expected a COCO JSON with 'annotations'"),
        ('{"images": {}, "annotations": []}', "'images' must be a list"),
        ('{"images": [], "annotations": [], "categories": 5}', "'categories' must be a list"),
    ],
)
def test_malformed_coco_file_is_one_error_naming_it(tmp_path, content, words):
    base = tmp_path / "bad.coco"
    (base / "annotations").mkdir(parents=True)
    path = base / "annotations" / "instances_x.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SourceError, match="instances_x.json") as info:
        list(coco_source("bad", base).records(tmp_path))
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "is empty: expected a header row"),
        (b"name,species\nz,zebra\n", "expected a column 'file_path'"),
        (b"file_path,bbox\na.jpg,[1, 2, 3, 4]\n", "expected a column 'name'"),
        (b"file_path,name\na.jpg,z\n\xff\xfe,z\n", "is not UTF-8 text"),
        (b"file_path,name\n" + b'"' + b"x" * 200_000 + b'",z\n', "not readable CSV"),
    ],
)
def test_malformed_csv_file_is_one_error_naming_it(tmp_path, content, words):
    (tmp_path / "t.csv").write_bytes(content)
    with pytest.raises(SourceError, match="t.csv") as info:
        list(miewid_source("bad", tmp_path / "t.csv").records(tmp_path))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_validation_refuses_non_finite_and_too_small_boxes():
    """Records from any source, not only the importers: what would crash the image processor later."""
    data = _jpeg(0, 64, 48)

    def rec(i, bbox, theta=0.0):
        return Record("s", "dog", "rex", f"s:dog:{i}", data=data, bbox=bbox, theta=theta)

    records = [
        rec(0, (2.0, 3.0, 40.0, 30.0)),
        rec(1, (math.nan, 3.0, 40.0, 30.0)),
        rec(2, (2.0, 3.0, 40.0, math.inf)),
        rec(3, (2.0, 3.0, 7.5, 30.0)),
        rec(4, (-1.0, 3.0, 8.5, 30.0)),  # inside the tolerance, but only 7.5 px of it in the image
        rec(5, (2.0, 3.0, 40.0, 30.0), theta=math.inf),
        rec(6, ("2", 3.0, 40.0, 30.0)),
        rec(7, None, theta=0.5),  # a rotation without a box: kept, theta dropped (the processor refuses it)
    ]
    result = validate(records, min_per_identity=1, workers=1, progress=False)
    reasons = {p.image_id: p.reason for p in result.problems}
    assert reasons == {
        "s:dog:1": BOX_NOT_FINITE,
        "s:dog:2": BOX_NOT_FINITE,
        "s:dog:3": BOX_TOO_SMALL,
        "s:dog:4": BOX_TOO_SMALL,
        "s:dog:5": BOX_NOT_FINITE,
        "s:dog:6": MALFORMED_ROW,
    }
    kept = {r.record.image_id: r.record for r in result.rows}
    assert set(kept) == {"s:dog:0", "s:dog:7"} and kept["s:dog:7"].theta == 0.0
    assert result.warnings["theta without a box (set to 0)"] == 1


# ---------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(
    "argv, status, words",
    [
        (["--sources", "nope", "--out", "{out}"], 2, "unknown source 'nope'"),
        (["--sources", "synthetic"], 2, "the following arguments are required: --out"),
        (["--coco", "no-equals-sign", "--out", "{out}"], 2, "--coco expects NAME=PATH"),
        (["--out", "{out}", "--fractions", "0.5", "0.5", "0.5"], 2, "fractions"),
        (["--out", "{out}", "--leave-out", "unicorn"], 2, "unknown species ['unicorn']"),
        (["--out", "{out}", "--config", "{tmp}/missing.yaml"], 2, "missing.yaml"),
        (["--sources", "whaleshark", "--out", "{out}", "--data-root", "{tmp}"], 1, "whaleshark"),
    ],
)
def test_errors_are_one_line_with_exit_status(tmp_path, capsys, argv, status, words):
    argv = [a.format(out=tmp_path / "out", tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == status
    assert words in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_verbose_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--sources", "nope", "--out", str(tmp_path / "out"), "-v"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: unknown source 'nope'")


def test_console_script_exits_zero_after_a_build(tmp_path, monkeypatch):
    """`animal-reid-build-corpus` runs sys.exit(main()): main() must return None, not the result."""
    monkeypatch.setattr(sys, "argv", ["animal-reid-build-corpus", *_synthetic_args(tmp_path / "c")])
    assert main() is None
    assert (tmp_path / "c" / "README.md").is_file()


# ---------------------------------------------------------------- property-based: the two readers

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["\ud800", "../../../outside.jpg", "/etc/hostname", "a.jpg", "____", "nan", "1e999"])
)
_JSON = st.recursive(
    _SCALARS,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=10,
)
_NOT_OURS = _JSON.filter(lambda v: not (isinstance(v, str) and v.startswith("valid")))  # our valid rows' ids
_BOXES = (
    _JSON
    | st.lists(_SCALARS, max_size=6)
    | st.lists(st.floats(-50, 100) | st.integers(-50, 100), min_size=4, max_size=4)
)
_ANN_FIELDS = {
    "id": _NOT_OURS,
    "uuid": _NOT_OURS,
    "image_id": st.sampled_from(["valid-img-0", "valid-img-1", 0, 1, 99]) | _JSON,
    "bbox": _BOXES,
    "theta": _JSON,
    "name": _JSON,
    "individual_id": _JSON,
    "species": st.sampled_from(["whale_shark", "dragon"]) | _JSON,
    "viewpoint": _JSON,
    "encounter": _JSON,
    "category_id": _JSON,
}
_IMG_FIELDS = {"id": _NOT_OURS | st.integers(0, 3), "file_name": _JSON, "width": _JSON, "height": _JSON}


def _valid_annotation(i: int) -> dict:
    return {
        "uuid": f"valid-{i}",
        "image_id": f"valid-img-{i % 2}",
        "bbox": [1, 2, 20, 16],
        "theta": 0.1,
        "name": f"animal{i % 2}",
        "species": "whale_shark",
        "viewpoint": "left",
    }


@st.composite
def _coco_docs(draw):
    """A COCO JSON of random annotations and images around 3 valid annotations, in random order."""
    anns = draw(st.lists(_JSON | st.fixed_dictionaries({}, optional=_ANN_FIELDS), max_size=8))
    for i in range(3):
        anns.insert(draw(st.integers(0, len(anns))), _valid_annotation(i))
    images = draw(st.lists(_JSON | st.fixed_dictionaries({}, optional=_IMG_FIELDS), max_size=4))
    for i in range(2):
        images.insert(
            draw(st.integers(0, len(images))), {"id": f"valid-img-{i}", "file_name": f"{'ab'[i]}.jpg"}
        )
    categories = draw(
        st.lists(_JSON | st.fixed_dictionaries({}, optional={"id": _JSON, "name": _JSON}), max_size=3)
    )
    return {"images": images, "annotations": anns, "categories": categories}


@pytest.fixture(scope="module")
def property_root(tmp_path_factory):
    """A data root with two 32x32 photos in a COCO source and a CSV source, and one file outside both."""
    root = tmp_path_factory.mktemp("property")
    for folder in (root / "rand.coco" / "images", root / "rand_csv"):
        folder.mkdir(parents=True)
        (folder / "a.jpg").write_bytes(_jpeg(1, 32, 32))
        (folder / "b.jpg").write_bytes(_jpeg(2, 32, 32))
    (root / "rand.coco" / "annotations").mkdir()
    (root / "outside.jpg").write_bytes(_jpeg(3, 32, 32))
    return root


def _check_kept_and_writable(records, n_rows: int, valid_ids: set[str], folder):
    """Every row is one record; the valid ones pass validation unless a random row gives their photo (same
    box) another identity, and then the skip names that row; what passes is in the source and fits the
    Arrow schema."""
    assert len(records) == n_rows
    result = validate(records, min_per_identity=1, workers=1, progress=False)
    assert len(result.rows) + len(result.problems) == n_rows
    kept = {r.record.image_id for r in result.rows}
    ambiguous = {p.image_id: p.detail for p in result.problems if p.reason == TWO_IDENTITIES}
    for image_id in valid_ids - kept:
        assert " says " in ambiguous[image_id] and "all skipped" in ambiguous[image_id]
    assert all(p.reason and p.source for p in result.problems)
    assert all(is_inside(r.record.path, folder) for r in result.rows)
    rows = [
        OutRow(
            r.data, r.file_name, r.record.image_id, r.record.identity, r.record.species, r.record.viewpoint,
            r.record.encounter, r.record.bbox, r.record.theta, r.record.source, r.record.license, "train",
        )
        for r in result.rows
    ]  # fmt: skip
    to_table(rows)


@PROPERTY
@given(doc=_coco_docs())
def test_coco_reader_keeps_valid_rows_among_random_ones(property_root, doc):
    base = property_root / "rand.coco"
    (base / "annotations" / "instances_rand.json").write_text(json.dumps(doc))
    records = list(coco_source("rnd", base).records(property_root))
    valid = {f"rnd:whale_shark:instances_rand/valid-{i}" for i in range(3)}
    _check_kept_and_writable(records, len(doc["annotations"]), valid, base)


@PROPERTY
@given(
    doc=_JSON | st.fixed_dictionaries({"images": _JSON, "annotations": _JSON}, optional={"categories": _JSON})
)
def test_coco_reader_on_random_json_raises_only_source_error(property_root, doc):
    base = property_root / "rand.coco"
    (base / "annotations" / "instances_rand.json").write_text(json.dumps(doc))
    try:
        records = list(coco_source("rnd", base).records(property_root))
    except SourceError as err:
        assert "instances_rand.json" in str(err) and "\n" not in str(err)
        return
    _check_kept_and_writable(records, len(doc["annotations"]), set(), base)


_CELLS = st.text(max_size=15) | st.sampled_from(
    ["[1, 2, 3]", "[1,2,3,4]", "nan", "inf", "-1e999", "[nan, 0, 10, 10]", "abc", "None", "{}", "[[1,2,3,4]]",
     "(1 2 3 4)", "../outside.jpg", "/etc/hostname", "a.jpg", ".", "", " ", "0", "-3"]
)  # fmt: skip
_CSV_COLUMNS = ["file_path", "name", "species", "viewpoint", "bbox", "x", "y", "w", "h", "theta", "encounter"]
_CSV_IDS = _CELLS.filter(lambda v: not v.startswith("valid"))


@st.composite
def _csv_tables(draw):
    """A MiewID CSV table: random cells in random columns around 3 valid rows, in random order."""
    columns = [
        "file_path",
        "name",
        "annot_uuid",
        *draw(st.lists(st.sampled_from(_CSV_COLUMNS[2:]), unique=True)),
    ]
    columns += draw(
        st.lists(st.text(min_size=1, max_size=5).filter(lambda c: c not in columns), max_size=2, unique=True)
    )
    rows = draw(
        st.lists(
            st.fixed_dictionaries(
                {}, optional={c: _CSV_IDS if c == "annot_uuid" else _CELLS for c in columns}
            ),
            max_size=8,
        )
    )
    for i in range(3):
        valid = {"file_path": "ab"[i % 2] + ".jpg", "name": f"animal{i % 2}", "annot_uuid": f"valid-{i}"}
        valid |= (
            {"bbox": "[1, 2, 20, 16]", "theta": "0.1"} if "bbox" in columns and "theta" in columns else {}
        )
        rows.insert(draw(st.integers(0, len(rows))), valid)
    return columns, rows


@PROPERTY
@given(table=_csv_tables())
def test_csv_reader_keeps_valid_rows_among_random_ones(property_root, table):
    columns, rows = table
    path = property_root / "rand_csv" / "rand.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    records = list(miewid_source("rnd", path, species=("plains_zebra",)).records(property_root))
    valid = {f"rnd:plains_zebra:rand/valid-{i}" for i in range(3)}
    _check_kept_and_writable(records, len(rows), valid, path.parent)


@PROPERTY
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_csv_reader_on_random_bytes_raises_only_source_error(property_root, content):
    path = property_root / "rand_csv" / "bytes.csv"
    path.write_bytes(content)
    try:
        records = list(miewid_source("rnd", path).records(property_root))
    except SourceError as err:
        assert "bytes.csv" in str(err) and "\n" not in str(err)
        return
    result = validate(records, min_per_identity=1, workers=1, progress=False)
    assert len(result.rows) + len(result.problems) == len(records)
