"""The season's exports (animal_reid.season.exports, exports_tables, exports_capture): CSV, COCO, capture
histories / MARK .inp, coarsened sensitive species, and the folder they go to. Photos are generated here
(EXIF-oriented JPEGs)."""

from __future__ import annotations

import csv
import datetime as dt
import importlib
import importlib.machinery
import io
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from animal_reid.manifest import LOCK_NAME, MANIFEST_NAME, OutputError, OutputFolder
from animal_reid.season import exports
from animal_reid.season.annotations import Annotation, Assignment
from animal_reid.season.exports import (
    CSV_COLUMNS,
    ExportError,
    coarsen,
    export_all,
    export_coco,
    export_csv,
    write_exports,
)
from animal_reid.season.exports_capture import (
    capture_history,
    capture_history_csv,
    make_occasions,
    mark_inp,
    parse_occasion,
)
from animal_reid.testing.images import turned_jpeg

FINE = ("2.3456789", "34.8123456", "2.345", "34.812", "2.34", "34.81")


@pytest.fixture(autouse=True)
def _no_camtrap_writer(monkeypatch):
    """These tests do not depend on the Camtrap DP writer (the camtrap tests put a fake or the real one)."""
    monkeypatch.setattr(exports, "CAMTRAP_MODULE", "animal_reid.season.no_such_writer")


# ------------------------------------------------------------------------------------------------------------
# a generated season
def _photos(root: Path) -> Path:
    """p1.jpg: stored 96x56, EXIF orientation 6 (displayed 56x96); p2.jpg: 80x48 upright; sub/p3.jpg: 64x40,
    orientation 8 (displayed 40x64)."""
    (root / "sub").mkdir(parents=True)
    (root / "p1.jpg").write_bytes(turned_jpeg(6, (96, 56), seed=1))
    (root / "p2.jpg").write_bytes(turned_jpeg(1, (80, 48), seed=2))
    (root / "sub" / "p3.jpg").write_bytes(turned_jpeg(8, (64, 40), seed=3))
    return root


def _season() -> tuple[list[Annotation], list[Assignment]]:
    anns = [
        Annotation("a1", "p1.jpg", [4, 8, 20.5, 30], species="lion", viewpoint="left",
                   datetime="2026-05-01T06:12:30", latitude=-2.3456789, longitude=34.8123456, site="S1",
                   camera="C1", observer="ann", notes="scar, left ear"),
        Annotation("a2", "p1.jpg", None, species="lion", datetime="2026-05-01T06:12:30", latitude=-2.3456789,
                   longitude=34.8123456, site="S1", camera="C1"),
        Annotation("a3", "p2.jpg", [10, 5, 40, 30], theta=0.25, species="nyala", viewpoint="right",
                   datetime="2026-05-09T17:00:00+02:00", latitude=-24.1234567, longitude=31.7654321,
                   site="S2", camera="C2", encounter="e-given"),
        Annotation("a4", "sub/p3.jpg", [1, 2, 30, 50], species="nyala", site="S2", camera="C2"),
        Annotation("a5", "p2.jpg", [50, 10, 20, 20], species="nyala", datetime="2026-05-09T17:00:00+02:00",
                   latitude=-24.1234567, longitude=31.7654321, individual="N-input"),
    ]  # fmt: skip
    asg = [
        Assignment("a1", "known", "L1", 0.87654321, "L1", "enc-1"),
        Assignment("a2", "new", "new:lion:1", 0.31, "L1", "enc-1"),
        Assignment("a3", "unsure", None, 0.55, "N2", None),
        Assignment("a4", "known", "N7", 0.9, "N7", "enc-3"),
    ]
    return anns, asg


@pytest.fixture
def photo_root(tmp_path) -> Path:
    return _photos(tmp_path / "photos")


# ------------------------------------------------------------------------------------------------------------
# CSV
def test_csv_rows_exact():
    anns, asg = _season()
    text = export_csv(anns, asg).decode("utf-8")
    assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
    assert text.splitlines()[1:] == [
        "a1,p1.jpg,4,8,20.5,30,0,lion,left,known,L1,0.876543,L1,enc-1,2026-05-01T06:12:30,-2.3456789,"
        '34.8123456,S1,C1,ann,"scar, left ear"',
        "a2,p1.jpg,,,,,0,lion,,new,new:lion:1,0.31,L1,enc-1,2026-05-01T06:12:30,-2.3456789,34.8123456,S1,"
        "C1,,",
        "a3,p2.jpg,10,5,40,30,0.25,nyala,right,unsure,,0.55,N2,e-given,2026-05-09T17:00:00+02:00,-24.1234567,"
        "31.7654321,S2,C2,,",
        "a4,sub/p3.jpg,1,2,30,50,0,nyala,,known,N7,0.9,N7,enc-3,,,,S2,C2,,",
        "a5,p2.jpg,50,10,20,20,0,nyala,,,N-input,,,,2026-05-09T17:00:00+02:00,-24.1234567,31.7654321,,,,",
    ]
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["notes"] == "scar, left ear" and rows[1]["box_x"] == ""


