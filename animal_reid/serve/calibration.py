"""Decision bands (likely known / unsure / likely new) fitted on the catalogue itself, kept fresh as it grows.

The library's calibration (:mod:`animal_reid.season.calibration`) runs on the catalogue's own sightings, one
species at a time: each encounter (sightings without one: one per individual and day) is matched against the rest of the
species as a known animal (its own encounter left out) and as a new one (its whole individual left out), scores
fused by ``max`` as the service's identify ranks individuals by their best sighting, and the two thresholds are
set at the targets (5 % of known animals called new, 5 % of wrong best candidates called known). Only the
embeddings of the serving model are used.

A species gets bands once it has at least :data:`MIN_INDIVIDUALS` individuals with at least
:data:`MIN_ENCOUNTERS` encounters each; before that its ``reason`` says what is missing ("lion: 1 individual with
2 or more encounters; bands need 2"). It is fitted as soon as it qualifies and refitted after every
``refit_every`` confirmed sightings (``sighting.add`` rows of the change log since the last fit), in a
background thread, so no request waits for a fit.

A fit is stored as a ``calibration.fit`` row of the change log (``after``: the species, the bands JSON of
:class:`~animal_reid.season.decisions.Bands`, the change-log sequence number it was fitted at, when, and the
counts), so every replica and every restart uses the latest fit without fitting again.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from animal_reid.season.calibration import CalibrationError, calibrate
from animal_reid.season.decisions import Band, Bands, BandsError
from animal_reid.serve import changelog
from animal_reid.serve.schema import Change, Individual, Sighting, encounter_key_sql

logger = logging.getLogger(__name__)

KIND = "calibration.fit"
DEFAULT_REFIT_EVERY = 20
#: individuals with MIN_ENCOUNTERS encounters each a species needs: one plays the new animal, one the known
MIN_INDIVIDUALS = 2
MIN_ENCOUNTERS = 2
RULE = "max"  # identify ranks individuals by their best sighting's score
AUTO_ACTOR = "animal-reid (automatic refit)"


class NotCalibrated(ValueError):
    """A species that cannot be fitted (yet); the message says what is missing (HTTP 409)."""


@dataclass(frozen=True)
class Fit:
    """The latest bands of one species, as recorded in the change log."""

    species: str
    band: Band
    bands: dict  # the whole Bands JSON
    fitted_at: str
    based_on_seq: int  # the change-log sequence number the fit saw
    counts: dict


@dataclass
class SpeciesStatus:
    """What GET /v1/calibration says about one species."""

    species: str
    individuals: int = 0
    eligible_individuals: int = 0  # with MIN_ENCOUNTERS or more encounters
    fit: Fit | None = None
    n_since_fit: int | None = None
    failed: str | None = None

    @property
    def eligible(self) -> bool:
        return self.eligible_individuals >= MIN_INDIVIDUALS

    def missing(self) -> str:
        n = self.eligible_individuals
        return (f"{self.species}: {n} individual{'' if n == 1 else 's'} with {MIN_ENCOUNTERS} or more "
                f"encounters; bands need {MIN_INDIVIDUALS}")  # fmt: skip

    def reason(self, refit_every: int) -> str:
        if self.fit is None:
            return self.failed or (
                self.missing() if not self.eligible else f"{self.species}: fitting the bands"
            )
        c = self.fit.counts
        left = max(refit_every - (self.n_since_fit or 0), 0)
        return (f"{self.species}: fitted on {c.get('encounters', '?')} encounters of {c.get('individuals', '?')} "
                f"individuals ({c.get('known_queries', '?')} known and {c.get('new_queries', '?')} new test "
                f"matches); refitted after {left} more confirmed sighting{'' if left == 1 else 's'}")  # fmt: skip

    def as_dict(self, refit_every: int) -> dict:
        return {
            "bands": None if self.fit is None else {**self.fit.band.to_dict(), "rule": RULE},
            "reason": self.reason(refit_every),
            "fitted_at": None if self.fit is None else self.fit.fitted_at,
            "n_since_fit": self.n_since_fit,
            "individuals": self.individuals,
            "individuals_with_2_encounters": self.eligible_individuals,
        }


def decide(band: Band, species: str, best_score: float | None) -> tuple[str, str]:
    """``(band, reason)`` for a best score: the decision and one line saying why, for the page."""
    verdict = band.decide(best_score)
    if best_score is None:
        return verdict, f"no individual of {species} to compare with"
    s, lo, hi = f"{best_score:.2f}", f"{band.new_below:.2f}", f"{band.known_above:.2f}"
    why = {
        "known": f"best score {s} is at or above {hi}: likely a {species} already in the catalogue",
        "unsure": f"best score {s} is between {lo} and {hi}: compare the photos",
        "new": f"best score {s} is below {lo}: likely a {species} not in the catalogue yet",
    }
    return verdict, why[verdict]


class CatalogueCalibration:
    """Bands per species fitted on ``catalogue`` (module doc); :meth:`band_for` answers from memory."""

    def __init__(self, catalogue, refit_every: int = DEFAULT_REFIT_EVERY, model_id: str | None = None,
                 preprocessing_key: str | None = None, poll_s: float = 1.0, max_known_called_new: float = 0.05,
                 max_wrong_known: float = 0.05):  # fmt: skip
        if refit_every < 1:
            raise ValueError(f"refit_every must be >= 1 confirmed sightings, got {refit_every}")
        self.catalogue, self.refit_every, self.poll_s = catalogue, int(refit_every), poll_s
        self.model_key = (model_id, preprocessing_key) if model_id is not None else None
        self.targets = (max_known_called_new, max_wrong_known)
        self._status: dict[str, SpeciesStatus] = {}
        self._fits: dict[str, Fit] = {}
        self._fit_seq = 0  # the change-log rows of fits read up to here
        self._failed: dict[str, tuple[int, str]] = {}  # species -> (seq the fit saw, why it failed)
        self._seen_seq: int | None = None
        self._fit_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    # --- answers ----------------------------------------------------------------------------------------------
    def band_for(self, species: str, best_score: float | None) -> tuple[str | None, str]:
        """``(band, reason)``: "known" / "unsure" / "new" with why, or None with what the species lacks."""
        status = self._status.get(species)
        if status is None or status.fit is None:
            why = (
                status.reason(self.refit_every) if status else f"{species}: no sightings in the catalogue yet"
            )
            return None, f"no calibration for this species yet ({why})"
        return decide(status.fit.band, species, best_score)

    def status(self) -> dict:
        """GET /v1/calibration's answer."""
        return {
            "refit_every": self.refit_every,
            "species": {sp: st.as_dict(self.refit_every) for sp, st in sorted(self._status.items())},
        }

    def fit_of(self, species: str) -> Fit | None:
        """The species' current fit (as of the last refresh)."""
        st = self._status.get(species)
        return None if st is None else st.fit

    def species_status(self, species: str) -> dict | None:
        st = self._status.get(species)
        return None if st is None else st.as_dict(self.refit_every)

    # --- reading the catalogue -------------------------------------------------------------------------------
    def _mine(self):
        if self.model_key is None:
            return sa.true()
        return (Sighting.model_id == self.model_key[0]) & (Sighting.preprocessing_key == self.model_key[1])

    def _read_fits(self, s: Session) -> None:
        """Fits recorded since the last look (by any replica or run) become the species' current fits."""
        q = (sa.select(Change.seq, Change.after).where(Change.kind == KIND, Change.seq > self._fit_seq)
             .order_by(Change.seq))  # fmt: skip
        for seq, after in s.execute(q):
            self._fit_seq = max(self._fit_seq, int(seq))
            try:
                fit = _fit_from_record(after)
            except (BandsError, KeyError, TypeError, ValueError) as err:
                logger.warning("change %d (%s) is not a usable fit, ignored: %s", seq, KIND, err)
                continue
            self._fits[fit.species] = fit
            self._failed.pop(fit.species, None)

    def _species_counts(self, s: Session) -> dict[str, SpeciesStatus]:
        """Per species: individuals, and those with MIN_ENCOUNTERS encounters (counted in SQL; sightings
        without an encounter count as one per day: :func:`~animal_reid.serve.schema.encounter_key_sql`)."""
        key = encounter_key_sql()
        per_individual = (
            sa.select(Individual.species, sa.func.count(sa.distinct(key)).label("n"))
            .outerjoin(Sighting, (Sighting.individual_id == Individual.id) & self._mine())
            .group_by(Individual.id, Individual.species)
            .subquery()
        )
        eligible = sa.func.sum(sa.case((per_individual.c.n >= MIN_ENCOUNTERS, 1), else_=0))
        q = sa.select(per_individual.c.species, sa.func.count(), eligible).group_by(per_individual.c.species)
        return {sp: SpeciesStatus(sp, int(n), int(ok or 0)) for sp, n, ok in s.execute(q)}

    def _since(self, s: Session, species: str, seq: int) -> int:
        q = (sa.select(sa.func.count()).select_from(Change).join(Individual, Individual.id == Change.individual_id)
             .where(Change.kind == "sighting.add", Change.seq > seq, Individual.species == species))  # fmt: skip
        return int(s.scalar(q))

    def refresh(self) -> list[str]:
        """Read the latest fits and the species' counts; the species due for a (re)fit."""
        with self._read_lock, Session(self.catalogue.engine) as s:
            self._seen_seq = changelog.last_seq(s)
            self._read_fits(s)
            status = self._species_counts(s)
            for sp, st in status.items():
                st.fit = self._fits.get(sp)
                if st.fit is not None:
                    st.n_since_fit = self._since(s, sp, st.fit.based_on_seq)
                failed = self._failed.get(sp)
                st.failed = failed[1] if failed else None
            self._status = status  # swapped whole: band_for and status() read it without a lock
        return [sp for sp, st in sorted(status.items()) if self._due(st)]

    def _due(self, st: SpeciesStatus) -> bool:
        """Eligible, and never fitted (a failed fit is tried again once the catalogue changed) or
        ``refit_every`` confirmed sightings since the last fit."""
        if not st.eligible:
            return False
        if st.fit is None:
            failed = self._failed.get(st.species)
            return failed is None or failed[0] != self._seen_seq
        return (st.n_since_fit or 0) >= self.refit_every

    def rows(self, species: str) -> tuple[np.ndarray, list[str], list[str]]:
        """(embeddings, individual ids, encounter keys) of the species' sightings by the serving model."""
        q = (sa.select(Sighting.id, Sighting.individual_id, Sighting.encounter_id, Sighting.embedding,
                       Sighting.model_id, Sighting.preprocessing_key, encounter_key_sql().label("encounter"))
             .join(Individual, Individual.id == Sighting.individual_id)
             .where(Individual.species == species).order_by(Sighting.id))  # fmt: skip
        with Session(self.catalogue.engine) as s:
            rows = s.execute(q).all()
        if self.model_key is None and rows:  # the model most sightings were embedded by
            key = Counter((r.model_id, r.preprocessing_key) for r in rows).most_common(1)[0][0]
        else:
            key = self.model_key
        rows = [r for r in rows if (r.model_id, r.preprocessing_key) == key]
        emb = np.stack([np.frombuffer(r.embedding, np.float32) for r in rows]) if rows else np.zeros((0, 0))
        return emb, [str(r.individual_id) for r in rows], [r.encounter for r in rows]

    # --- fitting ----------------------------------------------------------------------------------------------
    def fit(self, species: str, actor: str = AUTO_ACTOR) -> dict:
        """Fit ``species`` now and record the fit; its status. :class:`NotCalibrated` when it cannot be."""
        with self._fit_lock:
            self.refresh()
            st = self._status.get(species)
            if st is None:
                raise NotCalibrated(f"{species}: no individuals of this species in the catalogue")
            if not st.eligible:
                raise NotCalibrated(st.missing())
            with Session(self.catalogue.engine) as s:
                seq = changelog.last_seq(s)
            try:
                fit = self._fit(species, seq)
            except CalibrationError as err:
                self._failed[species] = (seq, f"{species}: the bands could not be fitted ({err})")
                self.refresh()
                raise NotCalibrated(self._failed[species][1]) from err
            record_fit(self.catalogue.engine, fit, actor, force=actor != AUTO_ACTOR)
            logger.info("calibration: %s fitted (new below %.3f, known above %.3f)", species,
                        fit.band.new_below, fit.band.known_above)  # fmt: skip
            self.refresh()
        return self.species_status(species)

    def _fit(self, species: str, seq: int) -> Fit:
        emb, ids, encounters = self.rows(species)
        bands = calibrate(emb, ids, [species] * len(ids), encounters, None, *self.targets, rule=RULE, table=None,
                          min_queries=1)  # fmt: skip
        band = bands.species[species]
        e = band.expected
        counts = {**e.get("catalogue", {}), "known_queries": e["known_called_new"]["of"],
                  "new_queries": e["new_called_new"]["of"]}  # fmt: skip
        now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
        return Fit(species, band, bands.to_dict(), now, seq, counts)

    def fit_all(self, actor: str = AUTO_ACTOR) -> list[str]:
        """Fit every species that can be; the species fitted. :class:`NotCalibrated` when none can."""
        self.refresh()
        eligible = [sp for sp, st in sorted(self._status.items()) if st.eligible]
        if not eligible:
            why = (
                "; ".join(st.missing() for _, st in sorted(self._status.items())) or "the catalogue is empty"
            )
            raise NotCalibrated(f"no species can be calibrated yet: {why}")
        for sp in eligible:
            self.fit(sp, actor)
        return eligible

    # --- the background thread --------------------------------------------------------------------------------
    def start(self) -> None:
        """Read the latest fits now, then follow the catalogue in a daemon thread (fits happen there)."""
        if self._thread is not None:
            return
        try:
            self.refresh()
        except sa.exc.SQLAlchemyError as err:  # not migrated yet, or unreachable: the thread tries again
            logger.warning("calibration: cannot read the catalogue yet: %s", str(err).splitlines()[0])
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="animal-reid-calibration", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        """Look at the catalogue now (e.g. after a write) rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                self.step(force=first)
                first = False
            except Exception as err:  # noqa: BLE001  (an outage or a bad fit must not end the thread)
                logger.warning("calibration: %s", (str(err).splitlines() or [type(err).__name__])[0])
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def step(self, force: bool = False) -> list[str]:
        """One look: when the change log moved (or ``force``), refresh and fit the species that are due."""
        with Session(self.catalogue.engine) as s:
            seq = changelog.last_seq(s)
        if seq == self._seen_seq and not force:
            return []
        fitted = []
        for sp in self.refresh():
            try:
                self.fit(sp)
                fitted.append(sp)
            except NotCalibrated as err:
                logger.warning("calibration: %s", err)
        return fitted


def _fit_from_record(after: dict) -> Fit:
    bands = Bands.from_dict(after["bands"], f"{KIND} of {after['species']}")
    species = str(after["species"])
    return Fit(species, bands.band_for(species), after["bands"], str(after["fitted_at"]),
               int(after["based_on_seq"]), dict(after.get("counts") or {}))  # fmt: skip


def record_fit(engine: sa.Engine, fit: Fit, actor: str, force: bool = True) -> bool:
    """Append the fit to the change log as a ``calibration.fit`` row (``after``: what :func:`_fit_from_record`
    reads). Unless ``force``, nothing is written when another replica already recorded a fit of the species
    based on as much (its row after ours in seq order, seen under the write lock): False then."""
    after = {"species": fit.species, "bands": fit.bands, "fitted_at": fit.fitted_at,
             "based_on_seq": fit.based_on_seq, "counts": fit.counts}  # fmt: skip
    with changelog.write_session(engine) as s:
        if not force:
            q = sa.select(Change.after).where(Change.kind == KIND, Change.seq > fit.based_on_seq)
            for other in s.scalars(q):
                if other.get("species") == fit.species and other.get("based_on_seq", -1) >= fit.based_on_seq:
                    return False
        changelog.record(s, actor, KIND, after=after)
    return True
