"""Camtrap DP packages (animal_reid.season.camtrapdp): read into annotations, validated, written back with ids."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from animal_reid.season import camtrapdp as ctdp
from animal_reid.season.annotations import Annotation, Assignment
from animal_reid.season.camtrapdp import CamtrapDPError, read_camtrapdp, validate_package, write_camtrapdp
from animal_reid.season.camtrapdp_schema import load_schema
from animal_reid.season.ingest import BAD_BOX, DUPLICATE, MALFORMED, MISSING, OUTSIDE, IngestError
from animal_reid.testing.images import turned_jpeg

SPECIES = {"Tragelaphus angasii": "nyala"}
DEPLOYMENTS = [
    {
        "deploymentID": "d1",
        "locationID": "L1",
        "locationName": "North pan",
        "latitude": "-24.5",
        "longitude": "31.25",
    },
    {
        "deploymentID": "d2",
        "locationID": "L2",
        "locationName": "",
        "latitude": "-24.625",
        "longitude": "31.5",
    },
    {
        "deploymentID": "d3",
        "locationID": "L3",
        "locationName": "South gate",
        "latitude": "-24.75",
        "longitude": "31.75",
    },
]
# mediaID: deployment, file, EXIF orientation, stored size (width, height), timestamp
PHOTOS = {
    "m1": ("d1", "media/d1/IMG_0001.JPG", 1, (96, 64), "2026-05-02T06:00:00Z"),
    "m2": ("d2", "media/d2/IMG_0002.JPG", 6, (96, 64), "2026-05-03T07:30:00+02:00"),  # displayed 64 x 96
    "m3": ("d3", "media/d3/IMG_0003.JPG", 1, (64, 48), "2026-05-04T18:00:00Z"),
    "m4": ("d3", "media/d3/IMG_0004.JPG", 1, (64, 48), "2026-05-04T18:00:05Z"),
}


def _obs(oid, dep, media, bbox=("", "", "", ""), **extra):
    when = PHOTOS[media][4] if media else "2026-05-04T18:00:00Z"
    row = {
        "observationID": oid, "deploymentID": dep, "mediaID": media, "eventStart": when, "eventEnd": when,
        "observationLevel": "media" if media else "event", "observationType": "animal",
        "scientificName": "Tragelaphus angasii", "count": "1",
    }  # fmt: skip
    row.update(zip(("bboxX", "bboxY", "bboxWidth", "bboxHeight"), bbox, strict=True))
    row.update(extra)
    return row


OBSERVATIONS = [
    _obs("o1", "d1", "m1", ("0.25", "0.125", "0.5", "0.375"), individualID="NY-01", eventID="e1",
         classificationMethod="human", classifiedBy="Ann Ranger", observationTags="viewpoint:left",
         observationComments="limping"),
    _obs("o2", "d1", "m1", ("0.5", "0.5", "0.25", "0.5"), individualID="NY-02", eventID="e1",
         classificationMethod="machine", classifiedBy="md", classificationProbability="0.8"),
    _obs("o3", "d2", "m2", ("0.25", "0.25", "0.5", "0.5"), individualID="NY-01", eventID="e2"),
    _obs("o4", "d3", "m3", scientificName="Panthera leo"),
    _obs("o5", "d3", "m4", observationType="blank", scientificName=""),
    _obs("o6", "d3", ""),
]  # fmt: skip


def _columns(name):
    return [f["name"] for f in load_schema(name)["fields"]]


def _write_csv(path: Path, name: str, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_columns(name), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _descriptor() -> dict:
    base = "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0/"
    return {
        "resources": [
            {"name": n, "path": f"{n}.csv", "profile": "tabular-data-resource", "schema": f"{base}{n}-table-schema.json"}
            for n in ("deployments", "media", "observations")
        ],
        "profile": base + "camtrap-dp-profile.json",
        "created": "2026-06-01T10:00:00Z",
        "contributors": [{"title": "Ann Ranger", "role": "principalInvestigator"}],
        "project": {"title": "Nyala 2026", "samplingDesign": "targeted", "captureMethod": ["activityDetection"],
                    "individualAnimals": True, "observationLevel": ["media", "event"]},
        "spatial": {"type": "Point", "coordinates": [31.5, -24.6]},
        "temporal": {"start": "2026-05-01", "end": "2026-05-31"},
        "taxonomic": [{"scientificName": "Tragelaphus angasii"}, {"scientificName": "Panthera leo"}],
    }  # fmt: skip


def make_package(root: Path, observations=None, media_edit=None, descriptor=None) -> Path:
    """A Camtrap DP with 3 deployments and 4 generated photos (one EXIF-rotated) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    media = []
    for i, (mid, (dep, rel, orientation, size, when)) in enumerate(PHOTOS.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(turned_jpeg(orientation, size, seed=i))
        media.append({"mediaID": mid, "deploymentID": dep, "captureMethod": "activityDetection", "timestamp": when,
                      "filePath": rel, "filePublic": "true", "fileName": Path(rel).name, "fileMediatype": "image/jpeg"})  # fmt: skip
    if media_edit:
        media_edit(media)
    deps = [
        dict(d, deploymentStart="2026-05-01T00:00:00Z", deploymentEnd="2026-05-31T00:00:00Z")
        for d in DEPLOYMENTS
    ]
    _write_csv(root / "deployments.csv", "deployments", deps)
    _write_csv(root / "media.csv", "media", media)
    _write_csv(
        root / "observations.csv", "observations", OBSERVATIONS if observations is None else observations
    )
    (root / "datapackage.json").write_text(json.dumps(descriptor or _descriptor(), indent=2))
    return root


@pytest.fixture
def pkg(tmp_path):
    return make_package(tmp_path.resolve() / "pkg")


def _expected(root: Path) -> list[Annotation]:
    common = {"latitude": -24.5, "longitude": 31.25, "site": "North pan", "camera": "d1", "encounter": "e1"}
    photo = {m: str(root / PHOTOS[m][1]) for m in PHOTOS}
    obs = root / "observations.csv"
    return [
        Annotation("o1", photo["m1"], [24.0, 8.0, 48.0, 24.0], species="nyala", viewpoint="left",
                   datetime="2026-05-02T06:00:00Z", observer="Ann Ranger", notes="limping", individual="NY-01",
                   source=f"{obs} line 2", **common),
        Annotation("o2", photo["m1"], [48.0, 32.0, 24.0, 32.0], species="nyala", datetime="2026-05-02T06:00:00Z",
                   observer="md", individual="NY-02", confidence=0.8, source=f"{obs} line 3", **common),
        Annotation("o3", photo["m2"], [16.0, 24.0, 32.0, 48.0], species="nyala", datetime="2026-05-03T07:30:00+02:00",
                   latitude=-24.625, longitude=31.5, site="L2", camera="d2", encounter="e2", individual="NY-01",
                   source=f"{obs} line 4"),
        Annotation("o4", photo["m3"], None, species="Panthera leo", datetime="2026-05-04T18:00:00Z",
                   latitude=-24.75, longitude=31.75, site="South gate", camera="d3", source=f"{obs} line 5"),
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# reading and validating a good package
def test_read_exactly(pkg):
    annotations, skips = read_camtrapdp(pkg, species_map=SPECIES)
    assert annotations == _expected(pkg)
    obs = pkg / "observations.csv"
    assert [(s.row, s.reason, s.message) for s in skips] == [
        (
            "line 7",
            MISSING,
            f"{obs} line 7: event-level observation (no mediaID): not tied to one photo: skipped",
        )
    ]


def test_read_datapackage_path_and_min_conf(pkg):
    annotations, _ = read_camtrapdp(pkg / "datapackage.json", species_map=SPECIES, min_conf=0.9)
    assert [a.annotation_id for a in annotations] == [
        "o1",
        "o3",
        "o4",
    ]  # o2's 0.8 is below; no probability kept


def test_generated_package_is_valid(pkg):
    assert validate_package(pkg) == []


# ----------------------------------------------------------------------------------------------------------------
# writing
ASSIGNMENTS = [
    Assignment("o1", "known", "NY-01", score=0.91, candidate="NY-01"),
    Assignment("o2", "new", "new:nyala:1", score=0.31, candidate="NY-01"),
    Assignment("o3", "unsure", None, score=0.62, candidate="NY-02"),
    Assignment("o4", "known", "LEO-7", score=1.2, candidate="LEO-7"),
]


def _unlabelled(pkg):
    annotations, _ = read_camtrapdp(pkg, species_map=SPECIES)
    for a in annotations:
        a.individual = None
    return annotations


def test_write_new_package_round_trips(pkg, tmp_path):
    out = tmp_path / "out"
    annotations = _unlabelled(pkg)
    skips = write_camtrapdp(out, annotations, ASSIGNMENTS, scientific_names={"nyala": "Tragelaphus angasii"})
    assert skips == []
    assert validate_package(out) == []
    back, back_skips = read_camtrapdp(out, species_map=SPECIES)
    assert back_skips == []
    assert [a.annotation_id for a in back] == ["o1", "o2", "o3", "o4"]
    assert [a.individual for a in back] == ["NY-01", "new:nyala:1", None, "LEO-7"]
    assert [a.confidence for a in back] == [0.91, 0.31, None, 1.0]
    for a, b in zip(annotations, back, strict=True):
        assert b.box == (None if a.box is None else pytest.approx(a.box, abs=1e-3))
        assert (b.species, b.datetime, b.camera, b.encounter) == (
            a.species,
            a.datetime,
            a.camera,
            a.encounter,
        )
        assert (b.latitude, b.longitude, b.site, b.viewpoint) == (
            a.latitude,
            a.longitude,
            a.site,
            a.viewpoint,
        )
        assert b.observer == (None if b.individual is None else "animal-reid 0.1.0")
    rows = list(csv.DictReader(open(out / "observations.csv", encoding="utf-8")))
    assert [r["observationTags"] for r in rows] == [
        "viewpoint:left | reidDecision:known",
        "reidDecision:new | reidCandidate:NY-01",
        "reidDecision:unsure | reidCandidate:NY-02",
        "reidDecision:known",
    ]
    assert {r["classificationMethod"] for r in rows} == {"machine", ""}
    assert json.loads((out / "datapackage.json").read_text())["temporal"] == {
        "start": "2026-05-02",
        "end": "2026-05-04",
    }


def test_write_from_source_fills_and_adds(pkg, tmp_path):
    out = tmp_path / "out"
    annotations, _ = read_camtrapdp(pkg, species_map=SPECIES)
    annotations[3].individual = None  # o4 had none: filled from its assignment
    extra = Annotation("det-1", str(pkg / PHOTOS["m1"][1]), [0.0, 0.0, 12.0, 16.0], species="nyala")
    assignments = [
        *ASSIGNMENTS[:3],
        Assignment("o4", "known", "LEO-7", 0.7),
        Assignment("det-1", "new", "new:nyala:2"),
    ]
    skips = write_camtrapdp(out, [*annotations, extra], assignments, source_package=pkg,
                            scientific_names={"nyala": "Tragelaphus angasii"})  # fmt: skip
    assert skips == []
    assert validate_package(out) == []
    back, back_skips = read_camtrapdp(out, species_map=SPECIES)
    assert len(back_skips) == 1 and "event-level" in back_skips[0].message  # o6 kept as it was
    by_id = {a.annotation_id: a for a in back}
    assert [by_id[i].individual for i in ("o1", "o2", "o3", "o4", "det-1")] == [
        "NY-01", "NY-02", "NY-01", "LEO-7", "new:nyala:2",
    ]  # fmt: skip
    assert by_id["det-1"].box == pytest.approx([0.0, 0.0, 12.0, 16.0], abs=1e-3)
    assert (out / PHOTOS["m2"][1]).read_bytes() == (pkg / PHOTOS["m2"][1]).read_bytes()
    assert (out / "media.csv").read_bytes() == (pkg / "media.csv").read_bytes()
    assert len(list(csv.DictReader(open(out / "observations.csv", encoding="utf-8")))) == 7


def test_write_sensitive_coarsens_coordinates(pkg, tmp_path):
    out = tmp_path / "out"
    skips = write_camtrapdp(out, _unlabelled(pkg), ASSIGNMENTS, sensitive={"Panthera leo": 0.1}, media="none")
    assert skips == []
    rows = {r["deploymentID"]: r for r in csv.DictReader(open(out / "deployments.csv", encoding="utf-8"))}
    assert (rows["d3"]["latitude"], rows["d3"]["longitude"], rows["d3"]["coordinateUncertainty"]) == (
        "-24.75",
        "31.75",
        "7872",
    )
    assert (rows["d1"]["latitude"], rows["d1"]["coordinateUncertainty"]) == ("-24.5", "")
    assert json.loads((out / "datapackage.json").read_text())["coordinatePrecision"] == 0.1
    assert not (out / "media").exists()
    assert validate_package(out) == []


def test_write_naive_times_flag_timestamp_issues(pkg, tmp_path):
    annotations = _unlabelled(pkg)
    for a in annotations:
        a.datetime = a.datetime[:19]  # offsets dropped
    write_camtrapdp(tmp_path / "utc", annotations, ASSIGNMENTS)
    write_camtrapdp(tmp_path / "cat", annotations, ASSIGNMENTS, utc_offset="+02:00")
    for name, issue, start in (
        ("utc", "true", "2026-05-02T06:00:00Z"),
        ("cat", "", "2026-05-02T06:00:00+02:00"),
    ):
        rows = list(csv.DictReader(open(tmp_path / name / "deployments.csv", encoding="utf-8")))
        assert (rows[0]["timestampIssues"], rows[0]["deploymentStart"]) == (issue, start)
        assert validate_package(tmp_path / name) == []


def test_write_refuses_a_folder_with_a_package(pkg, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "media.csv").write_text("mine\n")
    with pytest.raises(CamtrapDPError) as err:
        write_camtrapdp(out, _unlabelled(pkg), ASSIGNMENTS)
    assert str(err.value) == f"{out}: already has media.csv: nothing is replaced (give an empty folder)"
    assert (out / "media.csv").read_text() == "mine\n" and sorted(os.listdir(out)) == ["media.csv"]


@pytest.mark.parametrize(
    "edit, reason, problem",
    [
        (lambda a, pkg: setattr(a, "datetime", None), MALFORMED, "date-time None is not ISO 8601 (media need one)"),
        (lambda a, pkg: setattr(a, "datetime", "May 2nd"), MALFORMED, "date-time 'May 2nd' is not ISO 8601 (media need one)"),
        (lambda a, pkg: setattr(a, "photo", str(pkg / "gone.jpg")), MISSING, "photo {pkg}/gone.jpg does not exist"),
        (lambda a, pkg: setattr(a, "box", [500.0, 500.0, 10.0, 10.0]), MALFORMED, "box [500.0, 500.0, 10.0, 10.0] is outside the 64x48 photo"),
        (lambda a, pkg: (setattr(a, "latitude", None), setattr(a, "longitude", None)), MALFORMED,
         "deployment 'd3' has no latitude/longitude (Camtrap DP deployments need them)"),
    ],
)  # fmt: skip
def test_write_skips_what_cannot_be_written(pkg, tmp_path, edit, reason, problem):
    annotations = _unlabelled(pkg)
    edit(annotations[3], pkg)  # o4, the only annotation of d3
    skips = write_camtrapdp(tmp_path / "out", annotations, ASSIGNMENTS)
    photo = annotations[3].photo
    expected = f"annotation 'o4' ({photo}): {problem.format(pkg=pkg)}: left out of the Camtrap DP"
    assert [(s.row, s.reason, s.message) for s in skips] == [("o4", reason, expected)]
    assert validate_package(tmp_path / "out") == []
    assert [a.annotation_id for a in read_camtrapdp(tmp_path / "out")[0]] == ["o1", "o2", "o3"]


# ----------------------------------------------------------------------------------------------------------------
# broken packages: one-line errors
@pytest.mark.parametrize(
    "text, problem",
    [
        ("{", "not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
        ('{"resources": [}', "not valid JSON (Expecting value at line 1 column 16)"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"name": "x"}', "no 'resources' list (a Camtrap DP names deployments, media and observations)"),
        ('{"resources": []}', "no 'resources' list (a Camtrap DP names deployments, media and observations)"),
    ],
)
def test_broken_datapackage_json(pkg, text, problem):
    dp = pkg / "datapackage.json"
    dp.write_text(text)
    with pytest.raises(IngestError) as err:
        read_camtrapdp(pkg)
    assert str(err.value) == f"{dp}: {problem}"
    assert validate_package(pkg) == [f"{dp}: {problem}"]


def _resources(edit):
    def apply(d):
        edit(d["resources"])
        return d

    return apply


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda r: r.pop(2), "no observations resource (a Camtrap DP has deployments, media and observations)"),
        (lambda r: r.__delitem__(slice(0, 2)), "no deployments, media resource (a Camtrap DP has deployments, media and observations)"),
        (lambda r: r[2].update(path="obs.csv"), "resources[2] (observations): file {pkg}/obs.csv does not exist"),
        (lambda r: r[1].update(path="../media.csv"), "resources[1] (media): path '../media.csv' resolves outside the package folder {pkg}: not read"),
        (lambda r: r[0].update(path="https://example.org/d.csv"), "resources[0] (deployments): path 'https://example.org/d.csv' is a URL: remote tables are not read"),
        (lambda r: r[0].pop("path"), "resources[0] (deployments): no 'path' to its CSV file"),
    ],
)  # fmt: skip
def test_broken_resources(pkg, edit, problem):
    dp = pkg / "datapackage.json"
    dp.write_text(json.dumps(_resources(edit)(json.loads(dp.read_text()))))
    with pytest.raises(IngestError) as err:
        read_camtrapdp(pkg)
    assert str(err.value) == f"{dp}: {problem.format(pkg=pkg)}"
    assert validate_package(pkg) == [str(err.value)]