# ------------------------------------------------------------------------------------------------------------
# COCO
def _check_coco_plain(coco: dict) -> None:
    """What every COCO reader relies on (torchvision's CocoDetection and datasets' loaders index these)."""
    assert set(coco) >= {"images", "annotations", "categories"}
    image_ids = {im["id"] for im in coco["images"]}
    cat_ids = {c["id"] for c in coco["categories"]}
    assert len(image_ids) == len(coco["images"])
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for a in coco["annotations"]:
        assert a["image_id"] in image_ids and a["category_id"] in cat_ids
        assert len(a["bbox"]) == 4 and a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])


def test_coco_loads_with_pycocotools_and_round_trips(tmp_path, photo_root):
    anns, asg = _season()
    coco = export_coco(anns, asg, photo_root)
    _check_coco_plain(coco)
    assert [(im["file_name"], im["width"], im["height"], im["date_captured"]) for im in coco["images"]] == [
        ("p1.jpg", 56, 96, "2026-05-01T06:12:30"),  # displayed size: orientation 6 turns 96x56
        ("p2.jpg", 80, 48, "2026-05-09T17:00:00+02:00"),
        ("sub/p3.jpg", 40, 64, ""),
    ]
    assert coco["categories"] == [
        {"id": 1, "name": "lion", "supercategory": "animal"},
        {"id": 2, "name": "nyala", "supercategory": "animal"},
    ]
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    pycoco = pytest.importorskip("pycocotools.coco")
    api = pycoco.COCO(str(path))
    assert sorted(api.getImgIds()) == [1, 2, 3] and sorted(api.getCatIds()) == [1, 2]
    loaded = {a["annotation_id"]: a for a in api.loadAnns(api.getAnnIds())}
    assert loaded["a1"]["bbox"] == [4, 8, 20.5, 30] and loaded["a1"]["area"] == 615
    assert loaded["a2"]["bbox"] == [0, 0, 56, 96]  # the whole displayed photo
    assert [(loaded[k]["individual_id"], loaded[k]["name"]) for k in ("a1", "a2", "a3", "a4", "a5")] == [
        ("L1", "L1"), ("new:lion:1", "new:lion:1"), (None, None), ("N7", "N7"), ("N-input", "N-input"),
    ]  # fmt: skip
    assert [loaded[k]["decision"] for k in ("a1", "a2", "a3", "a4", "a5")] == [
        "known",
        "new",
        "unsure",
        "known",
        None,
    ]
    assert loaded["a1"]["score"] == 0.876543 and loaded["a3"]["viewpoint"] == "right"
    assert loaded["a3"]["encounter"] == "e-given" and loaded["a1"]["encounter"] == "enc-1"
    assert api.imgs[loaded["a4"]["image_id"]]["file_name"] == "sub/p3.jpg"
    assert api.getAnnIds(imgIds=[1]) == [1, 2] and api.getAnnIds(catIds=[2]) == [3, 4, 5]


def test_coco_same_photo_two_datetimes_names_both_rows(photo_root):
    anns, asg = _season()
    anns[1].datetime = "2026-05-02T00:00:00"
    with pytest.raises(ExportError) as err:
        export_coco(anns, asg, photo_root)
    assert str(err.value) == (
        "annotations row 1 and annotations row 2 share photo 'p1.jpg' but differ in datetime "
        "('2026-05-01T06:12:30', '2026-05-02T00:00:00')"
    )


# ------------------------------------------------------------------------------------------------------------
# capture histories: the hand-worked example
# Weekly occasions from the earliest date (2026-05-01, midnight), half-open:
#   1: [05-01, 05-08)  2: [05-08, 05-15)  3: [05-15, 05-22)  4: [05-22, 05-29)
# A: 05-01 06:00 (1), 05-03 10:00 (1 again), 05-16 12:00 (3)                 -> 1010
# B: 05-08 00:00:00 exactly at the boundary (2, the later one), 05-28 23:59 (4) -> 0101
# new:lion:1: 05-21 23:59:59+02:00 (wall clock: 3), 05-22 00:00 (4)           -> 0011
# C: only an undated annotation -> not in the file (no all-zero history); one unsure and one unparseable
# date-time are left out and counted.
HAND = [
    ("h1", "2026-05-01T06:00:00", "known", "A"),
    ("h2", "2026-05-03T10:00:00", "known", "A"),
    ("h3", "2026-05-16T12:00:00", "known", "A"),
    ("h4", "2026-05-08T00:00:00", "known", "B"),
    ("h5", "2026-05-28T23:59:00", "known", "B"),
    ("h6", "2026-05-21T23:59:59+02:00", "new", "new:lion:1"),
    ("h7", "2026-05-22T00:00:00", "new", "new:lion:1"),
    ("h8", None, "known", "C"),
    ("h9", "2026-05-10T08:00:00", "unsure", None),
    ("h10", "10/05/2026 08:00", "known", "A"),
]
HAND_INP = """\
/* animal-reid capture histories: 3 individuals, 4 occasions of 7D */
/* occasion starts: 2026-05-01 2026-05-08 2026-05-15 2026-05-22 */
/* left out: 1 decision unsure, 1 no datetime, 1 unparseable datetime */
/* A */ 1010 1;
/* B */ 0101 1;
/* new:lion:1 */ 0011 1;
"""


