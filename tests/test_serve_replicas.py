"""Several replicas on one catalogue: what one writes, the others serve without a restart.

Two services (each its own engine, index and caches, as two processes would have) on one SQLite file or one
throwaway PostgreSQL: adds, renames, metadata edits, merges, deletes of sightings and individuals, and species
edits through A (or by another tool, straight
into the database) are served by B within a generous bound; B closed, A written, B opened again has it all;
a dropped LISTEN connection is re-made; and two real `animal-reid serve` processes on PostgreSQL, one killed
with -9 while the other writes, lose no acknowledged sighting."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
sa = pytest.importorskip("sqlalchemy")

from animal_reid.serve import service as service_module  # noqa: E402
from animal_reid.serve.app import check_image, create_app  # noqa: E402
from animal_reid.serve.index import CatalogueIndex  # noqa: E402
from animal_reid.serve.service import Service  # noqa: E402
from animal_reid.testing.serve import (  # noqa: E402
    free_port,
    photo,
    serve_in_thread,
    tiny_model,
    wait_http,
)

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BOUND_S = 20.0  # generous: two cores shared with other work
POLL_S = 0.2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def _new_database(base_url: str, tmp_path) -> str:
    db = f"r{abs(hash(str(tmp_path))) % 10**9}"
    with sa.create_engine(base_url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {db}"))
    return base_url.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture(params=["sqlite", "postgresql"])
def catalogue_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogue.db'}"
    return _new_database(request.getfixturevalue("postgres_url"), tmp_path)


def _service(model_dir, url, tmp_path, **kw):
    kw.setdefault("poll_s", POLL_S)
    return Service.from_pretrained(model_dir, url, photo_dir=tmp_path / "photos", token=TOKEN, engine="torch",
                                   threshold=0.9, **kw)  # fmt: skip


def _one(seed):
    return {"file": (f"p{seed}.png", photo(seed), "image/png")}


def _until(what, check, bound_s=BOUND_S):
    """Poll ``check()`` until it is truthy; its value and the seconds it took. Fails naming ``what``."""
    start = time.monotonic()
    while True:
        value = check()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > bound_s:
            pytest.fail(f"replica B did not see {what} within {bound_s:.0f} s")
        time.sleep(0.02)


def _top(client, seed, species="lion"):
    r = client.post("/v1/identify", files=_one(seed), data={"species": species, "top_k": 5})
    return r.json()["candidates"] if r.status_code == 200 else []


def _agree(client) -> bool:
    return client.get("/v1/stats").json()["index_agrees_with_store"]


def test_adds_renames_merges_deletes_through_a_are_served_by_b(model_dir, catalogue_url, tmp_path):
    a_svc, b_svc = _service(model_dir, catalogue_url, tmp_path), _service(model_dir, catalogue_url, tmp_path)
    latency = {}
    with (
        serve_in_thread(create_app(a_svc)) as a_url,
        serve_in_thread(create_app(b_svc)) as b_url,
        httpx.Client(base_url=a_url, timeout=30) as a,
        httpx.Client(base_url=b_url, timeout=30) as b,
    ):
        # add: a new individual with a sighting
        asha = a.post("/v1/sightings", files=_one(1), data={"name": "Asha", "species": "lion"}, headers=AUTH)
        assert asha.status_code == 201, asha.text
        asha = asha.json()
        top, latency["add"] = _until("the new sighting", lambda: _top(b, 1))
        assert top[0]["individual_id"] == asha["individual_id"] and top[0]["name"] == "Asha"

        # rename, and a sighting's metadata edited, through A's routes
        r = a.patch(f"/v1/individuals/{asha['individual_id']}", json={"name": "Asha II"}, headers=AUTH)
        assert r.status_code == 200, r.text
        _, latency["rename"] = _until("the rename", lambda: _top(b, 1)[0]["name"] == "Asha II")
        a.patch(
            f"/v1/sightings/{asha['id']}", json={"notes": "left ear torn"}, headers=AUTH
        ).raise_for_status()
        assert b.get(f"/v1/sightings/{asha['id']}").json()["notes"] == "left ear torn"

        # merge: Bo's sighting is served as Asha's
        bo = a.post(
            "/v1/sightings", files=_one(2), data={"name": "Bo", "species": "lion"}, headers=AUTH
        ).json()
        _until("Bo", lambda: _top(b, 2)[0]["individual_id"] == bo["individual_id"])
        a.post(f"/v1/individuals/{asha['individual_id']}/merge", json={"source": bo["individual_id"]},
               headers=AUTH).raise_for_status()  # fmt: skip
        _, latency["merge"] = _until(
            "the merge", lambda: [c["individual_id"] for c in _top(b, 2)] == [asha["individual_id"]]
        )

        # delete: Asha's first sighting is no longer a candidate photo
        a.delete(f"/v1/sightings/{asha['id']}", headers=AUTH).raise_for_status()
        _, latency["delete"] = _until(
            "the delete",
            lambda: [p["sighting_id"] for p in _top(b, 1)[0]["photos"]] == [bo["id"]],
        )

        # delete an individual: Cleo and her sighting leave B's index and name cache
        cleo = a.post(
            "/v1/sightings", files=_one(5), data={"name": "Cleo", "species": "lion"}, headers=AUTH
        ).json()
        _until("Cleo", lambda: cleo["individual_id"] in [c["individual_id"] for c in _top(b, 5)])
        gone = a.delete(f"/v1/individuals/{cleo['individual_id']}", headers=AUTH)
        assert gone.status_code == 200 and gone.json()["sightings"] == 1, gone.text
        _, latency["delete individual"] = _until(
            "the deleted individual",
            lambda: cleo["individual_id"] not in [c["individual_id"] for c in _top(b, 5)],
        )
        assert b_svc.describe_cached([cleo["individual_id"]], []) is None  # not served from a stale cache
        assert b.get(f"/v1/individuals/{cleo['individual_id']}").status_code == 404

        # a species edit moves the individual's sightings to the other species' index
        with a_svc.catalogue.engine.begin() as conn:
            conn.execute(sa.text("UPDATE individuals SET species = 'tiger' WHERE id = :i"),
                         {"i": asha["individual_id"]})  # fmt: skip
        _until("the species edit", lambda: _top(b, 2, "tiger") and not b_svc.index.has_sightings_of("lion"))

        for client in (a, b):  # both replicas serve the store's state
            _until("index and store agreeing", lambda c=client: _agree(c))
        last = a.get("/v1/changes").json()["last_seq"]
        _until(
            "B following the change log to its end", lambda: b.get("/v1/stats").json()["follow_seq"] >= last
        )
        kinds = [c["kind"] for c in b.get("/v1/changes", params={"limit": 1000}).json()["changes"]]
        assert {"individual.update", "individual.merge", "individual.delete", "sighting.update"} <= set(kinds)
        assert a_svc.index.entries() == b_svc.index.entries() == {bo["id"]: (asha["individual_id"], "tiger")}
    a_svc.close()
    b_svc.close()
    assert max(latency.values()) < BOUND_S
    print(f"\npropagation A -> B ({catalogue_url.split(':')[0]}), seconds: "
          + ", ".join(f"{k} {v:.3f}" for k, v in latency.items()))  # fmt: skip


def test_writes_by_another_tool_are_followed(model_dir, catalogue_url, tmp_path):
    """Writes that bypass the service's engine (no NOTIFY on PostgreSQL) are found by the periodic check."""
    svc = _service(model_dir, catalogue_url, tmp_path)
    svc.open()
    try:
        rows = [
            _sighting(svc, s, individual_id=None, new_individual={"name": f"n{s}", "species": "lion"})
            for s in (1, 2, 3)
        ]
        svc.describe([r["individual_id"] for r in rows], [])  # names cached
        other = sa.create_engine(catalogue_url)  # a plain engine: psql, a script, a backup restore
        with other.begin() as conn:
            conn.execute(sa.text("UPDATE individuals SET name = 'renamed' WHERE id = :i"),
                         {"i": rows[0]["individual_id"]})  # fmt: skip
            conn.execute(sa.text("DELETE FROM sightings WHERE id = :i"), {"i": rows[1]["id"]})
            conn.execute(sa.text("UPDATE sightings SET individual_id = :t WHERE id = :i"),
                         {"t": rows[0]["individual_id"], "i": rows[2]["id"]})  # fmt: skip
        other.dispose()
        first = rows[0]["individual_id"]
        want = {rows[0]["id"]: (first, "lion"), rows[2]["id"]: (first, "lion")}
        _until("the other tool's writes", lambda: svc.index.entries() == want)
        _until("the rename", lambda: svc.describe_cached([first], []) == ({first: "renamed"}, {}))
        assert svc.stats()["index_agrees_with_store"]
    finally:
        svc.close()