@pytest.mark.parametrize(
    "table, header, problem",
    [
        ("observations.csv", "observationID,deploymentID\n", "no 'eventStart' column (required by the Camtrap DP observations table)"),
        ("media.csv", "mediaID,mediaID,deploymentID\n", "column 'mediaID' appears twice in the header"),
        ("deployments.csv", "", "empty file (no header)"),
    ],
)  # fmt: skip
def test_unreadable_tables(pkg, table, header, problem):
    (pkg / table).write_text(header)
    with pytest.raises(IngestError) as err:
        read_camtrapdp(pkg)
    assert str(err.value) == f"{pkg / table}: {problem}"
    assert f"{pkg / table}: {problem}" in validate_package(pkg)


# ----------------------------------------------------------------------------------------------------------------
# bad rows: reported skips naming the file and row
def _package_with(tmp_path, edit_obs=None, media_edit=None):
    rows = [dict(r) for r in OBSERVATIONS[:4]]
    if edit_obs:
        edit_obs(rows)
    return make_package(tmp_path.resolve() / "bad", rows, media_edit)


def _skips_for(root):
    annotations, skips = read_camtrapdp(root, species_map=SPECIES)
    return annotations, [(s.row, s.reason, s.message) for s in skips]


@pytest.mark.parametrize("media_id", ["m9", "M1", "m1 "])
def test_rows_referring_to_missing_media(tmp_path, media_id):
    root = _package_with(tmp_path, lambda rows: rows[1].update(mediaID=media_id))
    annotations, skips = _skips_for(root)
    problem = (
        f"{root}/observations.csv line 3: mediaID {media_id!r} is not a media.mediaID in {root}/media.csv"
    )
    assert skips == [("line 3", MISSING, f"{problem}: skipped")]
    assert [a.annotation_id for a in annotations] == ["o1", "o3", "o4"]
    assert problem in validate_package(root)


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("bboxX", "1.2", "bboxX 1.2 is above the maximum 1"),
        ("bboxY", "-0.1", "bboxY -0.1 is below the minimum 0"),
        ("bboxWidth", "0", "bboxWidth 0 is below the minimum 1e-15"),
        ("bboxHeight", "1.5", "bboxHeight 1.5 is above the maximum 1"),
        ("bboxX", "left", "bboxX 'left' is not a number"),
    ],
)
def test_out_of_range_bbox(tmp_path, field, value, problem):
    root = _package_with(tmp_path, lambda rows: rows[0].update({field: value}))
    annotations, skips = _skips_for(root)
    line = f"{root}/observations.csv line 2: {problem}"
    assert skips == [("line 2", BAD_BOX, f"{line}: skipped")]
    assert [a.annotation_id for a in annotations] == ["o2", "o3", "o4"]
    assert validate_package(root) == [line]


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"bboxHeight": ""}, "bbox has bboxX, bboxY, bboxWidth but no bboxHeight"),
        ({"bboxX": "", "bboxY": ""}, "bbox has bboxWidth, bboxHeight but no bboxX, bboxY"),
        ({"bboxX": "", "bboxY": "", "bboxWidth": "", "bboxHeight": ""}, "no bbox, and its media has 2 animal observations (lines 2, 3)"),
    ],
)  # fmt: skip
def test_partial_or_ambiguous_bbox(tmp_path, fields, problem):
    root = _package_with(tmp_path, lambda rows: rows[0].update(fields))
    _, skips = _skips_for(root)
    assert skips == [("line 2", BAD_BOX, f"{root}/observations.csv line 2: {problem}: skipped")]