def _hand() -> tuple[list[Annotation], list[Assignment]]:
    anns = [Annotation(i, f"{i}.jpg", species="lion", datetime=d, site="S1") for i, d, _, _ in HAND]
    asg = [Assignment(i, dec, ind) for i, _, dec, ind in HAND]
    return anns, asg


def test_mark_inp_matches_hand_worked_example():
    anns, asg = _hand()
    assert mark_inp(anns, asg, occasion="7D") == HAND_INP
    individuals, occasions, matrix = capture_history(anns, asg, occasion="7D")
    assert individuals == ["A", "B", "new:lion:1"]
    assert occasions == [(dt.datetime(2026, 5, d), dt.datetime(2026, 5, d + 7)) for d in (1, 8, 15, 22)]
    assert matrix.dtype == np.uint8 and matrix.tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]]
    assert capture_history_csv(anns, asg, occasion="7D").decode() == (
        "individual,2026-05-01,2026-05-08,2026-05-15,2026-05-22\nA,1,0,1,0\nB,0,1,0,1\nnew:lion:1,0,0,1,1\n"
    )


def test_mark_inp_groups_and_known_only():
    anns, asg = _hand()
    anns[3].site = anns[4].site = "S2"
    text = mark_inp(anns, asg, occasion="7D", groups="site", decisions=("known",))
    assert text.splitlines()[2:] == [
        "/* groups by site: S1 S2 */",
        "/* left out: 2 decision new, 1 decision unsure, 1 no datetime, 1 unparseable datetime */",
        "/* A */ 1010 1 0;",
        "/* B */ 0101 0 1;",
    ]


def test_mark_group_ambiguous_individual_names_both_annotations():
    anns, asg = _hand()
    anns[2].site = "S9"
    with pytest.raises(ExportError) as err:
        mark_inp(anns, asg, occasion="7D", groups="site")
    assert str(err.value) == (
        "individual 'A' has site 'S1' (annotation 'h1') and 'S9' (annotation 'h3'): it cannot be in one MARK "
        "group; group by another field or export per site"
    )


def test_comment_breaking_id_is_neutralised():
    anns = [Annotation("x", "x.jpg", datetime="2026-01-01T00:00:00")]
    text = mark_inp(anns, [Assignment("x", "known", "evil */ 1;\n/*")], occasion="1D")
    assert text.splitlines()[-1] == "/* evil * / 1; / * */ 1 1;"


# ------------------------------------------------------------------------------------------------------------
# occasion boundaries, clocks, missing date-times
@pytest.mark.parametrize(
    ("when", "clock", "expected"),
    [
        ("2026-05-08T00:00:00", "local", [0, 1]),  # exactly at the boundary: the later occasion
        ("2026-05-07T23:59:59.999999", "local", [1, 0]),
        ("2026-05-07T23:30:00-05:00", "local", [1, 0]),  # wall clock: still the 7th
        ("2026-05-07T23:30:00-05:00", "utc", [0, 1]),  # 2026-05-08T04:30Z
        ("2026-05-08T01:00:00+02:00", "utc", [1, 0]),  # 2026-05-07T23:00Z
        ("2026-05-08T00:00:00Z", "utc", [0, 1]),
        ("2026-05-08", "local", [0, 1]),  # a date alone: midnight, fine on day occasions
    ],
)
def test_occasion_boundaries_and_offsets(when, clock, expected):
    anns = [Annotation("a", "a.jpg", datetime=when)]
    h = capture_history(
        anns,
        [Assignment("a", "known", "X")],
        occasion="7D",
        start="2026-05-01",
        end="2026-05-15",
        clock=clock,
    )
    assert h.matrix.tolist() == [expected] and h.excluded == {}


