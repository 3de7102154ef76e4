"""Calibrated bands fitted on the catalogue itself: why there is no band before a species has two individuals with
two encounters each, a fit recorded in the change log and read back by a restart or another replica, refits after
every N confirmed sightings in the background, the routes, and ``animal-reid catalogue calibrate``."""

import itertools
import time
from types import SimpleNamespace
from typing import Annotated

import numpy as np
import pytest

sa = pytest.importorskip("sqlalchemy")
pytest.importorskip("fastapi")

from fastapi import Depends, FastAPI, Header, HTTPException  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from animal_reid.cli import main as cli_main  # noqa: E402
from animal_reid.serve.calibration import AUTO_ACTOR, KIND, CatalogueCalibration, NotCalibrated  # noqa: E402
from animal_reid.serve.routes_admin import add_admin_routes  # noqa: E402
from animal_reid.serve.schema import NewPhoto, SightingMeta  # noqa: E402
from animal_reid.serve.store import Catalogue  # noqa: E402
from animal_reid.testing.serve import photo  # noqa: E402

DIM = 16
BOUND_S = 20.0  # generous: two cores shared with other work
MISSING = "lion: 1 individual with 2 or more encounters; bands need 2"


class Herd:
    """A catalogue with individuals whose sightings lie near their own random direction (so known and new
    animals score apart, as with a good model)."""

    def __init__(self, tmp_path, url: str | None = None):
        self.cat = Catalogue(url or f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "photos")
        self.cat.migrate()
        self.rng = np.random.default_rng(0)
        self.seeds = itertools.count(100)
        self.centres: dict[int, np.ndarray] = {}

    def individual(self, name: str, species: str = "lion") -> int:
        iid = self.cat.create_individual(name, species, actor="ana")["id"]
        self.centres[iid] = self.rng.normal(size=DIM)
        return iid

    def sight(self, iid: int, encounter_id: int | None = None, day: int | None = None) -> dict:
        """A sighting of ``iid``: in ``encounter_id``, else taken on ``day`` of January (default: a new day each
        time, so sightings without an encounter count as separate encounters)."""
        emb = self.centres[iid] + 0.25 * self.rng.normal(size=DIM)
        emb = (emb / np.linalg.norm(emb)).astype(np.float32)
        seed = next(self.seeds)
        meta = SightingMeta(taken_at=f"2026-01-{1 + (seed % 28 if day is None else day):02d}T10:00:00")
        return self.cat.add_sighting(iid, NewPhoto(photo(seed), "PNG", 48, 48), emb, "m1", "p1",
                                     encounter_id=encounter_id, meta=meta, actor="ana")  # fmt: skip

    def fits(self) -> list[dict]:
        return [c for c in self.cat.list_changes(limit=10_000) if c["kind"] == KIND]


def _eligible(herd: Herd, n: int = 4, encounters: int = 3) -> None:
    for k in range(n):
        iid = herd.individual(f"L{k}")
        for _ in range(encounters):
            herd.sight(iid)


def _until(what, check, bound_s=BOUND_S):
    start = time.monotonic()
    while not (value := check()):
        if time.monotonic() - start > bound_s:
            pytest.fail(f"{what} did not happen within {bound_s:.0f} s")
        time.sleep(0.05)
    return value


def test_no_band_until_two_individuals_have_two_encounters(tmp_path):
    herd = Herd(tmp_path)
    asha, bo = herd.individual("Asha"), herd.individual("Bo")
    herd.sight(asha, day=3), herd.sight(asha, day=3)  # no encounter, one day: one encounter
    once = CatalogueCalibration(herd.cat)
    once.refresh()
    assert once.status()["species"]["lion"]["individuals_with_2_encounters"] == 0
    herd.sight(asha, day=4)  # another day: Asha has two
    enc = herd.cat.create_encounter("lion", "ana")["id"]
    herd.sight(bo, enc), herd.sight(bo, enc)  # two photos of ONE encounter: Bo has one
    calibration = CatalogueCalibration(herd.cat)
    assert calibration.refresh() == []  # nothing due
    lion = calibration.status()["species"]["lion"]
    assert lion["bands"] is None and lion["reason"] == MISSING and lion["individuals_with_2_encounters"] == 1
    assert calibration.band_for("lion", 0.8) == (None, f"no calibration for this species yet ({MISSING})")
    assert calibration.band_for("tiger", 0.8)[1].endswith("(tiger: no sightings in the catalogue yet)")
    with pytest.raises(NotCalibrated, match=MISSING):
        calibration.fit("lion")
    herd.sight(bo)  # a second encounter of Bo: now lions can be calibrated
    assert calibration.refresh() == ["lion"]


