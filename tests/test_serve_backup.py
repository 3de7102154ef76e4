"""Backup and restore of a catalogue: SQLite -> SQLite, SQLite -> PostgreSQL and PostgreSQL -> SQLite round trips
keep every row and photo and the restored catalogue takes new writes with ids that continue; a non-empty store,
an existing archive and a damaged archive are refused with one line; an archive of an older schema revision is
restored at that revision and then upgraded."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

sa = pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from animal_reid.cli import main as cli_main  # noqa: E402
from animal_reid.serve.backup import BackupError, backup, read_manifest, restore, table_rows  # noqa: E402
from animal_reid.serve.schema import NewPhoto, SightingMeta  # noqa: E402
from animal_reid.serve.store import Catalogue  # noqa: E402
from animal_reid.testing.serve import photo  # noqa: E402


def _new_database(base_url: str, name: str) -> str:
    with sa.create_engine(base_url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    return base_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def make_url(request, tmp_path):
    """``make_url(kind, name)``: a new empty SQLite file or PostgreSQL database."""

    def make(kind: str, name: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / name}.db"
        return _new_database(
            request.getfixturevalue("postgres_url"), f"b{abs(hash(str(tmp_path))) % 10**8}{name}"
        )

    return make


def _photo(seed: int) -> NewPhoto:
    return NewPhoto(photo(seed), "PNG", 48, 48)


def _fill(cat: Catalogue) -> None:
    """Two species, an encounter, metadata with non-ASCII text, a rename, a repeated photo (flagged) and a
    deleted sighting: every table of the schema gets rows."""
    cat.migrate()
    asha = cat.create_individual("Asha", "lion", notes="torn left ear", aliases=["A1"], actor="ana")
    bo = cat.create_individual("Bo", "lion", actor="ana")
    zed = cat.create_individual("Zed", "zebra", actor="ben")
    enc = cat.create_encounter(
        "lion", "ana", site="north pan", lat=-19.25, lon=23.5, started_at="2026-05-01T06:00"
    )
    rng = np.random.default_rng(0)
    plan = [(asha, enc["id"]), (asha, enc["id"]), (asha, None), (bo, None), (zed, None)]
    for k, (ind, enc_id) in enumerate(plan):
        meta = SightingMeta(taken_at=f"2026-05-0{k + 1}T06:1{k}:00+02:00", lat=-19.0 - k / 10, lon=23.0,
                            site="north pan", viewpoint="left", observer="ana", notes="près de l'eau")  # fmt: skip
        cat.add_sighting(ind["id"], _photo(k), rng.normal(size=8).astype(np.float32), "m1", "p1",
                         box=[1.5, 2.0, 30.0, 40.0] if k % 2 else None, theta=0.1 * k, meta=meta,
                         encounter_id=enc_id, actor="ana")  # fmt: skip
    cat.add_sighting(zed["id"], _photo(0), rng.normal(size=8).astype(np.float32), "m1", "p1", actor="ben")
    gone = cat.add_sighting(
        bo["id"], _photo(9), rng.normal(size=8).astype(np.float32), "m1", "p1", actor="ben"
    )
    cat.delete_sighting(gone["id"], "ben")
    cat.update_individual(bo["id"], "ana", name="Bongo")
    _queue(cat)


def _queue(cat: Catalogue) -> None:
    """A review batch with a group and an item: tables of a later revision, which backup finds by itself."""
    from sqlalchemy.orm import Session

    from animal_reid.serve.review_tables import Batch, Group, QueueItem, now

    with Session(cat.engine) as s, s.begin():
        batch = Batch(species="lion", source="photos", skipped=[{"file": "x.txt", "reason": "not a photo"}],
                      created_by="ana", created_at=now())  # fmt: skip
        s.add(batch)
        s.flush()
        group = Group(batch_id=batch.id, species="lion", proposed_name="new lion 1", created_at=now())
        s.add(group)
        s.flush()
        s.add(
            QueueItem(
                batch_id=batch.id,
                species="lion",
                group_id=group.id,
                decision={"kind": "new"},
                created_at=now(),
            )
        )


def _photos(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "source,target", [("sqlite", "sqlite"), ("sqlite", "postgresql"), ("postgresql", "sqlite")]
)
def test_round_trip_keeps_every_row_and_photo(make_url, tmp_path, source, target):
    src = Catalogue(make_url(source, "src"), tmp_path / "src.photos")
    _fill(src)
    archive = tmp_path / "catalogue.tar.gz"
    made = backup(src, archive)
    rows = table_rows(src)
    assert made.rows["individuals"] == 3 and made.rows["sightings"] == 6 and made.photos == 6
    full = {name for name, table in rows.items() if table}
    assert {"encounters", "changes", "flags", "individual_aliases", "review_batches", "queue_items"} <= full
    manifest = read_manifest(archive)
    assert manifest["revision"] == src.revision() and manifest["counts"]["photo_files"] == 6

    dst = Catalogue(make_url(target, "dst"), tmp_path / "dst.photos")
    done = restore(archive, dst)
    assert done.rows == made.rows and dst.revision() == src.revision()
    assert table_rows(dst) == rows  # every column of every row, bytes and date-times included
    assert _photos(dst.photo_dir) == _photos(src.photo_dir)
    bongo = dst.get_individual(2)
    assert bongo["name"] == "Bongo" and [s["notes"] for s in bongo["sightings"]] == ["près de l'eau"]

    # the restored catalogue takes new writes; ids and the change log continue after the restored ones
    cleo = dst.create_individual("Cleo", "lion", actor="ana")
    new = dst.add_sighting(cleo["id"], _photo(20), np.ones(8, np.float32), "m1", "p1", actor="ana")
    assert cleo["id"] == max(r["id"] for r in rows["individuals"]) + 1
    assert new["id"] == max(r["id"] for r in rows["sightings"]) + 1
    assert dst.last_seq() > max(r["seq"] for r in rows["changes"])
    src.close()
    dst.close()


def test_restore_refuses_a_store_that_is_not_empty(tmp_path):
    src = Catalogue(f"sqlite:///{tmp_path / 'a.db'}", tmp_path / "a.photos")
    _fill(src)
    backup(src, tmp_path / "a.tar.gz")
    with pytest.raises(BackupError) as err:
        restore(tmp_path / "a.tar.gz", src)
    assert "is not empty (table individuals: 3 rows)" in str(err.value) and "\n" not in str(err.value)
    assert len(src.list_individuals()) == 3


def test_backup_never_replaces_a_file(tmp_path):
    src = Catalogue(f"sqlite:///{tmp_path / 'a.db'}", tmp_path / "a.photos")
    _fill(src)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"keep me")
    with pytest.raises(BackupError, match="exists: choose another file name"):
        backup(src, archive)
    assert archive.read_bytes() == b"keep me"


def _damaged(data: bytes) -> dict[str, bytes]:
    flipped = bytearray(data)
    flipped[len(data) * 2 // 3] ^= 0x55
    return {"truncated": data[: len(data) // 2], "flipped": bytes(flipped), "not an archive": b"hello\n" * 50}


def test_a_damaged_archive_is_refused_with_one_line_and_leaves_the_store_empty(tmp_path):
    src = Catalogue(f"sqlite:///{tmp_path / 'a.db'}", tmp_path / "a.photos")
    _fill(src)
    good = tmp_path / "good.tar.gz"
    backup(src, good)
    dst = Catalogue(f"sqlite:///{tmp_path / 'b.db'}", tmp_path / "b.photos")
    for what, data in _damaged(good.read_bytes()).items():
        bad = tmp_path / f"{what.replace(' ', '_')}.tar.gz"
        bad.write_bytes(data)
        with pytest.raises(BackupError) as err:
            restore(bad, dst)
        message = str(err.value)
        assert "damaged or not a catalogue backup" in message and "\n" not in message, (what, message)
        assert dst.list_individuals() == [], what
    restore(good, dst)  # the refused restores left it empty: the good archive goes in
    assert table_rows(dst) == table_rows(src)


def test_an_archive_of_an_older_revision_is_restored_then_upgraded(tmp_path):
    """A 0001 catalogue (rows written with plain SQL, as 0001's store wrote them) restored into an empty store:
    migrated to 0001 first, then to the newest revision, which fills what 0002 added."""
    from alembic import command
    from alembic.config import Config

    from animal_reid.serve.store import MIGRATIONS

    old = Catalogue(f"sqlite:///{tmp_path / 'old.db'}", tmp_path / "old.photos")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with old.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(sa.text("INSERT INTO individuals (id, name, species, notes, created_at) "
                             "VALUES (1, 'Asha', 'lion', '', '2026-01-01 00:00:00')"))  # fmt: skip
    data = photo(1)
    sha = hashlib.sha256(data).hexdigest()
    old.photo_path(sha, "PNG").parent.mkdir(parents=True)
    old.photo_path(sha, "PNG").write_bytes(data)
    with old.engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO photos VALUES ('{sha}', 'PNG', 48, 48, {len(data)})"))
        conn.execute(sa.text("INSERT INTO sightings (id, individual_id, photo_sha256, theta, embedding, dim, model_id,"
                             f" preprocessing_key, created_at) VALUES (1, 1, '{sha}', 0, :e, 8, 'm', 'p', "
                             "'2026-01-01 00:00:00')"), {"e": np.ones(8, np.float32).tobytes()})  # fmt: skip
    backup(old, tmp_path / "old.tar.gz")
    assert read_manifest(tmp_path / "old.tar.gz")["revision"] == "0001"
    new = Catalogue(f"sqlite:///{tmp_path / 'new.db'}", tmp_path / "new.photos")
    new.migrate()  # an empty store already at the newest revision: taken down to 0001 for the rows
    restore(tmp_path / "old.tar.gz", new)
    assert new.revision() != "0001"
    asha = new.get_individual(1)
    assert asha["name"] == "Asha" and [s["photo"] for s in asha["sightings"]] == [sha]
    assert new.find_photo(sha)[0].read_bytes() == data


def test_cli_backup_and_restore(tmp_path, capsys):
    src_url, dst_url = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    src = Catalogue(src_url, tmp_path / "a.photos")
    _fill(src)
    archive = str(tmp_path / "a.tar.gz")
    assert (
        cli_main(["catalogue", "backup", "--catalogue", src_url, "--photos", str(src.photo_dir), archive])
        == 0
    )
    assert "backed up" in capsys.readouterr().out
    assert cli_main(["catalogue", "backup", "--catalogue", src_url, archive]) == 2  # never replaced
    assert "exists" in capsys.readouterr().err
    restore_args = [
        "catalogue",
        "restore",
        archive,
        "--catalogue",
        dst_url,
        "--photos",
        str(tmp_path / "b.photos"),
    ]
    assert cli_main(restore_args) == 0
    out = capsys.readouterr().out
    assert "restored" in out and "3 individuals, 6 sightings, 1 encounter" in out
    assert cli_main(restore_args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: catalogue") and "is not empty" in err and err.count("\n") == 1
    assert table_rows(Catalogue(dst_url, tmp_path / "b.photos")) == table_rows(src)