DT_HINT = "is not a date-time (YYYY-MM-DDThh:mm:ssZ or YYYY-MM-DDThh:mm:ss±hh:mm)"


@pytest.mark.parametrize(
    "value", ["2026-05-02 06:00:00Z", "2026-05-02T06:00:00", "02/05/2026", "2026-13-02T06:00:00Z"]
)
def test_bad_datetime(tmp_path, value):
    root = _package_with(tmp_path, lambda rows: rows[2].update(eventStart=value))
    annotations, skips = _skips_for(root)
    line = f"{root}/observations.csv line 4: eventStart {value!r} {DT_HINT}"
    assert skips == [("line 4", MALFORMED, f"{line}: skipped")]
    assert [a.annotation_id for a in annotations] == ["o1", "o2", "o4"]
    assert validate_package(root) == [line]


@pytest.mark.parametrize("value", ["yesterday", "2026-05-02", "2026-05-02T06:00:00+2"])
def test_bad_media_timestamp_skips_its_observations(tmp_path, value):
    root = _package_with(tmp_path, media_edit=lambda media: media[0].update(timestamp=value))
    _, skips = _skips_for(root)
    media_problem = f"{root}/media.csv line 2: timestamp {value!r} {DT_HINT}"
    assert skips == [
        (
            f"line {n}",
            MALFORMED,
            f"{root}/observations.csv line {n}: mediaID 'm1' is unusable ({media_problem}): skipped",
        )
        for n in (2, 3)
    ]
    assert validate_package(root) == [media_problem]