def _embed(svc, seed):
    return svc.batcher.encode([photo(seed)], [None], [0.0])[0]


def _sighting(svc, seed, **kw):
    """A sighting of generated photo ``seed`` recorded through ``svc`` (as the route does, without HTTP)."""
    return svc.add_sighting(check_image(photo(seed), f"p{seed}.png", svc), _embed(svc, seed), **kw)


def test_a_replica_closed_while_a_writes_catches_up_when_opened(model_dir, catalogue_url, tmp_path):
    a_svc = _service(model_dir, catalogue_url, tmp_path)
    a_svc.open()
    b_svc = _service(model_dir, catalogue_url, tmp_path)
    b_svc.open()
    first = _sighting(a_svc, 1, individual_id=None, new_individual={"name": "Asha", "species": "lion"})
    _until("the first sighting", lambda: first["id"] in b_svc.index.entries())
    b_svc.close()  # B is down while A goes on
    rows = [_sighting(a_svc, s, individual_id=first["individual_id"]) for s in (2, 3, 4)]
    a_svc.delete_sighting(rows[0]["id"])
    b_svc = _service(model_dir, catalogue_url, tmp_path)
    b_svc.open()
    try:
        assert b_svc.index.entries() == a_svc.index.entries()
        assert set(b_svc.index.entries()) == {first["id"], rows[1]["id"], rows[2]["id"]}
        assert b_svc.stats()["index_agrees_with_store"] and a_svc.stats()["index_agrees_with_store"]
        found = b_svc.index.search(_embed(b_svc, 3), "lion", 1)
        assert found[0]["sightings"][0]["sighting_id"] == rows[1]["id"]
    finally:
        a_svc.close()
        b_svc.close()