def test_left_out_annotations_are_counted():
    anns = [
        Annotation("n1", "a.jpg"),
        Annotation("n2", "a.jpg", datetime="  "),
        Annotation("u1", "a.jpg", datetime="yesterday"),
        Annotation("z1", "a.jpg", datetime="2026-05-02T10:00:00"),  # no offset: excluded on the UTC clock
        Annotation("o1", "a.jpg", datetime="2026-06-30T10:00:00+00:00"),  # after end
        Annotation("d1", "a.jpg", datetime="2026-05-03+00:00"),
        Annotation("ok", "a.jpg", datetime="2026-05-02T10:00:00+00:00"),
        Annotation("na", "a.jpg", datetime="2026-05-02T10:00:00+00:00"),
    ]
    asg = [Assignment(a.annotation_id, "known", "X") for a in anns[:-1]]
    h = capture_history(anns, asg, occasion="12H", start="2026-05-01", end="2026-05-08", clock="utc")
    assert h.excluded == {
        "no assignment": ["na"],
        "no datetime": ["n1", "n2"],
        "unparseable datetime": ["u1"],
        "no UTC offset": ["z1", "d1"],  # a date alone has no offset (Python drops the "+00:00" of a date)
        "outside the occasions": ["o1"],
    }
    assert h.summary() == (
        "1 individuals, 14 occasions; left out: 1 no assignment, 2 no datetime, 1 unparseable datetime, "
        "2 no UTC offset, 1 outside the occasions"
    )
    assert h.individuals == ["X"] and int(h.matrix.sum()) == 1 and h.matrix.shape == (1, 14)
    assert h.labels()[:2] == ["2026-05-01T00:00", "2026-05-01T12:00"]


def test_date_only_fits_day_occasions_not_hours():
    anns = [Annotation("d", "a.jpg", datetime="2026-05-03")]
    asg = [Assignment("d", "known", "X")]
    assert capture_history(anns, asg, occasion="1D", start="2026-05-01").matrix.tolist() == [[0, 0, 1]]
    h = capture_history(anns, asg, occasion="6H", start="2026-05-01")
    assert h.excluded == {"date without time": ["d"]} and h.individuals == []


def test_explicit_occasions_with_gaps():
    anns = [Annotation(f"a{d}", "a.jpg", datetime=f"2026-05-{d:02d}T12:00:00") for d in (1, 4, 10)]
    asg = [Assignment(a.annotation_id, "known", "X") for a in anns]
    occ = [("2026-05-01", "2026-05-03"), ("2026-05-09", "2026-05-11")]
    h = capture_history(anns, asg, occasion=occ)
    assert h.matrix.tolist() == [[1, 1]] and h.excluded == {"outside the occasions": ["a4"]}
    assert (
        mark_inp(h).splitlines()[0]
        == "/* animal-reid capture histories: 1 individuals, 2 occasions of custom */"
    )


def test_end_inside_an_occasion_shortens_it():
    occ = make_occasions([], "7D", start="2026-05-01", end="2026-05-10")
    assert occ == [
        (dt.datetime(2026, 5, 1), dt.datetime(2026, 5, 8)),
        (dt.datetime(2026, 5, 8), dt.datetime(2026, 5, 10)),
    ]
    assert make_occasions([], "1D") == [] and parse_occasion("30d") == dt.timedelta(days=30)


def test_one_id_two_species_is_an_error():
    anns = [
        Annotation("a", "a.jpg", species="lion", datetime="2026-05-01T00:00:00"),
        Annotation("b", "b.jpg", species="nyala", datetime="2026-05-02T00:00:00"),
    ]
    asg = [Assignment("a", "known", "7"), Assignment("b", "known", "7")]
    with pytest.raises(ExportError) as err:
        capture_history(anns, asg, occasion="1D")
    assert str(err.value) == (
        "individual '7' is 'lion' in annotation 'a' and 'nyala' in annotation 'b': pass species= or export "
        "per species"
    )
    assert capture_history(anns, asg, occasion="1D", species="NYALA").matrix.tolist() == [[0, 1]]


# ------------------------------------------------------------------------------------------------------------
# sensitive species
@pytest.mark.parametrize(
    ("lat", "lon", "degrees", "expected"),
    [
        (-2.3456789, 34.8123456, 0.1, (-2.35, 34.85)),
        (0.3, -0.05, 0.1, (0.35, -0.05)),  # 0.3 is in [0.3, 0.4) (decimal arithmetic); -0.05 in [-0.1, 0)
        (12.74, 100.0, 0.5, (12.75, 100.25)),
        (90.0, 180.0, 1, (90.0, 180.0)),  # the top cells' centres kept on the globe
        (-33.99, 18.42, 0.25, (-33.875, 18.375)),
    ],
)
def test_coarsen_moves_to_cell_centre(lat, lon, degrees, expected):
    anns = [Annotation("a", "a.jpg", species="Lion", latitude=lat, longitude=lon),
            Annotation("b", "b.jpg", species="nyala", latitude=lat, longitude=lon)]  # fmt: skip
    out = coarsen(anns, {"lion": degrees})
    assert (out[0].latitude, out[0].longitude) == expected
    assert (out[1].latitude, out[1].longitude) == (lat, lon)
    assert anns[0].latitude == lat  # the input is not changed


