"""A catalogue written by revision 0001 upgrades to 0002 with every individual, sighting and photo kept, on SQLite
and PostgreSQL; what the new rules refuse but the old catalogue holds (one photo twice under one individual, one
photo under two individuals, one name twice in a species in any case) is kept and flagged for a reviewer."""

import datetime as dt
import hashlib

import numpy as np
import pytest

sa = pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402

from animal_reid.serve.store import MIGRATIONS, Catalogue, Conflict, NewPhoto  # noqa: E402
from animal_reid.testing.serve import photo  # noqa: E402

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
INDIVIDUALS = [(1, "Asha", "lion"), (2, "ASHA ", "lion"), (3, "Bo", "lion"), (4, "Asha", "tiger")]
# (sighting, individual, photo seed): 2 repeats 1's photo under Asha, 3 under Bo
SIGHTINGS = [(1, 1, 1), (2, 1, 1), (3, 3, 1), (4, 3, 2), (5, 2, 3), (6, 4, 4)]


@pytest.fixture(params=["sqlite", "postgresql"])
def catalogue_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogue.db'}"
    base = request.getfixturevalue("postgres_url")
    db = f"m{abs(hash(str(tmp_path))) % 10**9}"
    with sa.create_engine(base, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {db}"))
    return base.rsplit("/", 1)[0] + f"/{db}"


def _alembic(cat: Catalogue, action, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with cat.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        action(cfg, revision)


def _write_0001_catalogue(cat: Catalogue) -> dict[int, str]:
    """Rows as revision 0001's service wrote them (plain SQL, ids from the database: 1, 2, ... in order), with
    their photo files; {seed: sha256}."""
    _alembic(cat, command.upgrade, "0001")
    shas = {}
    with cat.engine.begin() as conn:
        for iid, name, species in INDIVIDUALS:
            got = conn.execute(sa.text("INSERT INTO individuals (name, species, notes, created_at) "
                                       "VALUES (:n, :s, 'old notes', :t) RETURNING id"),
                               {"n": name, "s": species, "t": T0}).scalar()  # fmt: skip
            assert got == iid
        for seed in sorted({seed for *_, seed in SIGHTINGS}):
            data = photo(seed)
            shas[seed] = sha = hashlib.sha256(data).hexdigest()
            path = cat.photo_path(sha, "PNG")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            conn.execute(
                sa.text("INSERT INTO photos VALUES (:h, 'PNG', 48, 48, :n)"), {"h": sha, "n": len(data)}
            )
        for sid, iid, seed in SIGHTINGS:
            emb = np.full(8, sid, np.float32).tobytes()
            got = conn.execute(sa.text("INSERT INTO sightings (individual_id, photo_sha256, box, theta, embedding, dim,"
                                       " model_id, preprocessing_key, created_at) VALUES (:i, :h, NULL, 0, :e, 8, 'm',"
                                       " 'k', :t) RETURNING id"),
                               {"i": iid, "h": shas[seed], "e": emb, "t": T0}).scalar()  # fmt: skip
            assert got == sid
    return shas


def _rows(cat: Catalogue, sql: str) -> list[tuple]:
    with cat.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql))]


def test_a_0001_catalogue_upgrades_keeping_everything_and_flagging_duplicates(catalogue_url, tmp_path):
    cat = Catalogue(catalogue_url, tmp_path / "photos")
    shas = _write_0001_catalogue(cat)
    cat.migrate("0002")
    assert cat.revision() == "0002"

    assert _rows(cat, "SELECT id, name, species, notes FROM individuals ORDER BY id") == [
        (i, n, s, "old notes") for i, n, s in INDIVIDUALS
    ]
    kept = _rows(
        cat, "SELECT id, individual_id, photo_sha256, created_by, flag IS NULL FROM sightings ORDER BY id"
    )
    assert [(s, i, h) for s, i, h, *_ in kept] == [(s, i, shas[seed]) for s, i, seed in SIGHTINGS]
    assert {by for _, _, _, by, _ in kept} == {"unknown (before 0002)"}
    for sha in shas.values():  # every photo row and file is still there
        path, fmt = cat.find_photo(sha)
        assert fmt == "PNG" and hashlib.sha256(path.read_bytes()).hexdigest() == sha
    embeddings = cat.embeddings([s for s, *_ in SIGHTINGS])
    assert all(np.array_equal(embeddings[s], np.full(8, s, np.float32)) for s, *_ in SIGHTINGS)

    flags = {
        (f["kind"], f["individual_id"], f["sighting_id"], f["other_id"]): f["detail"]
        for f in cat.list_flags()
    }
    assert flags == {
        ("duplicate_photo", 1, 2, 1): "same photo as sighting 1 of Asha",
        ("photo_elsewhere", 3, 3, 1): "same photo as sighting 1 of Asha",
        ("duplicate_name", 2, None, 1): "another lion is also named Asha (individual 1)",
    }  # the tiger Asha is another species: not flagged
    assert dict(_rows(cat, "SELECT id, flag FROM sightings WHERE flag IS NOT NULL")) == {
        2: "same photo as sighting 1 of Asha",
        3: "same photo as sighting 1 of Asha",
    }

    # down to 0001 and up to the newest again: still nothing lost
    _alembic(cat, command.downgrade, "0001")
    assert len(_rows(cat, "SELECT id FROM sightings")) == len(SIGHTINGS)
    cat.migrate()
    assert len(cat.sighting_pairs()) == len(SIGHTINGS) and len(cat.list_flags()) == 3

    # the upgraded catalogue follows the new rules and logs from seq 1
    with pytest.raises(Conflict, match=r"already a lion named Asha \(individual 1\)"):
        cat.create_individual("asha", "lion", actor="ana")
    cleo = cat.create_individual("Cleo", "lion", actor="ana")
    assert [(c["seq"], c["kind"], c["actor"]) for c in cat.list_changes()] == [
        (1, "individual.create", "ana")
    ]
    row = cat.add_sighting(cleo["id"], NewPhoto(photo(2), "PNG", 48, 48), np.ones(8), "m", "k", actor="ana")
    assert row["flag"] == "same photo as sighting 4 of Bo"
    cat.close()
