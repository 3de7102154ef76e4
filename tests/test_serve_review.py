"""The review queue through real HTTP (uvicorn on 127.0.0.1, httpx): batches of photos and zips (MegaDetector,
Camtrap DP) become queue items with candidates; reviewers decide same / new / unsure / not an animal, stale and
double submissions are refused (409) with nothing filed twice, undo restores the catalogue (store and index), and
discovery's groups are accepted, split and merged. SQLite and PostgreSQL."""

import io
import json
import threading
import zipfile

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
sa = pytest.importorskip("sqlalchemy")

from animal_reid.serve.app import create_app  # noqa: E402
from animal_reid.serve.service import Service  # noqa: E402
from animal_reid.testing.images import turned_jpeg  # noqa: E402
from animal_reid.testing.serve import photo, serve_in_thread, tiny_model  # noqa: E402

ANA = {"Authorization": "Bearer ana-token-0123456789"}
BO = {"Authorization": "Bearer bo-token-0123456789ab"}
REVIEWERS = "Ana: ana-token-0123456789\nBo: bo-token-0123456789ab\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(params=["sqlite", "postgresql"])
def catalogue_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogue.db'}"
    base = request.getfixturevalue("postgres_url")
    db = f"q{abs(hash(str(tmp_path))) % 10**9}"
    with sa.create_engine(base, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {db}"))
    return base.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture
def client(model_dir, catalogue_url, tmp_path):
    """(httpx client, service) on a fresh catalogue; group threshold 0.95 (the tiny model's unrelated photos
    score up to ~0.92, the same pattern saved as PNG and JPEG ~0.99)."""
    reviewers = tmp_path / "reviewers.txt"
    reviewers.write_text(REVIEWERS)
    reviewers.chmod(0o600)
    service = Service.from_pretrained(model_dir, catalogue_url, photo_dir=tmp_path / "photos", reviewers=reviewers,
                                      engine="torch", poll_s=None)  # fmt: skip
    app = create_app(service)
    app.state.review_queue.group_threshold = 0.95
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=60) as c:
        yield c, service
    service.close()


def _png(name, seed):
    return ("files", (name, photo(seed), "image/png"))


def _jpg(name, seed):
    return ("files", (name, photo(seed, fmt="JPEG"), "image/jpeg"))