@pytest.mark.parametrize("pairs", [[(0, 1)], [(0, 3)], [(1, 2)]])
def test_duplicate_observation_id(tmp_path, pairs):
    def edit(rows):
        for a, b in pairs:
            rows[b]["observationID"] = rows[a]["observationID"]

    root = _package_with(tmp_path, edit)
    annotations, skips = _skips_for(root)
    (a, b), obs = pairs[0], f"{root}/observations.csv"
    oid = OBSERVATIONS[a]["observationID"]
    message = f"{obs} lines {a + 2} and {b + 2} share observationID {oid!r}"
    assert skips == [(f"line {n + 2}", DUPLICATE, f"{message}: skipped") for n in (a, b)]
    assert len(annotations) == 2
    assert validate_package(root) == [message]


def _symlink_out(media, tmp_path):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(turned_jpeg(1, (32, 32)))
    link = tmp_path.resolve() / "bad" / "media" / "link.jpg"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    media[0]["filePath"] = "media/link.jpg"


@pytest.mark.parametrize(
    "file_path, reason, problem",
    [
        ("../outside.jpg", OUTSIDE, "resolves outside the package folder {root}: not read"),
        ("{tmp}/outside.jpg", OUTSIDE, "resolves outside the package folder {root}: not read"),
        ("media/../../outside.jpg", OUTSIDE, "resolves outside the package folder {root}: not read"),
        ("LINK", OUTSIDE, "resolves outside the package folder {root}: not read"),
        ("file:///etc/passwd", OUTSIDE, "is a URL: remote photos are not read"),
        ("media/d1/none.jpg", MISSING, "does not exist: skipped"),
    ],
)
def test_paths_outside_the_package(tmp_path, monkeypatch, file_path, reason, problem):
    tmp = tmp_path.resolve()
    (tmp / "outside.jpg").write_bytes(turned_jpeg(1, (32, 32)))
    path = file_path.format(tmp=tmp)

    def edit(media):
        if file_path == "LINK":
            _symlink_out(media, tmp)
        else:
            media[0]["filePath"] = path

    opened = []
    real = ctdp.read_photo
    monkeypatch.setattr(ctdp, "read_photo", lambda p, **kw: opened.append(Path(p)) or real(p, **kw))
    root = _package_with(tmp_path, media_edit=edit)
    annotations, skips = _skips_for(root)
    shown = "media/link.jpg" if file_path == "LINK" else path
    what = f"photo {shown!r} (mediaID 'm1', {root}/media.csv line 2) {problem.format(root=root)}"
    assert skips == [(f"line {n}", reason, f"{root}/observations.csv line {n}: {what}") for n in (2, 3)]
    assert [a.annotation_id for a in annotations] == ["o3", "o4"]
    assert all(p.resolve().is_relative_to(root) for p in opened) and len(opened) == 2


