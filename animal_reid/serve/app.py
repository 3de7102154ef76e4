"""The FastAPI app: versioned routes over a :class:`~animal_reid.serve.service.Service`.

Reads (embed, identify, the catalogue, photos, the change log) are open; every write needs
``Authorization: Bearer <token>`` of a reviewer (:mod:`animal_reid.serve.reviewers`; declared in the OpenAPI spec
as the ``bearer`` scheme, so ``/docs`` has an Authorize button), and the change log records that reviewer's name.
Uploads are checked before any decoding (:mod:`animal_reid.serve.uploads`); errors are one-line 4xx
``{"detail": "..."}`` answers naming the problem; every route has a typed answer (:mod:`animal_reid.serve.
api_models`). Species names are case-insensitive (stored lower-case). API docs at ``/docs`` and ``/redoc``, their
scripts served by the app itself (no CDN: they work offline). The catalogue's routes are in
:mod:`animal_reid.serve.routes_catalogue`; the review queue, admin, explanation and page routes are added by
:func:`_add_extensions` when their modules are installed.
"""

import json
import re
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Annotated

from anyio import to_thread
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from animal_reid.serve import api_models as m
from animal_reid.serve.api_models import SPECIES_HELP, Species  # noqa: F401  (re-exported)
from animal_reid.serve.docs import add_offline_docs
from animal_reid.serve.routes_catalogue import add_catalogue_routes
from animal_reid.serve.service import TOKEN_ENV, Service
from animal_reid.serve.store import Conflict, Invalid, NotFound
from animal_reid.serve.uploads import (  # noqa: F401  (re-exported)
    check_image,
    embed_photo,
    fail,
    json_list,
    parse_box,
    read_upload,
)

BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description=f"a reviewer's token (from the server's --reviewers file) or the operator's ({TOKEN_ENV})",
)