@pytest.fixture(params=["sqlite", "postgresql"])
def catalogue_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'c.db'}"
    base = request.getfixturevalue("postgres_url")
    name = f"cal{abs(hash(str(tmp_path))) % 10**8}"
    with sa.create_engine(base, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    return base.rsplit("/", 1)[0] + f"/{name}"


def test_a_fit_is_recorded_and_read_back_by_a_restart(tmp_path, catalogue_url):
    herd = Herd(tmp_path, catalogue_url)
    _eligible(herd)
    calibration = CatalogueCalibration(herd.cat, model_id="m1", preprocessing_key="p1")
    lion = calibration.fit("lion", actor="ana")
    bands = lion["bands"]
    assert bands["new_below"] <= bands["known_above"] and bands["rule"] == "max"
    assert lion["reason"].startswith(
        "lion: fitted on 12 encounters of 4 individuals (12 known and 12 new test"
    )
    assert lion["n_since_fit"] == 0 and lion["fitted_at"]
    [row] = herd.fits()
    assert row["actor"] == "ana" and row["after"]["species"] == "lion"
    assert calibration.band_for("lion", 0.99)[0] == "known"
    band, why = calibration.band_for("lion", -0.9)
    assert band == "new" and why.startswith("best score -0.90 is below")
    mid = (bands["new_below"] + bands["known_above"]) / 2
    assert calibration.band_for("lion", mid)[0] == (
        "unsure" if bands["new_below"] < bands["known_above"] else "known"
    )

    seq = herd.cat.last_seq()
    restarted = CatalogueCalibration(herd.cat, model_id="m1", preprocessing_key="p1")
    assert restarted.refresh() == []  # the recorded fit is used: nothing due, nothing fitted again
    assert restarted.status()["species"]["lion"]["bands"] == bands
    assert herd.cat.last_seq() == seq
    other_model = CatalogueCalibration(herd.cat, model_id="m2", preprocessing_key="p1")
    other_model.refresh()
    assert (
        other_model.status()["species"]["lion"]["individuals_with_2_encounters"] == 0
    )  # m1's embeddings only


def test_refit_after_every_n_confirmed_sightings_in_the_background(tmp_path):
    herd = Herd(tmp_path)
    _eligible(herd)
    calibration = CatalogueCalibration(herd.cat, refit_every=3, poll_s=0.05)
    replica = CatalogueCalibration(herd.cat, refit_every=3, poll_s=0.05)
    calibration.start()
    try:
        _until("the first fit", lambda: len(herd.fits()) == 1)  # fitted as soon as the species qualifies
        first = herd.fits()[0]
        assert first["actor"] == AUTO_ACTOR
        lion = 1
        herd.sight(lion), herd.sight(lion)
        _until("2 sightings counted", lambda: calibration.status()["species"]["lion"]["n_since_fit"] == 2)
        assert len(herd.fits()) == 1
        herd.sight(lion)
        _until("the refit", lambda: len(herd.fits()) == 2)
        second = herd.fits()[1]
        assert second["after"]["based_on_seq"] > first["after"]["based_on_seq"]
        _until("the refit read back", lambda: calibration.status()["species"]["lion"]["n_since_fit"] == 0)
        assert replica.step() == []  # another replica reads the fit instead of fitting again
        assert replica.fit_of("lion").fitted_at == second["after"]["fitted_at"]
    finally:
        calibration.stop()
    assert calibration._thread is None


def _app(herd: Herd) -> tuple[FastAPI, SimpleNamespace]:
    def reviewer(authorization: Annotated[str | None, Header()] = None) -> str:
        if authorization != "Bearer t0ken":
            raise HTTPException(401, "writes need an 'Authorization: Bearer <token>' header")
        return "ana"

    service = SimpleNamespace(catalogue=herd.cat, model_id="m1", preprocessing_key="p1", refit_every=50)
    app = FastAPI()
    add_admin_routes(app, service, Depends(reviewer))
    return app, service


def test_routes(tmp_path):
    herd = Herd(tmp_path)
    asha = herd.individual("Asha")
    herd.sight(asha), herd.sight(asha)
    herd.individual("Bo")
    app, service = _app(herd)
    auth = {"Authorization": "Bearer t0ken"}
    with TestClient(app) as client:
        assert service.calibration._thread is not None  # started with the app
        lion = client.get("/v1/calibration").json()["species"]["lion"]
        assert lion["bands"] is None and lion["reason"] == MISSING
        assert service.band_for("lion", 0.9) == (None, f"no calibration for this species yet ({MISSING})")
        assert client.post("/v1/calibration/fit?species=lion").status_code == 401
        r = client.post("/v1/calibration/fit?species=Lion", headers=auth)
        assert r.status_code == 409 and r.json() == {"detail": MISSING}
        r = client.post("/v1/calibration/fit?species=tiger", headers=auth)
        assert r.status_code == 404 and "no individuals of species 'tiger'" in r.json()["detail"]
        _eligible(herd)
        r = client.post("/v1/calibration/fit", headers=auth)
        assert r.status_code == 200 and r.json()["refit_every"] == 50
        bands = r.json()["species"]["lion"]["bands"]
        assert bands["known_above"] >= bands["new_below"]
        assert any(c["actor"] == "ana" for c in herd.fits())
        assert service.band_for("lion", 0.99)[0] == "known"
        assert "/v1/calibration" in client.get("/openapi.json").json()["paths"]
    assert service.calibration._thread is None  # stopped with the app


def test_cli_calibrate_prints_the_bands_table(tmp_path, capsys):
    herd = Herd(tmp_path)
    _eligible(herd)
    herd.sight(herd.individual("Zed", "zebra"))
    args = ["catalogue", "calibrate", "--catalogue", herd.cat.url, "--photos", str(herd.cat.photo_dir)]
    assert cli_main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:6] == ["species", "images", "enc.", "indiv.", "new_below", "known_above"]
    assert out[1].split()[:4] == ["lion", "12", "12", "4"]
    assert "no bands: zebra: 0 individuals with 2 or more encounters; bands need 2" in out
    assert out[-1] == "bands fitted for lion and recorded in the catalogue's change log"
    assert [c["actor"] for c in herd.fits()] == ["operator (animal-reid catalogue calibrate)"]
    assert cli_main([*args, "--species", "zebra"]) == 1
    assert capsys.readouterr().err == "error: zebra: 0 individuals with 2 or more encounters; bands need 2\n"


