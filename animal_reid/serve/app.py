"""The FastAPI app: versioned routes over a :class:`~animal_reid.serve.service.Service`.

Reads (embed, identify, list, photos) are open; every write needs ``Authorization: Bearer <token>`` (declared
in the OpenAPI spec as the ``bearer`` scheme, so ``/docs`` has an Authorize button). Uploads are checked before
any decoding (size, format, pixel count from the header); errors are one-line 4xx ``{"detail": "..."}`` answers
naming the problem. Species names are case-insensitive (stored lower-case). API docs at ``/docs`` and
``/redoc``, their scripts served by the app itself (no CDN: they work offline).
"""

from __future__ import annotations

import hmac
import io
import json
import math
import re
from contextlib import asynccontextmanager
from typing import Annotated

import numpy as np
from anyio import to_thread
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image, UnidentifiedImageError
from pydantic import AfterValidator, BaseModel, Field
from pydantic_core import PydanticCustomError

from animal_reid.serve.docs import add_offline_docs
from animal_reid.serve.page import PAGE
from animal_reid.serve.service import TOKEN_ENV, Service
from animal_reid.serve.settings import species_key
from animal_reid.serve.store import Conflict, NewPhoto, NotFound
from modeling.boxes_animal_reid import displayed_size


def _species(value: str) -> str:
    try:
        return species_key(value)
    except ValueError as err:
        raise PydanticCustomError("species", str(err)) from None


#: a species name as clients may send it: any case, stored and answered lower-case
Species = Annotated[str, AfterValidator(_species)]
SPECIES_HELP = "species, any case (stored lower-case): letters, digits, _"
BEARER = HTTPBearer(
    auto_error=False, scheme_name="bearer", description=f"the server's write token (its {TOKEN_ENV} variable)"
)