def _looked(svc, check):
    """``svc``'s follower looks now (its thread stopped: the test decides when); what its last sync read."""
    assert svc.follower.check() and check()
    return svc.stats()["last_sync"]


def test_a_replica_follows_the_change_log_and_looks_at_everything_after_another_tool(
    model_dir, catalogue_url, tmp_path, monkeypatch
):
    """B reads only what the change rows since its seq name (one add: that sighting's embedding alone); a write
    by another tool (no change row, alone or beside logged ones), or more rows than it follows, makes it read
    every sighting."""
    a_svc = _service(model_dir, catalogue_url, tmp_path, poll_s=None)
    a_svc.open()
    rows = [
        _sighting(a_svc, s, individual_id=None, new_individual={"name": f"n{s}", "species": "lion"})
        for s in (1, 2, 3)
    ]
    b_svc = _service(model_dir, catalogue_url, tmp_path, poll_s=600)
    b_svc.open()
    b_svc.follower.stop()  # no thread (nor NOTIFY) racing the looks below
    read, embeddings = [], b_svc.catalogue.embeddings
    b_svc.catalogue.embeddings = lambda ids: read.extend(ids) or embeddings(ids)
    try:
        new = _sighting(a_svc, 4, individual_id=None, new_individual={"name": "Dida", "species": "lion"})
        last = _looked(b_svc, lambda: new["id"] in b_svc.index.entries())
        assert last == {"mode": "incremental", "changes": 2, "sightings_read": 1} and read == [new["id"]]
        assert b_svc.stats()["follow_seq"] == a_svc.catalogue.last_seq()

        other = sa.create_engine(catalogue_url)  # psql, a script: no change row, no NOTIFY
        with other.begin() as conn:
            conn.execute(sa.text("UPDATE sightings SET individual_id = :t WHERE id = :i"),
                         {"t": rows[0]["individual_id"], "i": rows[1]["id"]})  # fmt: skip
        last = _looked(b_svc, lambda: b_svc.index.entries()[rows[1]["id"]][0] == rows[0]["individual_id"])
        assert last == {"mode": "full", "changes": None, "sightings_read": 4} and read == [new["id"]]

        b_svc.describe([rows[2]["individual_id"]], [])  # cached, then renamed through A: followed
        a_svc.update_individual(rows[2]["individual_id"], "ana", name="Cleo")
        last = _looked(b_svc, lambda: b_svc.describe_cached([rows[2]["individual_id"]], []))
        assert last == {"mode": "incremental", "changes": 1, "sightings_read": 1}
        assert b_svc.describe_cached([rows[2]["individual_id"]], [])[0] == {rows[2]["individual_id"]: "Cleo"}

        # a logged write and another tool's between two looks: the digest tells, everything is read
        b_svc.describe([rows[0]["individual_id"]], [])
        a_svc.update_individual(rows[2]["individual_id"], "ana", notes="old female")
        with other.begin() as conn:
            conn.execute(
                sa.text("UPDATE individuals SET name = 'Asha' WHERE id = :i"), {"i": rows[0]["individual_id"]}
            )
        other.dispose()
        last = _looked(b_svc, lambda: b_svc.describe_cached([rows[0]["individual_id"]], []))
        assert last["mode"] == "full" and last["changes"] is None
        assert b_svc.describe_cached([rows[0]["individual_id"]], [])[0] == {rows[0]["individual_id"]: "Asha"}

        monkeypatch.setattr(service_module, "MAX_INCREMENTAL", 1)  # more rows than followed: a full look
        a_svc.delete_sighting(new["id"])
        a_svc.update_individual(rows[2]["individual_id"], "ana", notes="")
        last = _looked(b_svc, lambda: new["id"] not in b_svc.index.entries())
        assert last["mode"] == "full" and b_svc.stats()["index_agrees_with_store"]  # A has no follower
    finally:
        a_svc.close()
        b_svc.close()