def test_coarsening_applied_in_every_file(tmp_path, photo_root):
    anns, asg = _season()
    written = export_all(tmp_path / "out", anns, asg, photo_root, occasion="7D", sensitive={"lion": 0.1})
    texts = {rel: (tmp_path / "out" / rel).read_text("utf-8") for rel in written}
    for rel, text in texts.items():
        for fine in FINE:
            assert fine not in text, (rel, fine)
    rows = {r["annotation_id"]: r for r in csv.DictReader(io.StringIO(texts["annotations.csv"]))}
    assert (rows["a1"]["latitude"], rows["a1"]["longitude"]) == ("-2.35", "34.85")
    assert (rows["a2"]["latitude"], rows["a2"]["longitude"]) == ("-2.35", "34.85")
    assert (rows["a3"]["latitude"], rows["a3"]["longitude"]) == ("-24.1234567", "31.7654321")  # not sensitive


def _fake_writer(monkeypatch) -> list:
    calls = []

    def write_camtrapdp(folder, annotations, assignments, source_package=None, **kwargs):
        calls.append((Path(folder), list(annotations), list(assignments), source_package, kwargs))
        Path(folder).mkdir()
        rows = [f"{a.annotation_id},{a.latitude},{a.longitude}" for a in annotations]
        (Path(folder) / "observations.csv").write_text("\n".join(rows))
        (Path(folder) / "datapackage.json").write_text("{}")
        return [types.SimpleNamespace(source="obs.csv", row="line 4", reason="malformed", message="x: y")]

    module = types.ModuleType("fake_camtrap_writer")
    module.__spec__ = importlib.machinery.ModuleSpec("fake_camtrap_writer", None)
    module.write_camtrapdp = write_camtrapdp
    monkeypatch.setitem(sys.modules, "fake_camtrap_writer", module)
    monkeypatch.setattr(exports, "CAMTRAP_MODULE", "fake_camtrap_writer")
    return calls


def test_camtrap_writer_gets_coarsened_annotations(tmp_path, photo_root, monkeypatch):
    calls = _fake_writer(monkeypatch)
    anns, asg = _season()
    source = tmp_path / "package"
    source.mkdir()
    written = export_all(
        tmp_path / "out", anns, asg, photo_root, sensitive={"LION": 0.1}, camtrap_source=source,
        camtrap_media="link",
    )  # fmt: skip
    assert written[-3:] == [
        "camtrap-dp/datapackage.json", "camtrap-dp/observations.csv", "camtrap_dp_skipped.csv",
    ]  # fmt: skip
    ((folder, got_anns, got_asg, got_source, kwargs),) = calls
    assert folder.name == "camtrap-dp" and got_source == source and got_asg == asg
    assert kwargs == {"media": "link", "photo_root": photo_root, "sensitive": {"lion": 0.1}}
    assert (tmp_path / "out" / "camtrap_dp_skipped.csv").read_text() == (
        "source,row,reason,message\nobs.csv,line 4,malformed,x: y\n"
    )
    assert [(a.latitude, a.longitude) for a in got_anns[:2]] == [(-2.35, 34.85)] * 2
    text = (tmp_path / "out" / "camtrap-dp" / "observations.csv").read_text()
    assert not any(fine in text for fine in FINE)


@pytest.mark.parametrize("name", ["animal_reid.season.no_such_writer", "fake_camtrap_writer"])
def test_camtrap_writer_missing(name, tmp_path, photo_root, monkeypatch, caplog):
    if name == "fake_camtrap_writer":
        _fake_writer(monkeypatch)
        del sys.modules[name].write_camtrapdp
    monkeypatch.setattr(exports, "CAMTRAP_MODULE", name)
    anns, asg = _season()
    if name != "fake_camtrap_writer":  # not installed: warned (a source was given), the rest written
        written = export_all(tmp_path / "out", anns, asg, photo_root, camtrap_source=photo_root)
        assert not [w for w in written if w.startswith("camtrap-dp")]
        assert f"no Camtrap DP writer ({name}) in this install: camtrap-dp/ not written" in caplog.text
        return
    with pytest.raises(ExportError) as err:  # installed but unusable: one line, nothing written
        export_all(tmp_path / "out", anns, asg, photo_root)
    assert str(err.value).startswith(f"the Camtrap DP writer {name} cannot be used: ")
    assert not (tmp_path / "out").exists()


