"""Filing a queue item into the catalogue and undoing it: the claim (compare-and-set on the item's version), one
sighting per photo through :meth:`Service.add_sighting`, and the change-log rows (``review.*``).

A claim is one UPDATE ``WHERE id = ? AND version = ? AND status IN ('waiting', 'unsure')``: of two submissions
the database lets exactly one through, in this process or another replica. Each sighting filed is written on its
queue photo at once, so an undo (or the clean-up of a filing that failed half-way) deletes exactly those.
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from animal_reid.serve import changelog
from animal_reid.serve.review_ingest import BatchPhoto
from animal_reid.serve.review_tables import OPEN, QueueItem, QueuePhoto, now
from animal_reid.serve.store import Conflict, Individual, NewPhoto, NotFound, Sighting, SightingMeta, name_key

KINDS = ("same", "new", "unsure", "not_animal")
_STATUS = {"same": "decided", "new": "decided", "unsure": "unsure", "not_animal": "rejected"}


def log(s: Session, actor: str, kind: str, **fields) -> None:
    """One change-log row in the session's transaction."""
    changelog.record(s, actor, kind, **fields)


# --- photos and embeddings ------------------------------------------------------------------------------------
def queue_photo(item_id: int, position: int, p: BatchPhoto, service) -> QueuePhoto:
    emb = np.ascontiguousarray(p.embedding, dtype=np.float32).reshape(-1)
    return QueuePhoto(
        item_id=item_id, position=position, file=p.file[:1000], sha256=p.photo.sha256, format=p.photo.format,
        width=p.photo.width, height=p.photo.height, n_bytes=p.photo.n_bytes, box=p.box, theta=p.theta,
        taken_at=p.taken_at, lat=p.lat, lon=p.lon, site=p.site, camera=p.camera, viewpoint=p.viewpoint,
        notes=p.notes or "", embedding=emb.tobytes(), dim=emb.size, model_id=service.model_id,
        preprocessing_key=service.preprocessing_key,
    )  # fmt: skip


def embedding(p: QueuePhoto, service) -> np.ndarray:
    """The photo's embedding by the service's model (made again when another model or preprocessing made it)."""
    if p.model_id == service.model_id and p.preprocessing_key == service.preprocessing_key:
        return np.frombuffer(p.embedding, dtype=np.float32)
    data = service.catalogue.photo_path(p.sha256, p.format).read_bytes()
    return np.asarray(service.batcher.encode([data], [p.box], [p.theta])[0], dtype=np.float32)


