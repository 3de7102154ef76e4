"""The catalogue's routes: individuals (list, search, page, create, edit, delete, merge), sightings (file,
edit, delete), encounters, the change log and flags. Writes take the reviewer's name (``writer``, the
dependency of :func:`animal_reid.serve.app.reviewer_dependency`) and log it as the change's actor. No
``from __future__ import annotations`` here: FastAPI must see ``Annotated[str, writer]`` with ``writer``, a
local, evaluated.
"""

from typing import Annotated

from anyio import to_thread
from fastapi import FastAPI, File, Form, Query, UploadFile

from animal_reid.serve import api_models as m
from animal_reid.serve.api_models import SPECIES_HELP, Species
from animal_reid.serve.service import Service
from animal_reid.serve.store import SamePhoto, SightingMeta, checked_place, when_text
from animal_reid.serve.uploads import embed_photo, fail, parse_box, read_upload


def add_catalogue_routes(app: FastAPI, service: Service, writer) -> None:
    _add_individual_reads(app, service)
    _add_individual_writes(app, service, writer)
    _add_sighting_routes(app, service, writer)
    _add_encounter_routes(app, service, writer)
    _add_log_routes(app, service, writer)


def _add_individual_reads(app: FastAPI, service: Service) -> None:
    @app.get("/v1/individuals", response_model=m.IndividualList)
    async def list_individuals(
        species: Annotated[Species | None, Query(description=SPECIES_HELP)] = None,
        q: Annotated[
            str | None, Query(max_length=200, description="in the name or an alias, any case")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict:
        """Individuals by name, a page at a time."""

        def read() -> dict:
            cat = service.catalogue
            return {
                "total": cat.count_individuals(species, q),
                "individuals": cat.list_individuals(species, q, limit, offset),
            }

        return await to_thread.run_sync(read)

    @app.get("/v1/individuals/{individual_id}", response_model=m.IndividualDetail)
    async def get_individual(individual_id: int) -> dict:
        return await to_thread.run_sync(service.catalogue.get_individual, individual_id)


def _add_individual_writes(app: FastAPI, service: Service, writer) -> None:
    @app.post("/v1/individuals", status_code=201, response_model=m.Individual)
    async def create_individual(body: m.NewIndividual, reviewer: Annotated[str, writer]) -> dict:
        return await to_thread.run_sync(
            lambda: service.catalogue.create_individual(
                body.name, body.species, body.notes, body.aliases, reviewer
            )
        )

    @app.patch("/v1/individuals/{individual_id}", response_model=m.Individual, responses={409: {}})
    async def update_individual(
        individual_id: int, body: m.IndividualPatch, reviewer: Annotated[str, writer]
    ) -> dict:
        """Rename, or change the notes or aliases: only the fields sent (409 when the name is taken)."""
        fields = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
        return await to_thread.run_sync(lambda: service.update_individual(individual_id, reviewer, **fields))

    @app.delete("/v1/individuals/{individual_id}", response_model=m.DeletedIndividual)
    async def delete_individual(individual_id: int, reviewer: Annotated[str, writer]) -> dict:
        """Delete an individual and its sightings (the change log keeps what they were; photo files stay)."""
        return await to_thread.run_sync(service.delete_individual, individual_id, reviewer)

    @app.post("/v1/individuals/{individual_id}/merge", response_model=m.Individual)
    async def merge(individual_id: int, body: m.MergeRequest, reviewer: Annotated[str, writer]) -> dict:
        """Move the source's sightings and names here (its name becomes an alias) and delete the source."""
        return await to_thread.run_sync(service.merge, body.source, individual_id, reviewer)


def _meta(form: m.SightingForm) -> SightingMeta:
    """The form's metadata, checked now (before the photo is embedded)."""
    checked_place(form.lat, form.lon)
    return SightingMeta(taken_at=when_text(form.taken_at), lat=form.lat, lon=form.lon, site=form.site,
                        viewpoint=form.viewpoint, observer=form.observer, notes=form.notes)  # fmt: skip


def _new_individual(form: m.SightingForm) -> dict | None:
    if form.individual_id is None:
        if not form.name or not form.species:
            raise fail(422, "give individual_id (a known individual) or name and species (a new one)")
        return {"name": form.name, "species": form.species, "notes": form.individual_notes}
    if form.name or form.species:
        raise fail(422, "give individual_id or name and species, not both")
    return None


def _add_sighting_routes(app: FastAPI, service: Service, writer) -> None:
    @app.post("/v1/sightings", status_code=201, response_model=m.NewSighting)
    async def add_sighting(
        file: Annotated[UploadFile, File(description="the photo of this sighting")],
        form: Annotated[m.SightingForm, Form()],
        reviewer: Annotated[str, writer],
    ) -> dict:
        """File a photo as a sighting of a known individual or of a new one (409: already a sighting of it)."""
        new, meta = _new_individual(form), _meta(form)
        if form.individual_id is not None:  # 404 before embedding
            await to_thread.run_sync(service.catalogue.get_individual, form.individual_id)
        photo = await read_upload(file, service)
        box = parse_box(form.box)
        emb = await embed_photo(service, photo, file.filename or "upload", box, form.theta)
        try:
            return await to_thread.run_sync(
                lambda: service.add_sighting(
                    photo,
                    emb,
                    individual_id=form.individual_id,
                    new_individual=new,
                    box=box,
                    theta=form.theta,
                    meta=meta,
                    encounter_id=form.encounter_id,
                    actor=reviewer,
                )  # fmt: skip
            )
        except SamePhoto as err:
            raise fail(409, f"{file.filename or 'upload'}: {err}") from None

    @app.get("/v1/sightings/{sighting_id}", response_model=m.NewSighting)
    async def get_sighting(sighting_id: int) -> dict:
        return await to_thread.run_sync(service.catalogue.get_sighting, sighting_id)

    @app.patch("/v1/sightings/{sighting_id}", response_model=m.Sighting)
    async def update_sighting(
        sighting_id: int, body: m.SightingPatch, reviewer: Annotated[str, writer]
    ) -> dict:
        """Change a sighting's date, place, viewpoint, observer, notes or encounter: only the fields sent."""
        fields = body.model_dump(exclude_unset=True)
        return await to_thread.run_sync(
            lambda: service.catalogue.update_sighting(sighting_id, reviewer, **fields)
        )

    @app.delete("/v1/sightings/{sighting_id}", response_model=m.Sighting)
    async def delete_sighting(sighting_id: int, reviewer: Annotated[str, writer]) -> dict:
        """Delete a sighting (the change log keeps what it was; the photo file stays)."""
        return await to_thread.run_sync(service.delete_sighting, sighting_id, reviewer)


def _add_encounter_routes(app: FastAPI, service: Service, writer) -> None:
    @app.post("/v1/encounters", status_code=201, response_model=m.Encounter)
    async def create_encounter(body: m.NewEncounter, reviewer: Annotated[str, writer]) -> dict:
        fields = body.model_dump(exclude={"species"})
        return await to_thread.run_sync(
            lambda: service.catalogue.create_encounter(body.species, reviewer, **fields)
        )

    @app.get("/v1/encounters/{encounter_id}", response_model=m.Encounter)
    async def get_encounter(encounter_id: int) -> dict:
        return await to_thread.run_sync(service.catalogue.get_encounter, encounter_id)

    @app.patch("/v1/encounters/{encounter_id}", response_model=m.Encounter)
    async def update_encounter(
        encounter_id: int, body: m.EncounterPatch, reviewer: Annotated[str, writer]
    ) -> dict:
        """Change an encounter's dates, place, observer or notes: only the fields sent."""
        fields = body.model_dump(exclude_unset=True)
        return await to_thread.run_sync(
            lambda: service.catalogue.update_encounter(encounter_id, reviewer, **fields)
        )


def _add_log_routes(app: FastAPI, service: Service, writer) -> None:
    @app.get("/v1/changes", response_model=m.ChangeList)
    async def changes(
        after: Annotated[int, Query(ge=0, description="only changes with a larger seq")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        individual_id: Annotated[int | None, Query(description="only those about this individual")] = None,
    ) -> dict:
        """The change log (who changed what, when, before and after), oldest first."""
        return await to_thread.run_sync(service.catalogue.changes_page, after, limit, individual_id)

    @app.get("/v1/flags", response_model=m.FlagList)
    async def flags(open: Annotated[bool, Query(description="only those not resolved yet")] = True) -> dict:  # noqa: A002
        """What a reviewer should look at: repeated photos, names given twice."""
        return {"flags": await to_thread.run_sync(service.catalogue.list_flags, open)}

    @app.post("/v1/flags/{flag_id}/resolve", response_model=m.Flag)
    async def resolve_flag(flag_id: int, reviewer: Annotated[str, writer]) -> dict:
        return await to_thread.run_sync(service.catalogue.resolve_flag, flag_id, reviewer)