def test_camtrap_real_writer_when_present(tmp_path, photo_root, monkeypatch):
    try:
        module = importlib.import_module("animal_reid.season.camtrapdp")
    except ImportError as err:
        pytest.skip(f"the Camtrap DP writer is not importable yet: {err}")
    if not hasattr(module, "write_camtrapdp"):
        pytest.skip("animal_reid.season.camtrapdp has no write_camtrapdp yet")
    monkeypatch.setattr(exports, "CAMTRAP_MODULE", "animal_reid.season.camtrapdp")
    anns, asg = _season()
    written = export_all(tmp_path / "out", anns, asg, photo_root, sensitive={"lion": 0.1})
    camtrap = [rel for rel in written if rel.startswith("camtrap-dp/")]
    assert "camtrap-dp/datapackage.json" in camtrap
    for rel in [r for r in camtrap if r.endswith((".csv", ".json"))]:  # the tables, not the copied photos
        text = (tmp_path / "out" / rel).read_text("utf-8")
        assert not any(fine in text for fine in FINE), rel
    if hasattr(module, "validate_package"):  # the package passes the Camtrap DP schemas
        assert module.validate_package(tmp_path / "out" / "camtrap-dp") == []


def test_export_all_files_and_per_species_histories(tmp_path, photo_root):
    anns, asg = _season()
    written = export_all(tmp_path / "out", anns, asg, photo_root, occasion="1D")
    base = [
        "annotations.csv", "capture_history_excluded.csv", "capture_history_lion.csv",
        "capture_history_lion.inp", "capture_history_nyala.csv", "capture_history_nyala.inp", "coco.json",
    ]  # fmt: skip
    assert written == base
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted([MANIFEST_NAME, LOCK_NAME, *base])
    # one grid for the season: 2026-05-01 .. 2026-05-09 (nine days) in both species' files
    lion = (out / "capture_history_lion.csv").read_text().splitlines()
    assert lion[0].split(",")[1:] == [f"2026-05-{d:02d}" for d in range(1, 10)]
    assert lion[1:] == ["L1,1,0,0,0,0,0,0,0,0", "new:lion:1,1,0,0,0,0,0,0,0,0"]
    assert (out / "capture_history_nyala.csv").read_text().splitlines()[1:] == []
    assert (out / "capture_history_excluded.csv").read_text().splitlines() == [
        "annotation_id,species,reason", "a3,nyala,decision unsure", "a5,nyala,no assignment",
        "a4,nyala,no datetime",
    ]  # fmt: skip
    assert (out / "annotations.csv").read_bytes() == export_csv(anns, asg)
    assert json.loads((out / "coco.json").read_text()) == export_coco(anns, asg, photo_root)


def test_single_species_writes_one_history(tmp_path, photo_root):
    anns, asg = _season()
    lions = [a for a in anns if a.species == "lion"]
    with pytest.raises(TypeError, match=r"write_exports\(\) got unknown options \['ocasion'\]"):
        write_exports(tmp_path, lions, asg[:2], photo_root, ocasion="1d")
    written = write_exports(tmp_path, lions, asg[:2], photo_root, occasion="1d")
    assert written == ["annotations.csv", "capture_history.csv", "capture_history.inp", "coco.json"]
    assert (tmp_path / "capture_history.inp").read_text().splitlines() == [
        "/* animal-reid capture histories: 2 individuals, 1 occasions of 1D */",
        "/* occasion starts: 2026-05-01 */",
        "/* L1 */ 1 1;",
        "/* new:lion:1 */ 1 1;",
    ]


# ------------------------------------------------------------------------------------------------------------
# the output folder
def test_folder_not_ours_is_refused_untouched(tmp_path, photo_root):
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    anns, asg = _season()
    with pytest.raises(OutputError) as err:
        export_all(out, anns, asg, photo_root)
    assert str(err.value).startswith(
        f"export folder {out} is not empty (1 entry: notes.txt) and was not written"
    )
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_replaces_only_listed_files(tmp_path, photo_root):
    out = tmp_path / "out"
    anns, asg = _season()
    first = export_all(out, anns, asg, photo_root, occasion="1D")
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(OutputError) as err:
        export_all(out, anns, asg, photo_root, occasion="1D")
    assert str(err.value) == (
        f"export folder {out} holds the output of a previous animal-reid export run: pass --overwrite to "
        "replace those files (files you added there are kept), or choose another folder"
    )
    lions = [a for a in anns if a.species == "lion"]  # one species now: per-species files go
    second = export_all(out, lions, asg[:2], photo_root, occasion="1D", overwrite=True)
    assert (out / "mine.txt").read_text() == "keep me"
    assert not (out / "capture_history_lion.csv").exists() and (out / "capture_history.csv").exists()
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert names == {*second, "mine.txt", MANIFEST_NAME, LOCK_NAME} and first != second


def test_export_into_an_entered_output_folder(tmp_path, photo_root):
    anns, asg = _season()
    with OutputFolder(tmp_path / "season", tool="animal-reid season") as out:
        written = export_all(out, anns, asg, photo_root, occasion="1D")
    assert (tmp_path / "season" / "coco.json").is_file() and "annotations.csv" in written