# --- decisions ------------------------------------------------------------------------------------------------
def check_decision(kind: str, individual_id: int | None, name: str | None) -> None:
    """ValueError (a 422) for a decision that is not complete."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "same" and individual_id is None:
        raise ValueError("'same' needs the individual_id of the animal it is")
    if kind == "new" and not (name or "").strip():
        raise ValueError("'new' needs a name for the new individual")


def _what(decision: dict) -> str:
    kind, name = decision.get("kind"), decision.get("individual_name")
    return {"same": f"same as {name}", "new": f"new individual {name}", "not_animal": "not an animal"}.get(
        kind, str(kind)
    )


def _refusal(item: QueueItem, version: int) -> str:
    if item.status in ("decided", "rejected"):
        return f"item {item.id} was already decided by {item.updated_by} ({_what(item.decision or {})})"
    return (
        f"item {item.id} changed since you loaded it (by {item.updated_by or 'someone'}, now {item.status}; "
        f"version {item.version}, you had {version}): reload it"
    )


def _individual(s: Session, individual_id: int) -> tuple[str, str]:
    ind = s.get(Individual, individual_id)
    if ind is None:
        raise NotFound(f"individual {individual_id} is not in the catalogue")
    return ind.name, ind.species


def _target(s: Session, item: QueueItem, kind: str, individual_id: int | None, name: str | None) -> dict:
    """The decision as claimed: the individual filed under (checked: it exists, same species; a new name not
    taken in the species)."""
    decision = {"kind": kind, "individual_id": None, "individual_name": None, "sighting_ids": [],
                "created_individual": False, "encounter_id": None, "skipped": []}  # fmt: skip
    if kind == "same":
        found, species = _individual(s, individual_id)
        if species != item.species:
            raise Conflict(
                f"individual {individual_id} ({found}) is a {species}, item {item.id} a {item.species}"
            )
        decision.update(individual_id=individual_id, individual_name=found)
    elif kind == "new":
        name = name.strip()
        same = sa.select(Individual.id, Individual.name).where(Individual.species == item.species)
        for iid, other in s.execute(same):
            if name_key(other) == name_key(name):
                raise Conflict(f"there is already a {item.species} named {other} (individual {iid})")
        decision.update(individual_name=name, created_individual=True)
    return decision


def claim(engine, item_id: int, version: int, kind: str, actor: str, individual_id=None, name=None) -> dict:
    """Mark the item decided / unsure / rejected if it is still open at ``version``; returns the decision as
    claimed with ``previous`` (the status it had). Conflict naming who decided what otherwise."""
    with changelog.write_session(engine) as s:
        item = s.get(QueueItem, item_id)
        if item is None:
            raise NotFound(f"item {item_id} is not in the review queue")
        if item.status not in OPEN or item.version != version:
            raise Conflict(_refusal(item, version))
        decision = _target(s, item, kind, individual_id, name)
        decision.update(by=actor, at=now().isoformat())
        previous = item.status
        done = s.execute(
            sa.update(QueueItem)
            .where(QueueItem.id == item_id, QueueItem.version == version, QueueItem.status.in_(OPEN))
            .values(
                status=_STATUS[kind],
                version=QueueItem.version + 1,
                updated_by=actor,
                updated_at=now(),
                decision=None if kind == "unsure" else decision,
            )  # fmt: skip
        )
        if done.rowcount != 1:
            s.refresh(item)
            raise Conflict(_refusal(item, version))
        if kind in ("unsure", "not_animal"):
            log(s, actor, "review.decide", before={"item": item_id, "status": previous},
                after={"item": item_id, "kind": kind})  # fmt: skip
    return {**decision, "previous": previous}


def _meta(item: QueueItem, p: QueuePhoto) -> SightingMeta:
    lat, lon = (p.lat, p.lon) if p.lat is not None else (item.lat, item.lon)
    return SightingMeta(
        taken_at=p.taken_at, lat=lat, lon=lon, site=p.site or item.site or "", viewpoint=p.viewpoint or "",
        observer=item.observer or "", notes=p.notes or "",
    )  # fmt: skip


def _encounter(service, item: QueueItem, actor: str) -> int:
    row = service.catalogue.create_encounter(
        item.species, actor, started_at=item.started_at, ended_at=item.ended_at, site=item.site or "",
        lat=item.lat, lon=item.lon, observer=item.observer or "", notes=item.notes or "",
    )  # fmt: skip
    return int(row["id"])


def _load(engine, item_id: int) -> tuple[QueueItem, list[QueuePhoto]]:
    with Session(engine, expire_on_commit=False) as s:
        item = s.get(QueueItem, item_id)
        q = sa.select(QueuePhoto).where(QueuePhoto.item_id == item_id).order_by(QueuePhoto.position)
        return item, list(s.scalars(q))


def _set_sighting(engine, photo_id: int, sighting_id: int | None) -> None:
    with changelog.write_session(engine) as s:
        s.execute(sa.update(QueuePhoto).where(QueuePhoto.id == photo_id).values(sighting_id=sighting_id))


def _file_photo(service, engine, item, p: QueuePhoto, decision: dict, encounter_id: int, actor: str) -> None:
    data = service.catalogue.photo_path(p.sha256, p.format).read_bytes()
    photo = NewPhoto(data=data, format=p.format, width=p.width, height=p.height)
    target = decision["individual_id"]
    new = None if target is not None else {"name": decision["individual_name"], "species": item.species}
    try:
        row = service.add_sighting(
            photo, embedding(p, service), individual_id=target, new_individual=new, box=p.box, theta=p.theta,
            meta=_meta(item, p), encounter_id=encounter_id, actor=actor,
        )  # fmt: skip
    except Conflict as err:
        if target is None:  # the new individual could not be made (a name taken meanwhile): nothing filed
            raise
        decision["skipped"].append(f"{p.file}: {err}")  # the same photo already filed under this individual
        return
    _set_sighting(engine, p.id, row["id"])
    decision["sighting_ids"].append(row["id"])
    decision.update(individual_id=row["individual_id"], individual_name=row.get("individual_name"))


def file_item(service, engine, item_id: int, decision: dict, actor: str) -> None:
    """File every photo of a claimed item as a sighting (a new individual made with the first, for ``new``);
    on a failure, what was filed is deleted again and the item reopened, and the error raised."""
    item, photos = _load(engine, item_id)
    try:
        encounter_id = _encounter(service, item, actor)
        decision["encounter_id"] = encounter_id
        for p in photos:
            _file_photo(service, engine, item, p, decision, encounter_id, actor)
    except Exception:
        _remove_filed(service, engine, photos, decision, actor)
        _reopen(engine, item_id, decision["previous"], actor)
        raise
    previous = decision.pop("previous")
    with changelog.write_session(engine) as s:
        s.execute(sa.update(QueueItem).where(QueueItem.id == item_id).values(decision=decision))
        log(s, actor, "review.decide", individual_id=decision["individual_id"],
            before={"item": item_id, "status": previous}, after={"item": item_id, **decision})  # fmt: skip


def _reopen(engine, item_id: int, status: str, actor: str) -> None:
    with changelog.write_session(engine) as s:
        s.execute(
            sa.update(QueueItem).where(QueueItem.id == item_id)
            .values(status=status, decision=None, version=QueueItem.version + 1, updated_by=actor,
                    updated_at=now())
        )  # fmt: skip


def _remove_filed(service, engine, photos: list[QueuePhoto], decision: dict, actor: str) -> list[str]:
    """Delete the sightings the item's photos were filed as, then the individual the decision created when it
    has no sighting left, and the encounter it created; returns what was kept and why (one line each)."""
    kept = []
    with Session(engine) as s:
        filed = dict(s.execute(sa.select(QueuePhoto.id, QueuePhoto.sighting_id)
                               .where(QueuePhoto.id.in_([p.id for p in photos]))).all())  # fmt: skip
    for photo_id, sighting_id in filed.items():
        if sighting_id is None:
            continue
        try:
            service.delete_sighting(sighting_id, actor=actor)
        except NotFound:
            kept.append(f"sighting {sighting_id} was already deleted")
        _set_sighting(engine, photo_id, None)
    iid, encounter_id = decision.get("individual_id"), decision.get("encounter_id")
    if decision.get("created_individual") and iid is not None:
        kept += _delete_if_empty(service, engine, iid, actor)
    if encounter_id is not None:
        kept += _delete_encounter(service, encounter_id, actor)
    return kept


def _delete_encounter(service, encounter_id: int, actor: str) -> list[str]:
    """Delete the encounter the decision made, unless sightings were put in it since."""
    try:
        service.catalogue.delete_encounter(encounter_id, actor)
    except NotFound:
        return [f"encounter {encounter_id} was already deleted"]
    except Conflict as err:
        return [f"{err}: kept"]
    return []


def _delete_if_empty(service, engine, individual_id: int, actor: str) -> list[str]:
    with Session(engine) as s:
        exists = s.get(Individual, individual_id)
        n = s.scalar(sa.select(sa.func.count()).where(Sighting.individual_id == individual_id))
    if exists is None:
        return [f"individual {individual_id} was already deleted or merged"]
    if n:
        return [f"individual {individual_id} kept: it has {n} other sightings"]
    service.delete_individual(individual_id, actor=actor)
    return []


def undo_item(service, engine, item_id: int, actor: str) -> None:
    """Reopen a decided, rejected or unsure item: what it filed deleted (module docstring), the undo logged."""
    with changelog.write_session(engine) as s:
        item = s.get(QueueItem, item_id)
        if item is None:
            raise NotFound(f"item {item_id} is not in the review queue")
        if item.status == "waiting":
            raise Conflict(f"item {item_id} has no decision to undo (it is waiting)")
        before = {"item": item_id, "status": item.status, "decision": item.decision}
        done = s.execute(
            sa.update(QueueItem).where(QueueItem.id == item_id, QueueItem.version == item.version)
            .values(status="waiting", decision=None, version=QueueItem.version + 1, updated_by=actor,
                    updated_at=now())
        )  # fmt: skip
        if done.rowcount != 1:
            raise Conflict(f"item {item_id} changed while it was being undone: reload it")
    _, photos = _load(engine, item_id)
    kept = _remove_filed(service, engine, photos, before["decision"] or {}, actor)
    with changelog.write_session(engine) as s:
        iid = (before["decision"] or {}).get("individual_id")
        log(s, actor, "review.undo", individual_id=iid, before=before, after={"item": item_id, "kept": kept})
