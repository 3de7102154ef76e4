"""Exports of the catalogue through the season library: every format downloads and parses (CSV one row per
sighting, COCO one annotation per sighting, a Camtrap DP package that validates, capture histories one row per
individual), an encounter's place and time fill what its sightings leave empty, and the route answers an
attachment (or one-line errors)."""

import csv
import io
import json
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

sa = pytest.importorskip("sqlalchemy")
pytest.importorskip("fastapi")

from fastapi import Depends, FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from animal_reid.season.camtrapdp_package import validate_package  # noqa: E402
from animal_reid.serve.exports import export  # noqa: E402
from animal_reid.serve.routes_admin import add_admin_routes  # noqa: E402
from animal_reid.serve.schema import NewPhoto, SightingMeta  # noqa: E402
from animal_reid.serve.store import Catalogue  # noqa: E402
from animal_reid.testing.serve import photo  # noqa: E402


@pytest.fixture
def catalogue(tmp_path):
    """Lions Asha (3 sightings on 2 days: two in one encounter that holds their place and time) and Bo (1),
    zebra Zed (1, undated and unplaced)."""
    cat = Catalogue(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "photos")
    cat.migrate()
    asha = cat.create_individual("Asha", "lion", actor="ana")["id"]
    bo = cat.create_individual("Bo", "lion", actor="ana")["id"]
    zed = cat.create_individual("Zed", "zebra", actor="ana")["id"]
    enc = cat.create_encounter(
        "lion", "ana", site="north pan", lat=-19.5, lon=23.25, started_at="2026-05-01T06:00:00"
    )
    emb = np.ones(8, np.float32)
    plan = [
        (asha, 1, None, SightingMeta(taken_at="2026-05-01T06:10:00", lat=-19.6, lon=23.3, site="north pan",
                                     viewpoint="left", observer="ana", notes="limping")),
        (asha, 2, enc["id"], None),  # place and time from its encounter
        (asha, 3, enc["id"], SightingMeta(taken_at="2026-05-09T07:00:00")),
        (bo, 4, None, SightingMeta(taken_at="2026-05-02T18:00:00", lat=-19.4, lon=23.1, site="south pan")),
        (zed, 5, None, None),
    ]  # fmt: skip
    for ind, seed, enc_id, meta in plan:
        cat.add_sighting(ind, NewPhoto(photo(seed), "PNG", 48, 48), emb, "m1", "p1", box=[4.0, 4.0, 30.0, 20.0],
                         meta=meta, encounter_id=enc_id, actor="ana")  # fmt: skip
    yield cat
    cat.close()


def test_csv_has_one_row_per_sighting(catalogue):
    out = export(catalogue, "csv")
    assert out.filename == "catalogue-all.csv" and out.media_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(out.data.decode("utf-8"))))
    assert [r["annotation_id"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r["individual"] for r in rows] == ["Asha", "Asha", "Asha", "Bo", "Zed"]
    assert {r["decision"] for r in rows} == {"known"}
    first, second = rows[0], rows[1]
    assert (first["datetime"], first["latitude"], first["site"], first["viewpoint"], first["notes"]) == (
        "2026-05-01T06:10:00", "-19.6", "north pan", "left", "limping")  # fmt: skip
    assert (second["datetime"], second["latitude"], second["site"], second["encounter"]) == (
        "2026-05-01T06:00:00", "-19.5", "north pan", "e1")  # fmt: skip
    assert all((catalogue.photo_dir / r["photo"]).is_file() for r in rows)
    assert [r["box_w"] for r in rows] == ["30"] * 5
    lions = export(catalogue, "csv", species="lion")
    assert lions.filename == "catalogue-lion.csv" and lions.data.count(b"\n") == 1 + 4


def test_coco_has_one_annotation_per_sighting(catalogue):
    out = export(catalogue, "coco")
    coco = json.loads(out.data)
    assert out.media_type == "application/json"
    assert len(coco["annotations"]) == 5 and len(coco["images"]) == 5
    assert {c["name"] for c in coco["categories"]} == {"lion", "zebra"}
    assert [a["individual_id"] for a in coco["annotations"]] == ["Asha", "Asha", "Asha", "Bo", "Zed"]
    assert all(img["width"] == 48 and img["height"] == 48 for img in coco["images"])
    assert coco["annotations"][0]["bbox"] == [4.0, 4.0, 30.0, 20.0]
    ids = {img["id"] for img in coco["images"]}
    assert all(a["image_id"] in ids for a in coco["annotations"])


def test_camtrap_dp_validates(catalogue, tmp_path):
    out = export(catalogue, "camtrapdp", photos=True)
    assert out.filename == "catalogue-all-camtrapdp.zip"
    folder = tmp_path / "package"
    with zipfile.ZipFile(io.BytesIO(out.data)) as z:
        z.extractall(folder)
    assert validate_package(folder) == []
    observations = list(csv.DictReader(open(folder / "observations.csv", encoding="utf-8")))
    assert sorted(o["individualID"] for o in observations) == ["Asha", "Asha", "Asha", "Bo"]
    assert len(list((folder / "media").iterdir())) == 4
    skipped = list(csv.DictReader(open(folder / "camtrap_dp_skipped.csv", encoding="utf-8")))
    assert [s["sighting_id"] for s in skipped] == [
        "5"
    ]  # Zed's sighting has no date: Camtrap DP media need one


def test_capture_history_has_one_row_per_individual(catalogue):
    out = export(catalogue, "capture", occasion="7D")
    with zipfile.ZipFile(io.BytesIO(out.data)) as z:
        names = set(z.namelist())
        lions = list(csv.reader(io.StringIO(z.read("capture_history_lion.csv").decode())))
        inp = z.read("capture_history_lion.inp").decode()
        excluded = list(csv.DictReader(io.StringIO(z.read("capture_history_excluded.csv").decode())))
    assert {"capture_history_zebra.csv", "capture_history_zebra.inp"} <= names
    assert lions[0] == ["individual", "2026-05-01", "2026-05-08"]
    assert lions[1:] == [["Asha", "1", "1"], ["Bo", "1", "0"]]
    assert "/* Asha */ 11 1;" in inp
    assert [(e["sighting_id"], e["reason"]) for e in excluded] == [("5", "no datetime")]


def test_export_route(catalogue):
    app = FastAPI()
    service = SimpleNamespace(catalogue=catalogue, model_id="m1", preprocessing_key="p1")
    add_admin_routes(app, service, Depends(lambda: "ana"))
    with TestClient(app) as client:
        r = client.get("/v1/export?format=csv&species=Lion")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        assert r.headers["content-disposition"] == 'attachment; filename="catalogue-lion.csv"'
        assert len(list(csv.DictReader(io.StringIO(r.text)))) == 4
        r = client.get("/v1/export?format=capture&species=lion")
        assert (
            r.headers["content-type"] == "application/zip"
            and zipfile.ZipFile(io.BytesIO(r.content)).namelist()
        )
        assert client.get("/v1/export?format=xls").status_code == 422
        r = client.get("/v1/export?format=csv&species=tiger")
        assert r.status_code == 404 and "it has: lion, zebra" in r.json()["detail"]
        r = client.get("/v1/export?format=capture&occasion=fortnight")
        assert r.status_code == 422 and r.json()["detail"].startswith("occasion 'fortnight' is not")