class NewIndividual(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    species: Species = Field(description=SPECIES_HELP)
    notes: str = Field(default="", max_length=10_000)


class MergeRequest(BaseModel):
    source: int = Field(description="the individual merged into this one (deleted afterwards)")


def _fail(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form"))
    return JSONResponse({"detail": f"{where or 'request'}: {first.get('msg', 'invalid')}"}, status_code=422)


def check_image(data: bytes, name: str, service: Service) -> NewPhoto:
    """A NewPhoto when ``data`` is an allowed image within the limits (read from its header); else a 4xx.

    Its width and height are as displayed (EXIF orientation applied): the coordinates boxes are given in.
    """
    limits = service.limits
    if len(data) > limits.max_upload_bytes:
        raise _fail(413, f"{name}: upload is over the {limits.max_upload_bytes} byte limit")
    if not data:
        raise _fail(400, f"{name}: the upload is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, displayed_size(im)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        if isinstance(err, Image.DecompressionBombError):
            raise _fail(413, f"{name}: image has too many pixels (decompression bomb?)") from err
        raise _fail(415, f"{name}: not an image in an allowed format ({', '.join(limits.formats)})") from err
    if fmt not in limits.formats:
        raise _fail(415, f"{name}: {fmt} images are not accepted (allowed: {', '.join(limits.formats)})")
    if w * h > limits.max_pixels:
        raise _fail(413, f"{name}: image is {w}x{h} pixels, over the {limits.max_pixels} pixel limit")
    return NewPhoto(data=data, format=fmt, width=w, height=h)


def parse_box(text: str | None, what: str = "box") -> list[float] | None:
    """``[x, y, w, h]`` from JSON (``[1, 2, 3, 4]``: numbers, not strings or booleans) or ``"1,2,3,4"``; None for
    empty; 422 otherwise. Boxes are in the photo's pixels as displayed (EXIF orientation applied); whether one fits
    its photo is the image processor's check, the same as everywhere else."""
    if text is None or not text.strip() or text.strip() == "null":
        return None
    try:
        value = json.loads(text) if text.strip().startswith("[") else [float(v) for v in text.split(",")]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise TypeError("not numbers")
        box = [float(v) for v in value]
    except (ValueError, TypeError) as err:
        raise _fail(422, f"{what}: expected [x, y, w, h] numbers, got {text[:80]!r}") from err
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
        raise _fail(422, f"{what}: expected 4 finite numbers [x, y, w, h] with w, h > 0, got {text[:80]!r}")
    return box


def _json_list(text: str | None, n: int, what: str) -> list:
    if text is None or not text.strip():
        return [None] * n
    try:
        value = json.loads(text)
    except ValueError as err:
        raise _fail(422, f"{what}: expected a JSON list, got {text[:80]!r}") from err
    if not isinstance(value, list) or len(value) != n:
        raise _fail(422, f"{what}: expected a JSON list of {n} entries (one per file)")
    return value


async def _read(upload: UploadFile, service: Service) -> NewPhoto:
    data = await upload.read(service.limits.max_upload_bytes + 1)
    return check_image(data, upload.filename or "upload", service)


async def _embed(service: Service, photo: NewPhoto, name: str, box, theta: float) -> np.ndarray:
    try:
        return await service.batcher.embed(photo.data, box, float(theta or 0.0))
    except (ValueError, OSError) as err:  # InvalidImageError is a ValueError; truncated files raise OSError
        reason = re.sub(r"^<\d+ bytes>: ", "", (str(err).splitlines() or [type(err).__name__])[0])
        raise _fail(400, f"{name}: cannot use this image: {reason[:300]}") from err


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
                  f"Writes need the server's token ({TOKEN_ENV}): press Authorize.")  # fmt: skip
    add_offline_docs(app)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.state.service = service

    @app.exception_handler(NotFound)
    async def _not_found(_r: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    async def _conflict(_r: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    app.add_middleware(BodyLimit, service=service)

    def writer(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if service.token is None:
            raise _fail(403, f"writes are disabled on this server (start it with {TOKEN_ENV} set)")
        if credentials is None:  # no header, another scheme, or no token after "Bearer"
            raise HTTPException(401, "writes need an 'Authorization: Bearer <token>' header",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        if not hmac.compare_digest(credentials.credentials.strip().encode(), service.token.encode()):
            raise _fail(403, "the bearer token is not valid for this server")

    _add_read_routes(app, service)
    _add_catalogue_reads(app, service)
    _add_write_routes(app, service, Depends(writer))
    return app


def _add_read_routes(app: FastAPI, service: Service) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        state = await to_thread.run_sync(service.ready)
        return JSONResponse(
            {"ready": all(state.values()), **state}, status_code=200 if all(state.values()) else 503
        )

    @app.post("/v1/embed")
    async def embed(
        files: Annotated[list[UploadFile], File(description="one or more images")],
        boxes: Annotated[str | None, Form(description="JSON list: [x, y, w, h] or null per file")] = None,
        thetas: Annotated[str | None, Form(description="JSON list: radians per file")] = None,
    ) -> dict:
        if len(files) > service.limits.max_files:
            raise _fail(413, f"{len(files)} files in one request; at most {service.limits.max_files}")
        box_list = [parse_box(None if b is None else json.dumps(b), f"boxes[{i}]")
                    for i, b in enumerate(_json_list(boxes, len(files), "boxes"))]  # fmt: skip
        theta_list = _json_list(thetas, len(files), "thetas")
        photos = [await _read(f, service) for f in files]
        rows = [await _embed(service, p, f.filename or "upload", b, t)
                for p, f, b, t in zip(photos, files, box_list, theta_list, strict=True)]  # fmt: skip
        return {"model_id": service.model_id, "preprocessing_key": service.preprocessing_key,
                "dim": service.dim, "embeddings": [r.tolist() for r in rows]}  # fmt: skip

    @app.post("/v1/identify")
    async def identify(
        file: Annotated[UploadFile, File(description="the photo to identify")],
        species: Annotated[Species, Form(description=SPECIES_HELP)],
        box: Annotated[str | None, Form(description="[x, y, w, h]")] = None,
        theta: Annotated[float, Form()] = 0.0,
        top_k: Annotated[int, Form(ge=1, le=100)] = 5,
    ) -> dict:
        if not service.index.has_sightings_of(species):  # else no database round trip for this check
            await _check_species(service, species)
        photo = await _read(file, service)
        emb = await _embed(service, photo, file.filename or "upload", parse_box(box), theta)
        found = service.index.search(emb, species, top_k)
        ids = _answer_ids(found)
        described = service.describe_cached(*ids)  # no thread hop when the answer needs no store read
        if described is None:
            described = await to_thread.run_sync(service.describe, *ids)
        return _identify_answer(service, species, found, described)


def _add_catalogue_reads(app: FastAPI, service: Service) -> None:
    @app.get("/v1/species")
    async def species() -> dict:
        """Species in the catalogue or in the threshold file, with their counts (the page's drop-down)."""
        return {"species": await to_thread.run_sync(service.species)}

    @app.get("/v1/individuals")
    async def list_individuals(
        species: Annotated[Species | None, Query(description=SPECIES_HELP)] = None,
    ) -> list[dict]:
        return await to_thread.run_sync(service.catalogue.list_individuals, species)

    @app.get("/v1/individuals/{individual_id}")
    async def get_individual(individual_id: int) -> dict:
        return await to_thread.run_sync(service.catalogue.get_individual, individual_id)

    @app.get("/v1/photos/{sha256}")
    async def photo(sha256: str) -> FileResponse:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise _fail(404, f"photo {sha256[:80]!r} is not in the catalogue (expected a sha256 hex digest)")
        path, fmt = await to_thread.run_sync(service.catalogue.find_photo, sha256)
        return FileResponse(path, media_type=f"image/{fmt.lower()}")

    @app.get("/v1/stats")
    async def stats() -> dict:
        return await to_thread.run_sync(service.stats)


async def _check_species(service: Service, species: str) -> None:
    known = await to_thread.run_sync(service.catalogue.species)
    if species not in known:
        raise _fail(
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
    return {"species": species, "model_id": service.model_id, "candidates": candidates,
            "best_score": best, "threshold": thr, "new_individual": new}  # fmt: skip


def _add_write_routes(app: FastAPI, service: Service, writer) -> None:
    @app.post("/v1/individuals", status_code=201, dependencies=[writer])
    async def create_individual(body: NewIndividual) -> dict:
        return await to_thread.run_sync(
            service.catalogue.create_individual, body.name, body.species, body.notes
        )

    @app.post("/v1/individuals/{individual_id}/merge", dependencies=[writer])
    async def merge(individual_id: int, body: MergeRequest) -> dict:
        return await to_thread.run_sync(service.merge, body.source, individual_id)

    @app.post("/v1/sightings", status_code=201, dependencies=[writer])
    async def add_sighting(
        file: Annotated[UploadFile, File(description="the photo of this sighting")],
        individual_id: Annotated[
            int | None, Form(description="a known individual (confirming a match)")
        ] = None,
        name: Annotated[
            str | None, Form(description="a new individual's name (instead of individual_id)")
        ] = None,
        species: Annotated[Species | None, Form(description=SPECIES_HELP)] = None,
        notes: Annotated[str, Form()] = "",
        box: Annotated[str | None, Form(description="[x, y, w, h]")] = None,
        theta: Annotated[float, Form()] = 0.0,
    ) -> dict:
        new = None
        if individual_id is None:
            if not name or not species:
                raise _fail(422, "give individual_id (a known individual) or name and species (a new one)")
            new = {"name": name, "species": species, "notes": notes}
        elif name or species:
            raise _fail(422, "give individual_id or name and species, not both")
        else:
            await to_thread.run_sync(service.catalogue.get_individual, individual_id)  # 404 before embedding
        photo = await _read(file, service)
        box_v = parse_box(box)
        emb = await _embed(service, photo, file.filename or "upload", box_v, theta)
        return await to_thread.run_sync(
            lambda: service.add_sighting(
                photo, emb, individual_id=individual_id, new_individual=new, box=box_v, theta=theta
            )  # fmt: skip
        )

    @app.delete("/v1/sightings/{sighting_id}", dependencies=[writer])
    async def delete_sighting(sighting_id: int) -> dict:
        return await to_thread.run_sync(service.delete_sighting, sighting_id)