def test_deployment_mismatch_is_reported(tmp_path):
    root = _package_with(tmp_path, lambda rows: rows[0].update(deploymentID="d2"))
    _, skips = _skips_for(root)
    message = (
        f"{root}/observations.csv line 2: deploymentID 'd2', but its media ({root}/media.csv line 2) belongs to "
        "deployment 'd1': skipped"
    )
    assert skips == [("line 2", MALFORMED, message)]


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("profile", "https://raw.githubusercontent.com/tdwg/camtrap-dp/0.6/camtrap-dp-profile.json",
         "profile 'https://raw.githubusercontent.com/tdwg/camtrap-dp/0.6/camtrap-dp-profile.json' is not Camtrap DP 1.0/1.0.1/1.0.2"),
        ("temporal", {"start": "May", "end": "2026-05-31"}, "temporal.start 'May' is not a date (YYYY-MM-DD)"),
        ("project", {"title": "x", "samplingDesign": "random", "captureMethod": ["activityDetection"],
                     "individualAnimals": True, "observationLevel": ["media"]},
         "project.samplingDesign 'random' is not one of simpleRandom, systematicRandom, clusteredRandom, experimental, targeted, opportunistic"),
        ("spatial", None, "no 'spatial' (required by the Camtrap DP profile)"),
    ],
)  # fmt: skip
def test_descriptor_problems(tmp_path, key, value, problem):
    descriptor = _descriptor()
    if value is None:
        descriptor.pop(key)
    else:
        descriptor[key] = value
    root = make_package(tmp_path / "p", descriptor=descriptor)
    assert validate_package(root) == [f"{root / 'datapackage.json'}: {problem}"]
    assert len(read_camtrapdp(root)[0]) == 4  # the reader needs only the tables