def test_bad_input_writes_nothing(tmp_path, photo_root):
    anns, asg = _season()
    with pytest.raises(ExportError):
        export_all(tmp_path / "out", anns, [*asg, Assignment("zz", "known", "X")], photo_root)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------------
# bad inputs: one line each, naming the row or option
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            Assignment("zz", "known", "X"),
            "assignments row 5 (annotation 'zz'): annotation_id 'zz' is not in the annotations",
        ),
        (
            Assignment("", "new", "new:x:1"),
            "assignments row 5 (annotation ''): annotation_id '' is not in the annotations",
        ),
        (
            Assignment("A1", "unsure", None),
            "assignments row 5 (annotation 'A1'): annotation_id 'A1' is not in the annotations",
        ),
        (
            Assignment("a5", "maybe", "X"),
            "assignments row 5 (annotation 'a5'): decision 'maybe' is not one of known, unsure, new",
        ),
        (
            Assignment("a5", "known", None),
            "assignments row 5 (annotation 'a5'): decision 'known' names no individual",
        ),
        (
            Assignment("a5", "new", ""),
            "assignments row 5 (annotation 'a5'): decision 'new' names no individual",
        ),
        (Assignment("a1", "known", "L1"), "assignments rows 1 and 5 both assign annotation 'a1'"),
        (Assignment("a4", "new", "new:n:1"), "assignments rows 4 and 5 both assign annotation 'a4'"),
        (Assignment("a2", "unsure", None), "assignments rows 2 and 5 both assign annotation 'a2'"),
    ],
)
def test_bad_assignments(extra, message, photo_root):
    anns, asg = _season()
    for call in (
        lambda: export_csv(anns, [*asg, extra]),
        lambda: export_coco(anns, [*asg, extra], photo_root),
        lambda: capture_history(anns, [*asg, extra]),
    ):
        with pytest.raises(ExportError) as err:
            call()
        assert str(err.value) == message and "\n" not in message


@pytest.mark.parametrize(
    ("dup", "source", "message"),
    [
        (0, None, "annotations row 1 and annotations row 6 share annotation_id 'a1'"),
        (
            3,
            "md.json images[9] detections[0]",
            "annotations row 4 and annotations row 6 (md.json images[9] detections[0]) share "
            "annotation_id 'a4'",
        ),
        (
            4,
            "obs.csv line 3",
            "annotations row 5 and annotations row 6 (obs.csv line 3) share annotation_id 'a5'",
        ),
    ],
)
def test_duplicate_annotation_ids(dup, source, message, photo_root, tmp_path):
    anns, asg = _season()
    anns.append(Annotation(anns[dup].annotation_id, "p2.jpg", source=source))
    for call in (
        lambda: export_csv(anns, asg),
        lambda: mark_inp(anns, asg),
        lambda: export_all(tmp_path / "o", anns, asg, photo_root),
    ):
        with pytest.raises(ExportError) as err:
            call()
        assert str(err.value) == message


HELP = (
    "a length such as '1D', '7D', '30D', '12H' or '2W' (a whole number >= 1 of hours, days or weeks), a "
    "positive timedelta, or a list of (start, end) pairs"
)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0D", f"occasion '0D' is not {HELP}"),
        ("x", f"occasion 'x' is not {HELP}"),
        ("-7D", f"occasion '-7D' is not {HELP}"),
        ("1.5D", f"occasion '1.5D' is not {HELP}"),
        ("7", f"occasion '7' is not {HELP}"),
        (dt.timedelta(days=-1), f"occasion datetime.timedelta(days=-1) is not {HELP}"),
        (0, f"occasion 0 is not {HELP}"),
        ([], f"occasion [] is not {HELP}"),
        (
            [("2026-05-03", "2026-05-01")],
            "occasion 1 (2026-05-03T00:00:00, 2026-05-01T00:00:00) does not end after it starts",
        ),
        (
            [("2026-05-01", "2026-05-04"), ("2026-05-03", "2026-05-05")],
            "occasions 1 (2026-05-01T00:00:00, 2026-05-04T00:00:00) and 2 "
            "(2026-05-03T00:00:00, 2026-05-05T00:00:00) overlap or are out of order",
        ),
        ([("soon", "2026-05-05")], "occasion 1 start 'soon' is not an ISO 8601 date-time"),
    ],
)
def test_bad_occasion_specs(spec, message, tmp_path, photo_root):
    anns, asg = _season()
    with pytest.raises(ExportError) as err:
        capture_history(anns, asg, occasion=spec)
    assert str(err.value) == message
    with pytest.raises(ExportError) as err:
        export_all(tmp_path / "o", anns, asg, photo_root, occasion=spec)
    assert str(err.value) == message and not (tmp_path / "o").exists()