def _batch(c, files, species="lion", headers=ANA, **data):
    r = c.post("/v1/batches", files=files, data={"species": species, **data}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def _items(c, **params):
    r = c.get("/v1/queue", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _by_file(items):
    return {it["photos"][0]["file"]: it for it in items}


def _decide(c, item, headers=ANA, **body):
    return c.post(
        f"/v1/queue/{item['id']}/decide", json={"version": item["version"], **body}, headers=headers
    )


def _individual(c, individual_id):
    return c.get(f"/v1/individuals/{individual_id}")


def _agrees(c, sightings):
    stats = c.get("/v1/stats").json()
    assert stats["index_agrees_with_store"] and stats["sightings_in_store"] == sightings, stats


def _asha(c) -> int:
    """Asha, a lion with one sighting (photo 1 as PNG); her id."""
    r = c.post("/v1/sightings", files={"file": ("asha.png", photo(1), "image/png")},
               data={"name": "Asha", "species": "lion"}, headers=ANA)  # fmt: skip
    assert r.status_code == 201, r.text
    return r.json()["individual_id"]


def _lion_batch(c) -> tuple[dict, dict]:
    """A batch by Ana at the North pan: p1.jpg (Asha's photo as a JPEG), p2.png, p3.png and a text file;
    returns (the batch, {file: item})."""
    files = [
        _jpg("p1.jpg", 1),
        _png("p2.png", 2),
        _png("p3.png", 3),
        ("files", ("n.txt", b"x", "text/plain")),
    ]
    batch = _batch(c, files, species="Lion", observer="Ana", site="North pan")
    return batch, _by_file(_items(c, species="lion")["items"])


def test_batch_items_show_candidates_best_photo_first(client):
    c, _ = client
    asha = _asha(c)
    batch, items = _lion_batch(c)
    shown = (batch["species"], batch["n_photos"], batch["n_items"], batch["created_by"])
    assert shown == ("lion", 3, 3, "Ana")
    assert batch["skipped"] == [{"file": "n.txt", "reason": "n.txt: not a photo (by its name): skipped"}]
    assert c.get("/v1/batches").json()["batches"][0]["id"] == batch["id"]
    assert _items(c)["counts"] == {"waiting": 3, "unsure": 0, "decided": 0, "rejected": 0}
    p1 = items["p1.jpg"]
    top = p1["candidates"][0]
    assert (top["individual_id"], top["name"]) == (asha, "Asha") and top["score"] > 0.95
    best = top["photos"][0]
    assert best["query_photo_id"] == p1["photos"][0]["id"] and best["score"] == top["score"]
    assert c.get(best["url"]).content == photo(1)  # the catalogue photo it matched
    assert c.get(p1["photos"][0]["url"]).content == photo(1, fmt="JPEG")  # the queue photo itself
    assert p1["best_score"] == top["score"] and p1["band"] is None and p1["band_reason"]
    assert (p1["site"], p1["observer"], p1["status"], p1["decision"]) == ("North pan", "Ana", "waiting", None)
    assert c.get("/v1/queue/999").json()["detail"] == "item 999 is not in the review queue"
    assert c.get("/v1/queue", params={"status": "lost"}).status_code == 422


def test_decide_same_new_unsure_not_animal_stale_and_double(client):
    c, _ = client
    asha = _asha(c)
    _, items = _lion_batch(c)
    p1, p2, p3 = items["p1.jpg"], items["p2.png"], items["p3.png"]
    done = _decide(c, p1, kind="same", individual_id=asha).json()
    assert done["status"] == "decided" and done["version"] == p1["version"] + 1 and done["candidates"] == []
    decision = done["decision"]
    assert (decision["kind"], decision["individual_name"], decision["by"]) == ("same", "Asha", "Ana")
    sighting = c.get(f"/v1/sightings/{decision['sighting_ids'][0]}").json()
    assert (sighting["site"], sighting["observer"], sighting["created_by"]) == ("North pan", "Ana", "Ana")
    assert sighting["encounter_id"] == decision["encounter_id"] is not None
    again = _decide(c, p1, headers=BO, kind="same", individual_id=asha)  # a double click, or Bo late
    assert again.status_code == 409
    assert again.json()["detail"] == f"item {p1['id']} was already decided by Ana (same as Asha)"
    assert _individual(c, asha).json()["n_sightings"] == 2  # filed once

    assert _decide(c, p2, headers=BO, kind="unsure").json()["status"] == "unsure"
    stale = _decide(c, p2, kind="new", name="Kito")  # Ana's page still shows the version before Bo's skip
    assert (
        stale.status_code == 409
        and "changed since you loaded it (by Bo, now unsure" in stale.json()["detail"]
    )
    p2 = c.get(f"/v1/queue/{p2['id']}").json()
    taken = _decide(c, p2, kind="new", name=" asha ").json()["detail"]
    assert taken == f"there is already a lion named Asha (individual {asha})"
    kito = _decide(c, p2, kind="new", name="Kito").json()["decision"]
    assert kito["created_individual"] and _individual(c, kito["individual_id"]).json()["name"] == "Kito"
    assert _decide(c, p3, kind="not_animal").json()["status"] == "rejected"
    assert _items(c, status="rejected")["items"][0]["id"] == p3["id"]
    assert _items(c, status="all")["counts"] == {"waiting": 0, "unsure": 0, "decided": 2, "rejected": 1}
    _agrees(c, 3)
    assert c.post(f"/v1/queue/{p3['id']}/decide", json={"kind": "unsure", "version": 9}).status_code == 401
    missing = _decide(c, c.get(f"/v1/queue/{p3['id']}").json(), kind="same")
    assert missing.status_code == 422
    assert missing.json()["detail"] == "'same' needs the individual_id of the animal it is"


def test_undo_restores_the_catalogue(client):
    c, _ = client
    asha = _asha(c)
    _, items = _lion_batch(c)
    p1, p2, p3 = items["p1.jpg"], items["p2.png"], items["p3.png"]
    encounter = _decide(c, p1, kind="same", individual_id=asha).json()["decision"]["encounter_id"]
    assert c.get(f"/v1/encounters/{encounter}").json()["sighting_ids"]
    kito = _decide(c, p2, headers=BO, kind="new", name="Kito").json()["decision"]["individual_id"]
    _decide(c, p3, kind="not_animal")
    _agrees(c, 3)
    assert c.post(f"/v1/queue/{p2['id']}/undo", headers=BO).json()["status"] == "waiting"
    assert _individual(c, kito).status_code == 404  # made by the decision, empty again: deleted
    undone = c.post(f"/v1/queue/{p1['id']}/undo", headers=ANA).json()
    assert undone["decision"] is None and undone["photos"][0]["sighting_id"] is None and undone["candidates"]
    assert _individual(c, asha).json()["n_sightings"] == 1
    assert c.get(f"/v1/encounters/{encounter}").json() == {
        "detail": f"encounter {encounter} is not in the catalogue"
    }  # the encounter the decision made, empty again: deleted
    waiting = c.post(f"/v1/queue/{p1['id']}/undo", headers=ANA)
    assert waiting.status_code == 409
    assert waiting.json()["detail"] == f"item {p1['id']} has no decision to undo (it is waiting)"
    assert c.post(f"/v1/queue/{p3['id']}/undo", headers=ANA).json()["status"] == "waiting"
    _agrees(c, 1)
    assert _items(c)["counts"]["waiting"] == 3
    changes = c.get("/v1/changes", params={"limit": 500}).json()["changes"]
    kinds = [(ch["kind"], ch["actor"]) for ch in changes]
    assert ("review.batch", "Ana") in kinds and kinds.count(("review.decide", "Ana")) == 2
    assert ("review.decide", "Bo") in kinds and kinds.count(("review.undo", "Ana")) == 2
    assert ("review.undo", "Bo") in kinds and ("individual.delete", "Bo") in kinds
    deleted = [ch["other_id"] for ch in changes if ch["kind"] == "encounter.delete"]
    assert encounter in deleted and len(deleted) == 2  # Kito's encounter too; p3 (not an animal) made none
    again = _decide(c, undone, kind="same", individual_id=asha).json()  # decided again after the undo
    assert again["status"] == "decided" and _individual(c, asha).json()["n_sightings"] == 2


def test_a_photo_already_filed_is_not_filed_twice(client):
    c, _ = client
    asha = _asha(c)
    zed = c.post("/v1/individuals", json={"name": "Zed", "species": "zebra"}, headers=ANA).json()["id"]
    _batch(c, [_png("same.png", 1), _png("p5.png", 5)])  # same.png: the very photo of Asha's sighting
    items = _by_file(_items(c)["items"])
    same, p5 = items["same.png"], items["p5.png"]
    assert same["candidates"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    wrong = _decide(c, same, kind="same", individual_id=zed)
    assert (wrong.status_code, wrong.json()["detail"]) == (
        409,
        f"individual {zed} (Zed) is a zebra, item {same['id']} a lion",
    )
    assert _decide(c, same, kind="same", individual_id=999).status_code == 404
    done = _decide(c, same, kind="same", individual_id=asha).json()["decision"]
    assert done["sighting_ids"] == [] and done["skipped"] == [
        "same.png: already a sighting of Asha (sighting 1)"
    ]
    assert _individual(c, asha).json()["n_sightings"] == 1
    bo = _decide(c, p5, kind="new", name="Bo").json()["decision"]  # another photo: filed
    assert len(bo["sighting_ids"]) == 1
    _agrees(c, 2)


def test_concurrent_double_submit_files_once(client):
    c, _ = client
    asha = c.post("/v1/sightings", files={"file": ("asha.png", photo(1), "image/png")},
                  data={"name": "Asha", "species": "lion"}, headers=ANA).json()["individual_id"]  # fmt: skip
    _batch(c, [_jpg("p1.jpg", 1), _png("p4.png", 4)])
    item = _by_file(_items(c)["items"])["p1.jpg"]
    answers, start = [], threading.Barrier(4)

    def submit(headers, body):
        start.wait()
        answers.append(_decide(c, item, headers=headers, **body).status_code)

    bodies = [(ANA, {"kind": "same", "individual_id": asha}), (BO, {"kind": "same", "individual_id": asha}),
              (ANA, {"kind": "new", "name": "Other"}), (BO, {"kind": "not_animal"})]  # fmt: skip
    threads = [threading.Thread(target=submit, args=b) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [200, 409, 409, 409]
    shown = c.get(f"/v1/queue/{item['id']}").json()
    n = _individual(c, asha).json()["n_sightings"]
    filed = len((shown["decision"] or {}).get("sighting_ids", []))
    assert n == 1 + (filed if shown["decision"]["kind"] == "same" else 0)
    total = c.get("/v1/individuals", params={"species": "lion"}).json()["total"]
    assert total == (2 if shown["decision"]["kind"] == "new" else 1)
    _agrees(c, 1 + filed)


def _zip(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


def _md(images) -> bytes:
    return json.dumps(
        {"info": {"format_version": "1.4"}, "detection_categories": {"1": "animal"}, "images": images}
    ).encode()


def test_zip_with_megadetector_and_unsafe_zips(client):
    c, _ = client
    card = turned_jpeg(1, (96, 64), seed=5, exif={0x0110: "HC600", 0x8769: {0x9003: "2026:05:01 06:00:00"}})
    later = turned_jpeg(1, (96, 64), seed=6, exif={0x0110: "HC600", 0x8769: {0x9003: "2026:05:01 06:05:00"}})
    md = _md([{"file": "a.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": [0.0, 0.0, 0.5, 1.0]},
                                               {"category": "1", "conf": 0.9, "bbox": [0.5, 0.0, 0.5, 1.0]}]},
              {"file": "b.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": [0.25, 0.25, 0.5, 0.5]}]}])  # fmt: skip
    data = _zip([("card/a.jpg", card), ("card/b.jpg", later), ("card/md.json", md)])
    batch = _batch(c, [("files", ("card.zip", data, "application/zip"))], species="nyala")
    assert (batch["source"], batch["n_photos"], batch["n_items"]) == ("megadetector", 2, 2)
    assert batch["skipped"] == []
    items = _items(c, batch=batch["id"])["items"]
    boxes = sorted(p["box"] for it in items for p in it["photos"])
    assert boxes == [[0.0, 0.0, 48.0, 64.0], [24.0, 16.0, 48.0, 32.0], [48.0, 0.0, 48.0, 64.0]]
    assert all(
        len({p["file"] for p in it["photos"]}) == len(it["photos"]) for it in items
    )  # two animals apart
    assert {it["started_at"] for it in items} == {"2026-05-01T06:00:00"}
    for name, entry in [("evil", "../evil.jpg"), ("abs", "/etc/evil.jpg")]:
        r = c.post("/v1/batches", files={"files": (f"{name}.zip", _zip([(entry, card)]), "application/zip")},
                   data={"species": "nyala"}, headers=ANA)  # fmt: skip
        assert r.status_code == 422 and r.json()["detail"].startswith(f"{name}.zip: entry {entry!r} ")
    r = c.post("/v1/batches", files=[_png("a.png", 1), ("files", ("b.zip", data, "application/zip"))],
               data={"species": "nyala"}, headers=ANA)  # fmt: skip
    assert r.json()["detail"] == "send either photos or one .zip file, not both or several zips"
    assert len(c.get("/v1/batches").json()["batches"]) == 1  # nothing made by the refused uploads
    assert c.post("/v1/batches", files=[_png("a.png", 1)], data={"species": "nyala"}).status_code == 401


def test_camtrap_dp_zip_files_its_metadata(client, tmp_path):
    from test_season_camtrapdp import OBSERVATIONS, make_package

    c, _ = client
    pkg = make_package(tmp_path / "pkg", observations=[o for o in OBSERVATIONS if o["observationID"] != "o4"])
    data = _zip(
        [(p.relative_to(pkg).as_posix(), p.read_bytes()) for p in sorted(pkg.rglob("*")) if p.is_file()]
    )
    batch = _batch(c, [("files", ("season.zip", data, "application/zip"))], species="nyala")
    assert (batch["source"], batch["n_items"]) == ("camtrapdp", 3)  # e1's two animals, e2
    item = next(
        it
        for it in _items(c)["items"]
        if it["site"] == "North pan" and it["photos"][0]["viewpoint"] == "left"
    )
    assert (item["lat"], item["lon"], item["started_at"]) == (-24.5, 31.25, "2026-05-02T06:00:00Z")
    done = _decide(c, item, kind="new", name="NY-01").json()
    s = c.get(f"/v1/sightings/{done['decision']['sighting_ids'][0]}").json()
    place = ("North pan", -24.5, 31.25, "left", "limping")
    assert (s["site"], s["lat"], s["lon"], s["viewpoint"], s["notes"]) == place
    assert s["taken_at"].startswith("2026-05-02T06:00:00")
    assert c.get(f"/v1/encounters/{s['encounter_id']}").json()["observer"] == "Ann Ranger"


def test_groups_accept_split_merge(client):
    c, _ = client
    files = [
        _png("a1.png", 10),
        _jpg("a2.jpg", 10),
        _png("b1.png", 11),
        _jpg("b2.jpg", 11),
        _png("c.png", 12),
    ]
    batch = _batch(c, files, species="zebra")  # no zebra in the catalogue: every item is a proposed new one
    items = _by_file(_items(c, species="zebra")["items"])
    assert {it["band"] for it in items.values()} == {"new"}
    groups = c.get("/v1/groups", params={"batch": batch["id"]}).json()["groups"]
    members = sorted(
        sorted(items[f]["id"] for f in names)
        for names in (("a1.png", "a2.jpg"), ("b1.png", "b2.jpg"), ("c.png",))
    )
    assert sorted(g["items"] for g in groups) == members and {g["status"] for g in groups} == {"proposed"}
    group_of = {it_id: g for g in groups for it_id in g["items"]}
    a, b = group_of[items["a1.png"]["id"]], group_of[items["b1.png"]["id"]]

    accepted = c.post(f"/v1/groups/{a['id']}/accept", json={"name": "Zed"}, headers=ANA).json()
    assert accepted["status"] == "accepted" and accepted["open_items"] == []
    zed = _individual(c, accepted["individual_id"]).json()
    assert (zed["name"], zed["n_sightings"]) == ("Zed", 2)
    again = c.post(f"/v1/groups/{a['id']}/accept", json={"name": "Zed2"}, headers=BO)
    assert again.status_code == 409 and again.json()["detail"].startswith(
        f"group {a['id']} was already accepted by Ana"
    )

    old, new = c.post(
        f"/v1/groups/{b['id']}/split", json={"items": [items["b2.jpg"]["id"]]}, headers=BO
    ).json()["groups"]
    assert (old["items"], new["items"]) == ([items["b1.png"]["id"]], [items["b2.jpg"]["id"]])
    assert c.get(f"/v1/queue/{items['b2.jpg']['id']}").json()["group_id"] == new["id"]
    bad = c.post(f"/v1/groups/{b['id']}/split", json={"items": [items["c.png"]["id"]]}, headers=BO)
    assert bad.status_code == 422 and "are not in group" in bad.json()["detail"]
    merged = c.post("/v1/groups/merge", json={"groups": [b["id"], new["id"]]}, headers=BO).json()
    assert merged["items"] == sorted([items["b1.png"]["id"], items["b2.jpg"]["id"]])
    assert c.get(f"/v1/groups/{new['id']}").json()["status"] == "merged"
    dup = c.post(f"/v1/groups/{b['id']}/accept", json={"name": "zed"}, headers=BO)
    assert dup.status_code == 409 and "already a zebra named Zed" in dup.json()["detail"]
    assert (
        c.get(f"/v1/groups/{b['id']}").json()["status"] == "proposed"
    )  # the refused accept left it as it was
    yara = c.post(f"/v1/groups/{b['id']}/accept", json={"name": "Yara"}, headers=BO).json()
    assert _individual(c, yara["individual_id"]).json()["n_sightings"] == 2
    first = c.get(f"/v1/queue/{items['a1.png']['id']}").json()
    assert c.post(f"/v1/queue/{first['id']}/undo", headers=ANA).status_code == 200
    assert _individual(c, zed["id"]).json()["n_sightings"] == 1  # kept: the group's other item is still Zed
    _agrees(c, 3)


def test_migration_0003_goes_up_and_down(tmp_path):
    from alembic import command
    from alembic.config import Config

    from animal_reid.serve.store import MIGRATIONS, Catalogue

    cat = Catalogue(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "photos")
    cat.migrate()
    tables = set(sa.inspect(cat.engine).get_table_names())
    assert {
        "review_batches",
        "queue_items",
        "queue_photos",
        "review_groups",
    } <= tables and cat.revision() == "0003"
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with cat.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    assert not {"queue_items", "review_batches"} & set(sa.inspect(cat.engine).get_table_names())
    assert cat.revision() == "0002"
    cat.close()
