"""The catalogue's admin routes: calibrated bands (read, fit now) and exports.

``add_admin_routes(app, service, writer)`` adds them to the app of :func:`animal_reid.serve.app.create_app`. It
gives the service a :class:`~animal_reid.serve.calibration.CatalogueCalibration` (``service.calibration``) when it
has none, refitting after every ``service.refit_every`` confirmed sightings, started once the app has opened the
service and stopped when the app stops; and a ``service.band_for(species, best_score) -> (band, reason)`` when the
service has none, for identify and the review queue.

- ``GET /v1/calibration``: per species, its band (or null) and why, when it was fitted, confirmed sightings since.
- ``POST /v1/calibration/fit?species=`` (writer): fit now (every species that can be, without ``species``);
  409 with what is missing when it cannot be.
- ``GET /v1/export?format=csv|coco|camtrapdp|capture&species=``: a download (``Content-Disposition: attachment``).
"""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations, which name local `writer`
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from anyio import to_thread
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from animal_reid.season.exports_capture import parse_occasion
from animal_reid.serve.calibration import DEFAULT_REFIT_EVERY, CatalogueCalibration, NotCalibrated
from animal_reid.serve.exports import ExportError, export
from animal_reid.serve.settings import species_key


class BandOut(BaseModel):
    known_above: float = Field(description="a best score at or above this: likely known")
    new_below: float = Field(description="a best score below this: likely new; between the two: unsure")
    source: str = Field(description="'species': fitted on this species' own sightings")
    rule: str = Field(description="how a candidate's photo scores are combined (max: its best photo)")
    expected: dict[str, Any] = Field(
        description="the rates the bands gave on the catalogue's own test matches"
    )


class SpeciesCalibration(BaseModel):
    bands: BandOut | None = Field(description="null until the species can be calibrated")
    reason: str = Field(description="what the bands rest on, or what is missing before there are any")
    fitted_at: str | None
    n_since_fit: int | None = Field(description="confirmed sightings since the last fit")
    individuals: int
    individuals_with_2_encounters: int


class CalibrationOut(BaseModel):
    refit_every: int = Field(description="the bands are refitted after this many confirmed sightings")
    species: dict[str, SpeciesCalibration]


FORMAT_HELP = ("csv: one row per sighting; coco: COCO json with individual ids; camtrapdp: a Camtrap DP package "
               "(zip); capture: capture histories per species, CSV and Program MARK (zip)")  # fmt: skip


def ensure_calibration(service) -> CatalogueCalibration:
    """The service's calibration, made (and ``service.band_for`` given) when it has none."""
    calibration = getattr(service, "calibration", None)
    if calibration is None:
        calibration = CatalogueCalibration(
            service.catalogue, refit_every=getattr(service, "refit_every", None) or DEFAULT_REFIT_EVERY,
            model_id=getattr(service, "model_id", None), preprocessing_key=getattr(service, "preprocessing_key", None),
        )  # fmt: skip
        service.calibration = calibration
    if not callable(getattr(service, "band_for", None)):
        service.band_for = calibration.band_for
    return calibration


def _follow_in_lifespan(app: FastAPI, calibration: CatalogueCalibration) -> None:
    """Start the calibration's thread once the app's own start-up (which opens the catalogue) is done."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a):
        async with inner(a) as state:
            await to_thread.run_sync(calibration.start)
            try:
                yield state
            finally:
                await to_thread.run_sync(calibration.stop)

    app.router.lifespan_context = lifespan


def _species(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    try:
        return species_key(text)
    except ValueError as err:
        raise HTTPException(422, f"species: {err}") from err


async def _known_species(service, species: str | None) -> None:
    if species is None:
        return
    known = await to_thread.run_sync(service.catalogue.species)
    if species not in known:
        raise HTTPException(
            404,
            f"no individuals of species {species!r} in the catalogue (it has: {', '.join(known) or 'none'})",
        )


def add_admin_routes(app: FastAPI, service, writer) -> None:
    """Calibration and export routes on ``app`` (module doc); ``writer``: the reviewer dependency
    (``Depends(...)``) whose value, the reviewer's name, is written to the change log."""
    calibration = ensure_calibration(service)
    _follow_in_lifespan(app, calibration)

    @app.get("/v1/calibration", response_model=CalibrationOut, tags=["calibration"])
    async def get_calibration() -> dict:
        """Each species' band (likely known / unsure / likely new thresholds), or why it has none yet."""
        await to_thread.run_sync(calibration.refresh)
        return calibration.status()

    @app.post("/v1/calibration/fit", response_model=CalibrationOut, tags=["calibration"])
    async def fit_calibration(
        reviewer: Annotated[str, writer],
        species: Annotated[
            str | None, Query(description="one species (default: every one that can be)")
        ] = None,
    ) -> dict:
        """Fit the bands on the catalogue now (they are also refitted by themselves as sightings come in)."""
        sp, actor = _species(species), reviewer
        await _known_species(service, sp)
        try:
            if sp is None:
                await to_thread.run_sync(calibration.fit_all, actor)
            else:
                await to_thread.run_sync(calibration.fit, sp, actor)
        except NotCalibrated as err:
            raise HTTPException(409, str(err)) from err
        return calibration.status()

    _add_export_route(app, service)


def _add_export_route(app: FastAPI, service) -> None:
    @app.get("/v1/export", response_class=Response, tags=["export"],
             responses={200: {"description": "the export file (an attachment)",
                              "content": {"text/csv": {}, "application/json": {}, "application/zip": {}}}})  # fmt: skip
    async def export_catalogue(
        fmt: Annotated[
            Literal["csv", "coco", "camtrapdp", "capture"], Query(alias="format", description=FORMAT_HELP)
        ],
        species: Annotated[str | None, Query(description="one species (default: all)")] = None,
        occasion: Annotated[
            str, Query(description="capture histories: occasion length (1D, 7D, 30D, 2W)")
        ] = "7D",
        photos: Annotated[bool, Query(description="camtrapdp: put the photos in the package")] = False,
    ) -> Response:
        """The catalogue (or one species) as a file, built with the season library's exporters."""
        sp = _species(species)
        try:
            parse_occasion(occasion)
        except ExportError as err:
            raise HTTPException(422, str(err)) from err  # "occasion 'x' is not ..."
        await _known_species(service, sp)
        try:
            out = await to_thread.run_sync(lambda: export(service.catalogue, fmt, sp, occasion, photos))
        except ExportError as err:  # e.g. a photo file missing from the photo folder
            raise HTTPException(409, f"export: {err}") from err
        headers = {"Content-Disposition": f'attachment; filename="{out.filename}"'}
        return Response(out.data, media_type=out.media_type, headers=headers)