TAKES = "capture histories take 'known' and/or 'new' (an unsure annotation names no individual)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"start": "2026-05-10", "end": "2026-05-01"},
            "end 2026-05-01T00:00:00 is not after start 2026-05-10T00:00:00",
        ),
        ({"start": "May 1st"}, "start 'May 1st' is not an ISO 8601 date-time"),
        (
            {"occasion": "1H", "start": "2020-01-01"},
            "occasion '1H' from 2020-01-01T00:00:00 makes 55698 occasions (more than 10000): "
            "choose a longer occasion or a shorter season",
        ),
        ({"clock": "UTC+2"}, "clock 'UTC+2' is not 'local' or 'utc'"),
        ({"decisions": ("known", "unsure")}, "decisions ('known', 'unsure'): " + TAKES),
        ({"decisions": ()}, "decisions (): " + TAKES),
        (
            {"occasion": [("2026-05-01", "2026-05-02")], "start": "2026-05-01"},
            "start and end cannot be given with an explicit list of occasions",
        ),
    ],
)
def test_bad_history_options(kwargs, message):
    anns, asg = _season()
    with pytest.raises(ExportError) as err:
        capture_history(anns, asg, **kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("sensitive", "message"),
    [
        ({"lion": 0}, "sensitive species 'lion': precision 0 is not a number of degrees in (0, 90]"),
        ({"lion": -0.1}, "sensitive species 'lion': precision -0.1 is not a number of degrees in (0, 90]"),
        ({"lion": "x"}, "sensitive species 'lion': precision 'x' is not a number of degrees in (0, 90]"),
        (
            {"lion": float("nan")},
            "sensitive species 'lion': precision nan is not a number of degrees in (0, 90]",
        ),
        ({"lion": 100}, "sensitive species 'lion': precision 100 is not a number of degrees in (0, 90]"),
        ({"lion": True}, "sensitive species 'lion': precision True is not a number of degrees in (0, 90]"),
        ({" ": 0.1}, "sensitive species ' ': no species name"),
        (
            {"lion": 0.1, "Lion": 0.5},
            "sensitive species 'Lion' is given twice (names are compared ignoring case)",
        ),
    ],
)
def test_bad_sensitive_options(sensitive, message, tmp_path, photo_root):
    anns, asg = _season()
    with pytest.raises(ExportError) as err:
        export_all(tmp_path / "o", anns, asg, photo_root, sensitive=sensitive)
    assert str(err.value) == message and not (tmp_path / "o").exists()


def _outside_photo(kind: str, root: Path) -> str:
    outside = root.parent / "elsewhere.jpg"
    outside.write_bytes(turned_jpeg(1, (16, 16)))
    if kind == "dotdot":
        return "../elsewhere.jpg"
    if kind == "absolute":
        return str(outside)
    os.symlink(outside, root / "link.jpg")
    return "link.jpg"


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_photo_outside_root_is_never_read(kind, photo_root):
    anns, asg = _season()
    anns[2].photo = _outside_photo(kind, photo_root)
    with pytest.raises(ExportError) as err:
        export_coco(anns, asg, photo_root)
    assert (
        str(err.value) == f"annotations row 3: photo {anns[2].photo!r} is outside the photo root {photo_root}"
    )


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: None, "no such file or folder"),
        (lambda p: p.write_bytes(b"not a jpeg at all"), "is not an image Pillow can read"),
        (lambda p: p.mkdir(), "Is a directory"),
    ],
)
def test_unreadable_photo_is_one_line(make, problem, photo_root):
    anns, asg = _season()
    anns[3].photo, anns[3].source = "sub/bad.jpg", "obs.csv line 5"
    make(photo_root / "sub" / "bad.jpg")
    path = photo_root / "sub" / "bad.jpg"
    sep = ": " if problem != "is not an image Pillow can read" else " "
    out = photo_root.parent / "out"
    for call in (lambda: export_coco(anns, asg, photo_root), lambda: export_all(out, anns, asg, photo_root)):
        with pytest.raises(ExportError) as err:
            call()
        assert str(err.value) == f"annotations row 4 (obs.csv line 5): photo {path}{sep}{problem}"
    assert not out.exists()  # the staged files went with the folder we made


@pytest.mark.parametrize("media", ["hardlink", "COPY", None])
def test_bad_camtrap_media(media, tmp_path, photo_root):
    anns, asg = _season()
    with pytest.raises(ExportError) as err:
        export_all(tmp_path / "o", anns, asg, photo_root, camtrap_media=media)
    assert str(err.value) == f"camtrap_media {media!r} is not 'copy', 'link' or 'none'"


@pytest.mark.parametrize("groups", ["camera", "Species", ""])
def test_bad_groups(groups, tmp_path, photo_root):
    anns, asg = _season()
    with pytest.raises(ExportError) as err:
        export_all(tmp_path / "o", anns, asg, photo_root, groups=groups)
    assert str(err.value) == f"groups {groups!r} is not 'species' or 'site'"