def reviewer_dependency(service: Service) -> Callable[..., str]:
    """A FastAPI dependency giving the name of the reviewer whose bearer token came with the request: 401
    without one, 403 for a token no reviewer has, 403 when the server has no reviewers (read-only). Routes
    declare ``reviewer: Annotated[str, Depends(reviewer_dependency(service))]`` and log changes as ``reviewer``."""

    def reviewer(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> str:
        reviewers = service.reviewers
        if not reviewers.enabled:
            raise fail(
                403, f"writes are disabled on this server (start it with --reviewers FILE or {TOKEN_ENV} set)"
            )
        if credentials is None:  # no header, another scheme, or no token after "Bearer"
            raise HTTPException(401, "writes need an 'Authorization: Bearer <token>' header",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        name = reviewers.who(credentials.credentials)
        if name is None:
            raise fail(403, "the bearer token is not valid for this server")
        return name

    return reviewer


def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form"))
    return JSONResponse({"detail": f"{where or 'request'}: {first.get('msg', 'invalid')}"}, status_code=422)


def _add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    for error, status in ((NotFound, 404), (Conflict, 409), (Invalid, 422)):

        async def handler(_r: Request, exc: Exception, status: int = status) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        app.add_exception_handler(error, handler)


class BodyLimit:
    """Answers 413 before reading a body whose ``Content-Length`` is over what any route accepts.

    A plain ASGI middleware: ``@app.middleware("http")`` (Starlette's BaseHTTPMiddleware) runs every request
    through an extra task and memory streams, which cost the event loop CPU on every call (BENCHMARKS.md §10).
    """

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            limit = self.service.limits.max_upload_bytes * self.service.limits.max_files + 2**20
            length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
            if length is not None and length.isdigit() and int(length) > limit:
                detail = f"request body is over the {limit} byte limit"
                return await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(service: Service) -> FastAPI:
    """The app serving ``service``; its index is built (``service.open()``) when the app starts."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if service.index is None:
            await to_thread.run_sync(service.open)
        yield

    app = FastAPI(title="animal-reid", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  swagger_ui_oauth2_redirect_url=None,
                  description="Animal re-identification against a growing catalogue of known individuals. "
                  "Writes need a reviewer's token: press Authorize.")  # fmt: skip
    add_offline_docs(app)
    _add_error_handlers(app)
    app.state.service = service
    app.add_middleware(BodyLimit, service=service)
    writer = Depends(reviewer_dependency(service))
    _add_read_routes(app, service)
    _add_catalogue_reads(app, service)
    _add_identify(app, service)
    _add_service_routes(app, service, writer)
    add_catalogue_routes(app, service, writer)
    _add_extensions(app, service, writer)  # the review queue, admin, explanations and pages
    return app


def _add_extensions(app: FastAPI, service: Service, writer) -> None:
    """The calibration and exports (routes_admin), the review queue (routes_review), explanations
    (routes_explain) and the pages (routes_pages)."""
    from animal_reid.serve.routes_admin import add_admin_routes
    from animal_reid.serve.routes_explain import add_explain_routes
    from animal_reid.serve.routes_pages import add_page_routes
    from animal_reid.serve.routes_review import add_review_routes

    add_admin_routes(app, service, writer)
    add_review_routes(app, service, writer)
    add_explain_routes(app, service)
    add_page_routes(app, service)


def _add_read_routes(app: FastAPI, service: Service) -> None:
    @app.get("/health", response_model=m.Health)
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", response_model=m.Ready, responses={503: {"model": m.Ready}})
    async def ready() -> JSONResponse:
        state = await to_thread.run_sync(service.ready)
        return JSONResponse(
            {"ready": all(state.values()), **state}, status_code=200 if all(state.values()) else 503
        )

    @app.post("/v1/embed", response_model=m.EmbedAnswer)
    async def embed(
        files: Annotated[list[UploadFile], File(description="one or more images")],
        boxes: Annotated[str | None, Form(description="JSON list: [x, y, w, h] or null per file")] = None,
        thetas: Annotated[str | None, Form(description="JSON list: radians per file")] = None,
    ) -> dict:
        if len(files) > service.limits.max_files:
            raise fail(413, f"{len(files)} files in one request; at most {service.limits.max_files}")
        box_list = [parse_box(None if b is None else json.dumps(b), f"boxes[{i}]")
                    for i, b in enumerate(json_list(boxes, len(files), "boxes"))]  # fmt: skip
        theta_list = json_list(thetas, len(files), "thetas")
        photos = [await read_upload(f, service) for f in files]
        rows = [await embed_photo(service, p, f.filename or "upload", b, t)
                for p, f, b, t in zip(photos, files, box_list, theta_list, strict=True)]  # fmt: skip
        return {"model_id": service.model_id, "preprocessing_key": service.preprocessing_key,
                "dim": service.dim, "embeddings": [r.tolist() for r in rows]}  # fmt: skip


def _add_catalogue_reads(app: FastAPI, service: Service) -> None:
    @app.get("/v1/species", response_model=m.SpeciesList)
    async def species() -> dict:
        """Species in the catalogue or in the threshold file, with their counts (the page's drop-down)."""
        return {"species": await to_thread.run_sync(service.species)}

    @app.get("/v1/photos/{sha256}", response_class=FileResponse)
    async def photo(sha256: str) -> FileResponse:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise fail(404, f"photo {sha256[:80]!r} is not in the catalogue (expected a sha256 hex digest)")
        path, fmt = await to_thread.run_sync(service.catalogue.find_photo, sha256)
        return FileResponse(path, media_type=f"image/{fmt.lower()}")

    @app.get("/v1/stats", response_model=m.Stats)
    async def stats() -> dict:
        return await to_thread.run_sync(service.stats)


def _add_service_routes(app: FastAPI, service: Service, writer) -> None:
    @app.get("/v1/whoami", response_model=m.Whoami)
    async def whoami(reviewer: Annotated[str, writer]) -> dict:
        """The reviewer the bearer token belongs to (the name the change log records)."""
        return {"reviewer": reviewer}


def _add_identify(app: FastAPI, service: Service) -> None:
    @app.post("/v1/identify", response_model=m.IdentifyAnswer)
    async def identify(
        file: Annotated[UploadFile, File(description="the photo to identify")],
        species: Annotated[Species, Form(description=SPECIES_HELP)],
        box: Annotated[str | None, Form(description="[x, y, w, h]")] = None,
        theta: Annotated[float, Form()] = 0.0,
        top_k: Annotated[int, Form(ge=1, le=100)] = 5,
    ) -> dict:
        if not service.index.has_sightings_of(species):  # else no database round trip for this check
            await _check_species(service, species)
        photo = await read_upload(file, service)
        emb = await embed_photo(service, photo, file.filename or "upload", parse_box(box), theta)
        found = service.index.search(emb, species, top_k)
        ids = _answer_ids(found)
        described = service.describe_cached(*ids)  # no thread hop when the answer needs no store read
        if described is None:
            described = await to_thread.run_sync(service.describe, *ids)
        return _identify_answer(service, species, found, described)


async def _check_species(service: Service, species: str) -> None:
    known = await to_thread.run_sync(service.catalogue.species)
    if species not in known:
        raise fail(
            404,
            f"no individuals of species {species!r} in the catalogue (it has: {', '.join(known) or 'none'})",
        )


def _answer_ids(found: list[dict]) -> tuple[list[int], list[int]]:
    """The individuals and sightings an identify answer names."""
    return [f["individual_id"] for f in found], [s["sighting_id"] for f in found for s in f["sightings"]]


def _identify_answer(service: Service, species: str, found: list[dict], described: tuple[dict, dict]) -> dict:
    names, photos = described
    candidates = [
        {"rank": rank, "individual_id": f["individual_id"], "name": names.get(f["individual_id"]),
         "score": f["score"],
         "photos": [{**s, "url": f"/v1/photos/{photos[s['sighting_id']]}"} for s in f["sightings"]
                    if s["sighting_id"] in photos]}
        for rank, f in enumerate(found, 1)
    ]  # fmt: skip
    best = candidates[0]["score"] if candidates else None
    thr = service.threshold_for(species)
    new = None if thr is None else (best is None or best < thr)
    band, reason = service.band_for(species, best)
    return {"species": species, "model_id": service.model_id, "candidates": candidates, "best_score": best,
            "threshold": thr, "new_individual": new, "band": band, "band_reason": reason}  # fmt: skip