def test_the_service_identify_answer_carries_the_band(tmp_path):
    """The real app: ``add_admin_routes`` (wired by ``create_app``) gives the service its calibration; identify's
    ``band``/``band_reason`` come from it, before and after the fit."""
    pytest.importorskip("torch")
    from animal_reid.serve.app import create_app
    from animal_reid.serve.service import Service
    from animal_reid.testing.serve import tiny_model

    service = Service.from_pretrained(tiny_model(tmp_path / "model"), f"sqlite:///{tmp_path / 'c.db'}",
                                      photo_dir=tmp_path / "photos", token="t0ken", engine="torch", poll_s=None)  # fmt: skip
    query = {"file": ("q.png", photo(1), "image/png")}
    with TestClient(create_app(service)) as client:
        rng = np.random.default_rng(0)
        for k in range(3):
            iid = service.catalogue.create_individual(f"L{k}", "lion", actor="ana")["id"]
            centre = rng.normal(size=service.dim)
            for j in range(2 if k == 1 else 1):  # only L1 has two encounters
                emb = (centre + 0.2 * rng.normal(size=service.dim)).astype(np.float32)
                service.add_sighting(NewPhoto(photo(10 * k + j + 2), "PNG", 48, 48), emb, individual_id=iid,
                                     meta=SightingMeta(taken_at=f"2026-01-0{j + 1}"), actor="ana")  # fmt: skip

        def identify() -> dict:
            return client.post("/v1/identify", files=query, data={"species": "lion"}).json()

        # the calibration follows the catalogue in the background (a look every poll_s), so wait for the reason
        answer = _until(
            "the reason to follow", lambda: (a := identify())["band_reason"].endswith(f"({MISSING})") and a
        )
        assert answer["band"] is None
        iid = service.catalogue.create_individual("L9", "lion", actor="ana")["id"]
        for j in range(2):
            service.add_sighting(NewPhoto(photo(90 + j), "PNG", 48, 48), rng.normal(size=service.dim).astype(np.float32),
                                 individual_id=iid, meta=SightingMeta(taken_at=f"2026-02-0{j + 1}"),
                                 actor="ana")  # fmt: skip
        r = client.post("/v1/calibration/fit?species=lion", headers={"Authorization": "Bearer t0ken"})
        assert r.status_code == 200 and r.json()["species"]["lion"]["bands"] is not None
        answer = identify()
        assert answer["band"] in ("known", "unsure", "new") and answer["band_reason"].startswith("best score")
        assert service.calibration.fit_of("lion").counts["individuals"] == 4
