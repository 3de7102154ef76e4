"""The review queue's routes: batch upload, the queue, decisions and undo, and discovery's groups.

Reads are open; writes take the reviewer's name from ``writer`` (a FastAPI ``Depends`` yielding it), which goes
into the change log. Errors are one-line ``{"detail": ...}`` answers: 404 for an unknown item or group, 409 for a
decision refused (decided already, changed since the page loaded it), 413/415/422 for an upload refused.

No ``from __future__ import annotations`` here: the routes' annotations name the reviewer type made per app
(``Annotated[str, writer]``), which FastAPI must see as an object, not as a name to look up in this module.
"""

from typing import Annotated

from anyio import to_thread
from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse

from animal_reid.serve import review_groups
from animal_reid.serve.review import ReviewQueue
from animal_reid.serve.review_ingest import BatchError
from animal_reid.serve.review_models import (
    AcceptIn,
    BatchesOut,
    BatchOut,
    DecideIn,
    GroupOut,
    GroupsOut,
    Item,
    MergeIn,
    QueueOut,
    SplitIn,
)
from animal_reid.serve.settings import species_key
from animal_reid.serve.store import Conflict, NotFound

MAX_GAP_MIN = 7 * 24 * 60
REFUSED = {
    404: {"description": "no such item or group"},
    409: {"description": "decided already, or changed since"},
}


async def _run(fn, *args):
    """``fn(*args)`` in a worker thread, its errors as one-line HTTP answers."""
    try:
        return await to_thread.run_sync(fn, *args)
    except BatchError as err:
        raise HTTPException(err.status, str(err)) from None
    except NotFound as err:
        raise HTTPException(404, str(err)) from None
    except Conflict as err:
        raise HTTPException(409, str(err)) from None
    except ValueError as err:
        raise HTTPException(422, str(err)) from None


def _species(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        return species_key(value)
    except ValueError as err:
        raise HTTPException(422, f"species: {err}") from None


def add_review_routes(app: FastAPI, service, writer, queue: ReviewQueue | None = None) -> ReviewQueue:
    """Add the review routes for ``service`` to ``app`` (``writer``: ``Depends(...)`` giving the reviewer's
    name); returns the queue (also ``app.state.review_queue``)."""
    queue = queue or ReviewQueue(service)
    app.state.review_queue = queue
    _add_batch_routes(app, queue, Annotated[str, writer])
    _add_queue_routes(app, queue, Annotated[str, writer])
    _add_group_routes(app, queue, Annotated[str, writer])
    return queue


def _add_batch_routes(app: FastAPI, queue: ReviewQueue, Reviewer) -> None:
    @app.post(
        "/v1/batches",
        status_code=201,
        response_model=BatchOut,
        tags=["review"],
        responses={413: {"description": "a file or zip entry over the limits"}, 415: {}},
    )
    async def upload_batch(
        reviewer: Reviewer,
        files: Annotated[
            list[UploadFile],
            File(
                description="photos, or one .zip (photos + MegaDetector JSON "
                "or a Camtrap DP datapackage.json)"
            ),
        ],  # fmt: skip
        species: Annotated[str, Form(description="the batch's species, any case")],
        observer: Annotated[str | None, Form(max_length=200)] = None,
        site: Annotated[str | None, Form(max_length=200)] = None,
        encounter_gap_min: Annotated[
            float, Form(ge=0, le=MAX_GAP_MIN, description="minutes between photos of one encounter")
        ] = 60.0,  # fmt: skip
    ) -> dict:
        sp = _species(species)
        if sp is None:
            raise HTTPException(422, "species: the batch needs its species")
        pairs = [(f.filename, f.file) for f in files]
        return await _run(lambda: queue.create_batch(pairs, sp, reviewer, observer or None, site or None,
                                                     encounter_gap_min))  # fmt: skip

    @app.get("/v1/batches", response_model=BatchesOut, tags=["review"])
    async def list_batches(species: str | None = None) -> dict:
        return {"batches": await _run(queue.list_batches, _species(species))}


def _add_queue_routes(app: FastAPI, queue: ReviewQueue, Reviewer) -> None:
    @app.get("/v1/queue", response_model=QueueOut, tags=["review"])
    async def list_queue(
        species: str | None = None,
        status: Annotated[str, Query(description="waiting | unsure | decided | rejected | all")] = "waiting",
        batch: int | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict:
        shown = None if status == "all" else status
        return await _run(lambda: queue.list_items(_species(species), shown, batch, limit, offset))

    @app.get("/v1/queue/photos/{photo_id}", tags=["review"])
    async def queue_photo(photo_id: int) -> FileResponse:
        path, fmt = await _run(queue.photo_file, photo_id)
        return FileResponse(path, media_type=f"image/{fmt.lower()}")

    @app.get("/v1/queue/{item_id}", response_model=Item, tags=["review"])
    async def get_item(item_id: int) -> dict:
        return await _run(queue.get_item, item_id)

    @app.post("/v1/queue/{item_id}/decide", response_model=Item, tags=["review"], responses=REFUSED)
    async def decide(item_id: int, body: DecideIn, reviewer: Reviewer) -> dict:
        return await _run(lambda: queue.decide(item_id, body.kind, body.version, reviewer,
                                               individual_id=body.individual_id, name=body.name))  # fmt: skip

    @app.post("/v1/queue/{item_id}/undo", response_model=Item, tags=["review"], responses=REFUSED)
    async def undo(item_id: int, reviewer: Reviewer) -> dict:
        return await _run(queue.undo, item_id, reviewer)


def _add_group_routes(app: FastAPI, queue: ReviewQueue, Reviewer) -> None:
    @app.get("/v1/groups", response_model=GroupsOut, tags=["review"])
    async def list_groups(
        batch: int | None = None, species: str | None = None, status: str | None = None
    ) -> dict:
        groups = await _run(review_groups.list_groups, queue.engine, batch, _species(species), status)
        return {"groups": groups}

    @app.post("/v1/groups/merge", response_model=GroupOut, tags=["review"], responses=REFUSED)
    async def merge_groups(body: MergeIn, reviewer: Reviewer) -> dict:
        return await _run(review_groups.merge, queue.engine, body.groups, reviewer)

    @app.get("/v1/groups/{group_id}", response_model=GroupOut, tags=["review"])
    async def get_group(group_id: int) -> dict:
        return await _run(review_groups.get_group, queue.engine, group_id)

    @app.post("/v1/groups/{group_id}/accept", response_model=GroupOut, tags=["review"], responses=REFUSED)
    async def accept_group(group_id: int, body: AcceptIn, reviewer: Reviewer) -> dict:
        return await _run(review_groups.accept, queue, group_id, body.name, reviewer, body.version)

    @app.post("/v1/groups/{group_id}/split", response_model=GroupsOut, tags=["review"], responses=REFUSED)
    async def split_group(group_id: int, body: SplitIn, reviewer: Reviewer) -> dict:
        groups = await _run(review_groups.split, queue.engine, group_id, body.items, reviewer, body.version)
        return {"groups": groups}