@pytest.mark.parametrize(
    "options, message",
    [
        ({"media": "zip"}, "media must be one of copy, link, none, got 'zip'"),
        ({"utc_offset": "CAT"}, "utc_offset must be Z or ±hh:mm (e.g. +02:00), got 'CAT'"),
        ({"utc_offset": "+2"}, "utc_offset must be Z or ±hh:mm (e.g. +02:00), got '+2'"),
        ({"sensitive": {"nyala": 0}}, "sensitive: the grid of each species must be degrees in (0, 180], got {'nyala': 0}"),
    ],
)  # fmt: skip
def test_write_option_errors(pkg, tmp_path, options, message):
    with pytest.raises(CamtrapDPError) as err:
        write_camtrapdp(tmp_path / "out", _unlabelled(pkg), ASSIGNMENTS, **options)
    assert str(err.value) == message
    assert not (tmp_path / "out").exists()


def test_write_rotated_box_as_its_upright_envelope_and_relative_photos(pkg, tmp_path):
    annotations = _unlabelled(pkg)[:1]
    annotations[0].theta = 1.5707963267948966  # a quarter turn: 48 x 24 becomes 24 x 48, clipped at the top
    annotations[0].photo = PHOTOS["m1"][1]  # relative to photo_root
    assert write_camtrapdp(tmp_path / "out", annotations, ASSIGNMENTS, photo_root=pkg, media="link") == []
    (back,), _ = read_camtrapdp(tmp_path / "out")
    assert back.box == pytest.approx([36.0, 0.0, 24.0, 44.0], abs=1e-3)
    assert os.path.samefile(back.photo, pkg / PHOTOS["m1"][1])  # hard-linked, not copied


def test_write_from_source_coarsens_sensitive_deployments(pkg, tmp_path):
    annotations, _ = read_camtrapdp(pkg, species_map={**SPECIES, "Panthera leo": "lion"})
    out = tmp_path / "out"
    assert write_camtrapdp(out, annotations, ASSIGNMENTS, source_package=pkg, sensitive={"lion": 0.1}) == []
    rows = {r["deploymentID"]: r for r in csv.DictReader(open(out / "deployments.csv", encoding="utf-8"))}
    assert [(r["latitude"], r["longitude"], r["coordinateUncertainty"]) for r in rows.values()] == [
        ("-24.5", "31.25", ""), ("-24.625", "31.5", ""), ("-24.75", "31.75", "7872"),
    ]  # fmt: skip
    assert json.loads((out / "datapackage.json").read_text())["coordinatePrecision"] == 0.1
    assert validate_package(out) == []
