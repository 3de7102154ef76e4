"""The re-ID service through real HTTP (uvicorn on 127.0.0.1, httpx): embed, identify, confirm, merge, delete,
restart persistence on SQLite and PostgreSQL; bad requests; micro-batching."""

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from animal_reid.serve.app import create_app  # noqa: E402
from animal_reid.serve.reviewers import Reviewers  # noqa: E402
from animal_reid.serve.service import Limits, Service  # noqa: E402
from animal_reid.testing.serve import (  # noqa: E402
    photo,
    serve_in_thread,
    tiny_model,
)

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(params=["sqlite", "postgresql"])
def catalogue_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogue.db'}"
    import sqlalchemy as sa

    base = request.getfixturevalue("postgres_url")
    db = f"t{abs(hash(str(tmp_path))) % 10**9}"
    with sa.create_engine(base, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {db}"))
    return base.rsplit("/", 1)[0] + f"/{db}"


def _service(model_dir, url, tmp_path, **kw):
    kw.setdefault("threshold", 0.9)
    return Service.from_pretrained(
        model_dir, url, photo_dir=tmp_path / "photos", token=TOKEN, engine="torch", **kw
    )


def _files(*seeds):
    return [("files", (f"p{s}.png", photo(s), "image/png")) for s in seeds]


def _one(seed, name=None):
    return {"file": (name or f"p{seed}.png", photo(seed), "image/png")}


def test_embed_identify_confirm_merge_delete_and_restart(model_dir, catalogue_url, tmp_path):
    service = _service(model_dir, catalogue_url, tmp_path)
    with serve_in_thread(create_app(service)) as base, httpx.Client(base_url=base, timeout=30) as c:
        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/ready").json()["ready"] is True
        r = c.post("/v1/embed", files=_files(1, 2), data={"boxes": "[[0, 0, 40, 40], null]"})
        assert r.status_code == 200, r.text
        emb = np.array(r.json()["embeddings"], np.float32)
        assert emb.shape == (2, 8) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
        ref = service.model.encode([photo(1), photo(2)], processor=service.processor,
                                   boxes=[[0, 0, 40, 40], None], engine="torch")  # fmt: skip
        assert np.allclose(emb, ref, atol=1e-5)

        a = c.post("/v1/individuals", json={"name": "Asha", "species": "lion"}, headers=AUTH).json()
        s1 = c.post("/v1/sightings", files=_one(1), data={"individual_id": a["id"]}, headers=AUTH)
        assert s1.status_code == 201, s1.text
        s2 = c.post(
            "/v1/sightings", files=_one(2), data={"name": "Bo", "species": "lion"}, headers=AUTH
        ).json()
        c.post(
            "/v1/sightings", files=_one(3), data={"individual_id": a["id"]}, headers=AUTH
        ).raise_for_status()

        r = c.post("/v1/identify", files=_one(1, "query.png"), data={"species": "lion", "top_k": 2}).json()
        top = r["candidates"][0]
        assert top["individual_id"] == a["id"] and top["name"] == "Asha" and top["score"] > 0.999
        assert r["new_individual"] is False and r["threshold"] == 0.9
        assert len(r["candidates"]) == 2 and r["candidates"][1]["individual_id"] == s2["individual_id"]
        assert c.get(top["photos"][0]["url"]).content == photo(1)

        merged = c.post(
            f"/v1/individuals/{a['id']}/merge", json={"source": s2["individual_id"]}, headers=AUTH
        )
        assert merged.status_code == 200 and merged.json()["n_sightings"] == 3
        assert c.get(f"/v1/individuals/{s2['individual_id']}").status_code == 404
        r = c.post("/v1/identify", files=_one(2), data={"species": "lion"}).json()
        assert r["candidates"][0]["individual_id"] == a["id"]  # Bo's photo now identifies Asha
        assert c.delete(f"/v1/sightings/{s1.json()['id']}", headers=AUTH).status_code == 200
        before = c.get(f"/v1/individuals/{a['id']}").json()
        stats = c.get("/v1/stats").json()
        assert stats["index_agrees_with_store"] and stats["sightings_in_store"] == 2
    service.close()

    again = _service(model_dir, catalogue_url, tmp_path)  # a fresh process state over the same store
    with serve_in_thread(create_app(again)) as base, httpx.Client(base_url=base, timeout=30) as c:
        assert c.get(f"/v1/individuals/{a['id']}").json() == before
        listed = c.get("/v1/individuals", params={"species": "lion"}).json()
        assert listed["total"] == 1 and [i["name"] for i in listed["individuals"]] == ["Asha"]
        stats = c.get("/v1/stats").json()
        assert stats["index_agrees_with_store"] and stats["sightings_in_index"] == 2
        r = c.post("/v1/identify", files=_one(3), data={"species": "lion"}).json()
        assert r["candidates"][0]["individual_id"] == a["id"] and r["candidates"][0]["score"] > 0.999
    again.close()


def _bomb_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")  # tiny file, side*side pixels once decoded
    return buf.getvalue()


def test_bad_requests_are_clear_4xx_and_the_server_keeps_serving(model_dir, tmp_path):
    limits = Limits(max_upload_bytes=200_000, max_pixels=1_000_000)
    service = _service(model_dir, f"sqlite:///{tmp_path / 'c.db'}", tmp_path, limits=limits)
    gif = io.BytesIO()
    Image.new("RGB", (40, 40)).save(gif, format="GIF")
    with serve_in_thread(create_app(service)) as base, httpx.Client(base_url=base, timeout=30) as c:
        lion = c.post("/v1/individuals", json={"name": "Asha", "species": "lion"}, headers=AUTH).json()
        c.post("/v1/individuals", json={"name": "Rex", "species": "dog"}, headers=AUTH).raise_for_status()
        c.post(
            "/v1/sightings", files=_one(1), data={"individual_id": lion["id"]}, headers=AUTH
        ).raise_for_status()

        def emb(content, name="x.png"):
            return c.post("/v1/embed", files=[("files", (name, content, "image/png"))])

        cases = {
            "non-image": (emb(b"hello, not a photo"), 415, "not an image"),
            "gif": (emb(gif.getvalue(), "x.gif"), 415, "GIF images are not accepted"),
            "truncated": (emb(photo(5, size=96)[:300]), 400, "cannot use this image"),
            "empty": (emb(b""), 400, "empty"),
            "oversized": (emb(b"\x89PNG" + b"0" * 300_000), 413, "byte limit"),
            "bomb": (emb(_bomb_png(2000)), 413, "pixel limit"),
            "whole request over the limit": (
                emb(b"\x89PNG" + b"0" * (200_000 * limits.max_files + 2**20)),
                413,
                "request body is over",
            ),
            "bad box": (c.post("/v1/embed", files=_files(1), data={"boxes": "[[1, 2, 3]]"}), 422, "boxes[0]"),
            "missing token": (
                c.post("/v1/individuals", json={"name": "X", "species": "lion"}),
                401,
                "Bearer",
            ),
            "wrong token": (
                c.post(
                    "/v1/individuals",
                    json={"name": "X", "species": "lion"},
                    headers={"Authorization": "Bearer nope"},
                ),
                403,
                "not valid",
            ),  # fmt: skip
            "wrong species": (
                c.post("/v1/identify", files=_one(1), data={"species": "zebra"}),
                404,
                "'zebra'",
            ),
            "bad species": (
                c.post("/v1/identify", files=_one(1), data={"species": "../etc"}),
                422,
                "species",
            ),
            "no file": (c.post("/v1/identify", data={"species": "lion"}), 422, "file"),
            "unknown individual": (
                c.post("/v1/sightings", files=_one(2), data={"individual_id": 999}, headers=AUTH),
                404,
                "999",
            ),
            "cross-species merge": (
                c.post(f"/v1/individuals/{lion['id']}/merge", json={"source": lion["id"] + 1}, headers=AUTH),
                409,
                "one species",
            ),  # fmt: skip
            "unknown sighting": (c.delete("/v1/sightings/12345", headers=AUTH), 404, "12345"),
            "bad photo id": (c.get("/v1/photos/..etc"), 404, "sha256"),
        }
        for what, (resp, status, text) in cases.items():
            assert resp.status_code == status, (what, resp.status_code, resp.text)
            detail = resp.json()["detail"]
            assert isinstance(detail, str) and "\n" not in detail and text in detail, (what, detail)
        assert c.get("/health").status_code == 200
        assert emb(photo(7)).status_code == 200
        assert c.get("/v1/stats").json()["index_agrees_with_store"]
    service.close()


def test_concurrent_requests_are_micro_batched(model_dir, tmp_path):
    service = _service(model_dir, f"sqlite:///{tmp_path / 'c.db'}", tmp_path, max_wait_s=0.05)
    with serve_in_thread(create_app(service)) as base, httpx.Client(base_url=base, timeout=30) as c:
        before = c.get("/v1/stats").json()["encode_batches"]
        with ThreadPoolExecutor(16) as pool:
            rows = list(
                pool.map(lambda s: c.post("/v1/embed", files=_files(s)).json()["embeddings"][0], range(16))
            )
        batches = c.get("/v1/stats").json()["encode_batches"] - before
    service.close()
    ref = service.model.encode([photo(s) for s in range(16)], processor=service.processor, engine="torch")
    assert np.allclose(np.array(rows), ref, atol=1e-5)  # each caller got its own row back
    assert batches < 16


def test_writes_are_refused_without_a_configured_token(model_dir, tmp_path):
    service = _service(model_dir, f"sqlite:///{tmp_path / 'c.db'}", tmp_path)
    service.reviewers = Reviewers()  # no reviewers file, no operator token
    with serve_in_thread(create_app(service)) as base:
        r = httpx.post(f"{base}/v1/individuals", json={"name": "X", "species": "lion"}, headers=AUTH)
    service.close()
    assert r.status_code == 403 and "ANIMAL_REID_TOKEN" in r.json()["detail"]


def test_a_gallery_threshold_is_refused_before_the_catalogue_opens(model_dir, tmp_path):
    with pytest.raises(ValueError, match="threshold 'gallery' is for `identify`"):
        _service(model_dir, f"sqlite:///{tmp_path / 'c.db'}", tmp_path, threshold="gallery")
    assert not (tmp_path / "c.db").exists()


def test_answers_read_names_and_photos_from_the_store_once_and_follow_merge_and_delete(model_dir, tmp_path):
    service = _service(model_dir, f"sqlite:///{tmp_path / 'c.db'}", tmp_path)
    reads = []
    real = service.catalogue.describe
    service.catalogue.describe = lambda i, s: reads.append((list(i), list(s))) or real(i, s)
    with serve_in_thread(create_app(service)) as base, httpx.Client(base_url=base, timeout=30) as c:
        a = c.post(
            "/v1/sightings", files=_one(1), data={"name": "Asha", "species": "lion"}, headers=AUTH
        ).json()
        b = c.post(
            "/v1/sightings", files=_one(2), data={"name": "Bo", "species": "lion"}, headers=AUTH
        ).json()
        first = c.post("/v1/identify", files=_one(1), data={"species": "lion"}).json()
        again = c.post("/v1/identify", files=_one(1), data={"species": "lion"}).json()
        assert first == again and len(reads) == 1  # the second answer came from the cache
        assert {x["name"] for x in first["candidates"]} == {"Asha", "Bo"}
        c.post(f"/v1/individuals/{a['individual_id']}/merge", json={"source": b["individual_id"]},
               headers=AUTH).raise_for_status()  # fmt: skip
        r = c.post("/v1/identify", files=_one(2), data={"species": "lion"}).json()
        assert [x["name"] for x in r["candidates"]] == ["Asha"]  # Bo's name is gone with Bo
        c.delete(f"/v1/sightings/{a['id']}", headers=AUTH).raise_for_status()
        r = c.post("/v1/identify", files=_one(1), data={"species": "lion"}).json()
        urls = [p["url"] for x in r["candidates"] for p in x["photos"]]
        assert urls == [f"/v1/photos/{b['photo']}"] and all(c.get(u).status_code == 200 for u in urls)
    service.close()
    assert b["individual_id"] not in service._names and a["id"] not in service._photos
    # the event loop's cache-only read answers None on a miss (then the route reads the store in a thread)
    assert service.describe_cached([b["individual_id"]], []) is None
    assert service.describe_cached([a["individual_id"]], [b["id"]]) == (
        {a["individual_id"]: "Asha"},
        {b["id"]: b["photo"]},
    )