def test_a_replica_with_another_model_embeds_the_others_sightings_itself(model_dir, tmp_path):
    """Replicas on two models (during an upgrade): a sighting embedded by A's model is embedded by B's from its
    photo, in memory only (writing it back would make the two take turns re-embedding)."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    other_model = tiny_model(tmp_path / "other", seed=1)
    a_svc, b_svc = _service(model_dir, url, tmp_path), _service(other_model, url, tmp_path)
    assert a_svc.model_id != b_svc.model_id
    a_svc.open()
    b_svc.open()
    try:
        row = _sighting(a_svc, 1, individual_id=None, new_individual={"name": "Asha", "species": "lion"})
        _until("A's sighting", lambda: row["id"] in b_svc.index.entries())
        hit = b_svc.index.search(_embed(b_svc, 1), "lion", 1)[0]  # B's own embedding of the photo
        assert hit["sightings"][0]["sighting_id"] == row["id"] and hit["score"] > 0.999
        assert (
            b_svc.catalogue.stale_sightings(a_svc.model_id, a_svc.preprocessing_key) == []
        )  # not written back
        assert a_svc.stats()["index_agrees_with_store"] and b_svc.stats()["index_agrees_with_store"]
    finally:
        a_svc.close()
        b_svc.close()


def test_a_dropped_listen_connection_is_made_again(model_dir, postgres_url, tmp_path, caplog):
    url = _new_database(postgres_url, tmp_path)
    a_svc = _service(model_dir, url, tmp_path)
    b_svc = _service(model_dir, url, tmp_path, poll_s=600)  # only a NOTIFY can wake B within the bound
    a_svc.open()
    b_svc.open()
    try:
        first = _sighting(a_svc, 1, individual_id=None, new_individual={"name": "Asha", "species": "lion"})
        _until("the first sighting (NOTIFY)", lambda: first["id"] in b_svc.index.entries())
        killer = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        listening = sa.text(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
        )

        def listeners() -> list[int]:
            with killer.connect() as conn:
                return list(conn.execute(listening).scalars())

        before, _ = _until("both replicas listening", lambda: len(listeners()) == 2 and listeners())
        with killer.connect() as conn:
            for pid in before:
                conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        # made again: B's next look would be in 600 s, so only a NOTIFY on the new connection can wake it
        _until("the LISTEN connections made again", lambda: len(set(listeners()) - set(before)) == 2)
        killer.dispose()
        second = _sighting(a_svc, 2, individual_id=first["individual_id"])
        _until(
            "a sighting after the LISTEN connection was dropped",
            lambda: second["id"] in b_svc.index.entries(),
        )
        assert "cannot follow other replicas' writes (retrying)" in caplog.text
    finally:
        a_svc.close()
        b_svc.close()


def test_index_apply_moves_removes_and_adds_in_one_step():
    rng = np.random.default_rng(0)
    emb = {i: rng.normal(size=4).astype(np.float32) for i in range(1, 7)}
    index = CatalogueIndex(4)
    index.apply(add=[(1, 10, "lion", emb[1]), (2, 10, "lion", emb[2]), (3, 11, "lion", emb[3]),
                     (4, 12, "dog", emb[4])])  # fmt: skip
    index.apply(remove=[2], moves={3: (10, "lion"), 4: (13, "cat")}, add=[(5, 14, "dog", emb[5])])
    assert index.entries() == {1: (10, "lion"), 3: (10, "lion"), 4: (13, "cat"), 5: (14, "dog")}
    cat = index.search(emb[4], "cat", 5)  # sighting 4 moved with its own embedding
    assert [(c["individual_id"], c["sightings"][0]["sighting_id"]) for c in cat] == [(13, 4)]
    assert [c["individual_id"] for c in index.search(emb[3], "lion", 5)][0] == 10
    assert [c["individual_id"] for c in index.search(emb[5], "dog", 5)] == [14]
    with pytest.raises(ValueError, match="sighting 9 has a 3-d embedding, the index is 4-d"):
        index.apply(add=[(9, 1, "lion", np.zeros(3, np.float32))])


def _start(model_dir, url, port, photos):
    env = {**os.environ, "ANIMAL_REID_TOKEN": TOKEN, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "animal_reid.serve.cli", "serve", "--model", str(model_dir), "--catalogue", url,
           "--photos", str(photos), "--port", str(port), "--engine", "torch", "--poll-ms", "200"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_http(f"http://127.0.0.1:{port}/ready", timeout_s=90, proc=proc)
    return proc


def _stream(base, individual_id, worker, acked, stop):
    with httpx.Client(base_url=base, timeout=10) as c:
        for i in range(10_000):
            if stop.is_set():
                return
            seed = 1000 * (worker + 1) + i
            try:
                r = c.post(
                    "/v1/sightings", files=_one(seed), data={"individual_id": individual_id}, headers=AUTH
                )
            except httpx.TransportError:
                return  # the server died mid-request: not acknowledged
            if r.status_code == 201:
                acked.append((r.json()["id"], hashlib.sha256(photo(seed)).hexdigest(), seed))


def _stop(*procs):
    for p in procs:
        if p is not None and p.poll() is None:
            p.terminate()
            p.wait(timeout=30)


def test_two_server_processes_on_postgresql_kill_9_loses_no_acknowledged_write(
    model_dir, postgres_url, tmp_path
):
    url, photos = _new_database(postgres_url, tmp_path), tmp_path / "photos"
    pa, pb = free_port(), free_port()
    a_url, b_url = f"http://127.0.0.1:{pa}", f"http://127.0.0.1:{pb}"
    a = b = None
    try:
        a, b = _start(model_dir, url, pa, photos), _start(model_dir, url, pb, photos)
        ind = httpx.post(
            f"{a_url}/v1/individuals", json={"name": "Asha", "species": "lion"}, headers=AUTH
        ).json()
        # B killed with -9 while A takes a stream of sightings; B restarted catches up
        acked, stop = [], threading.Event()
        writer = threading.Thread(target=_stream, args=(a_url, ind["id"], 0, acked, stop))
        writer.start()
        _until("a few acknowledged sightings", lambda: len(acked) >= 5)
        b.send_signal(signal.SIGKILL)
        b.wait(timeout=10)
        _until("more sightings while B is down", lambda: len(acked) >= 10)
        b = _start(model_dir, url, pb, photos)
        # A killed with -9 in the middle of the stream: B (following A) serves every acknowledged sighting
        _until("sightings while B is up again", lambda: len(acked) >= 15)
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=10)
        stop.set()
        writer.join(timeout=30)

        def served():
            got = httpx.get(f"{b_url}/v1/individuals/{ind['id']}").json()["sightings"]
            stats = httpx.get(f"{b_url}/v1/stats").json()
            stored = {s["id"]: s["photo"] for s in got}
            ok = all(stored.get(sid) == sha for sid, sha, _ in acked) and stats["index_agrees_with_store"]
            return ok and (stored, stats)

        (stored, stats), _ = _until("every acknowledged sighting", served)
        assert stats["sightings_in_index"] == len(stored) >= len(acked) >= 15
        sid, _, seed = acked[-1]  # the last acknowledged before A was killed, served by B
        best = httpx.post(f"{b_url}/v1/identify", files=_one(seed), data={"species": "lion"}).json()
        top = best["candidates"][0]
        assert top["individual_id"] == ind["id"] and top["photos"][0]["sighting_id"] == sid
    finally:
        _stop(a, b)
