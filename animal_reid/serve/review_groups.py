"""Proposed new individuals: the encounters of a batch called new, clustered by the library's discovery
(:func:`animal_reid.season.discovery.discover`: one encounter starts as one node, two animals of one photo never
join) into groups a reviewer accepts (one new individual from all its items), splits or merges.

Accepting a group decides its open items through the queue (the first ``new``, the others ``same`` as it), so each
item's filing can be undone on its own. Group changes are compare-and-set on the group's status (and its
``version`` when the page sends one) and are logged as ``review.group_*``.
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from animal_reid.season.discovery import discover, proposed_ids
from animal_reid.serve import changelog
from animal_reid.serve.review_ingest import BatchPhoto
from animal_reid.serve.review_tables import OPEN, Batch, Group, QueueItem, now
from animal_reid.serve.store import Conflict, NotFound

#: cosine similarity from which two new encounters are proposed as one individual (single linkage), used until
#: the species has calibrated bands (then their ``known_above`` is the better choice: discovery's docstring)
DEFAULT_GROUP_THRESHOLD = 0.8


def propose_groups(s: Session, batch: Batch, items: list[QueueItem], photos: list[list[BatchPhoto]],
                   catalogued: bool, threshold: float) -> list[Group]:  # fmt: skip
    """Cluster the batch's items called new (every item when the catalogue holds none of the species) into
    proposed groups; sets each such item's ``group_id``."""
    new = [(it, ps) for it, ps in zip(items, photos, strict=True) if it.band == "new" or not catalogued]
    if not new:
        return []
    emb = np.stack([p.embedding for _, ps in new for p in ps])
    must = [it.id for it, ps in new for _ in ps]
    cannot = [p.photo.sha256 for _, ps in new for p in ps]
    labels = discover(emb, threshold, must_link_groups=must, cannot_link=cannot, k=min(10, max(1, len(emb) - 1)),
                      conflicts="split")  # fmt: skip
    first_row = np.cumsum([0] + [len(ps) for _, ps in new[:-1]])
    item_labels = labels[first_row]
    names = proposed_ids(item_labels, batch.species, prefix=f"new-b{batch.id}")
    groups: dict[int, Group] = {}
    for (it, _), label, name in zip(new, item_labels.tolist(), names, strict=True):
        if label not in groups:
            groups[label] = Group(batch_id=batch.id, species=batch.species, status="proposed",
                                  proposed_name=name.replace(":", "-"), version=1, created_at=now())  # fmt: skip
            s.add(groups[label])
            s.flush()
        it.group_id = groups[label].id
    return list(groups.values())


def _group_dict(g: Group, items: list[tuple[int, str]]) -> dict:
    return {
        "id": g.id, "batch_id": g.batch_id, "species": g.species, "status": g.status,
        "proposed_name": g.proposed_name, "individual_id": g.individual_id, "version": g.version,
        "items": [i for i, _ in items], "open_items": [i for i, st in items if st in OPEN],
        "updated_by": g.updated_by,
    }  # fmt: skip


def _items_of(s: Session, group_ids: list[int]) -> dict[int, list[tuple[int, str]]]:
    out: dict[int, list[tuple[int, str]]] = {g: [] for g in group_ids}
    q = (sa.select(QueueItem.group_id, QueueItem.id, QueueItem.status)
         .where(QueueItem.group_id.in_(group_ids)).order_by(QueueItem.id))  # fmt: skip
    for gid, iid, status in s.execute(q):
        out[gid].append((iid, status))
    return out


def list_groups(
    engine, batch: int | None = None, species: str | None = None, status: str | None = None
) -> list:
    with Session(engine) as s:
        q = sa.select(Group).order_by(Group.id)
        for cond in (Group.batch_id == batch if batch is not None else None,
                     Group.species == species if species else None,
                     Group.status == status if status else None):  # fmt: skip
            if cond is not None:
                q = q.where(cond)
        groups = list(s.scalars(q))
        items = _items_of(s, [g.id for g in groups])
        return [_group_dict(g, items[g.id]) for g in groups]


def get_group(engine, group_id: int) -> dict:
    with Session(engine) as s:
        g = _group(s, group_id)
        return _group_dict(g, _items_of(s, [group_id])[group_id])


def _group(s: Session, group_id: int) -> Group:
    g = s.get(Group, group_id)
    if g is None:
        raise NotFound(f"group {group_id} is not in the review queue")
    return g


def _check_open(g: Group, version: int | None) -> None:
    if g.status == "accepted":
        raise Conflict(f"group {g.id} was already accepted by {g.updated_by} (individual {g.individual_id})")
    if g.status == "merged":
        raise Conflict(f"group {g.id} was merged into another group by {g.updated_by}: reload the groups")
    if version is not None and version != g.version:
        raise Conflict(f"group {g.id} changed since you loaded it (by {g.updated_by}): reload it")


def _bump(s: Session, g: Group, actor: str, **values) -> None:
    """Compare-and-set the group at the version read (Conflict when another request changed it meanwhile)."""
    done = s.execute(
        sa.update(Group).where(Group.id == g.id, Group.version == g.version, Group.status == "proposed")
        .values(version=Group.version + 1, updated_by=actor, updated_at=now(), **values)
    )  # fmt: skip
    if done.rowcount != 1:
        raise Conflict(f"group {g.id} changed while this request ran: reload it")


def accept(queue, group_id: int, name: str, actor: str, version: int | None = None) -> dict:
    """One new individual named ``name`` from every open item of the group (module docstring)."""
    if not (name or "").strip():
        raise ValueError("accepting a group needs a name for the new individual")
    with changelog.write_session(queue.engine) as s:
        g = _group(s, group_id)
        _check_open(g, version)
        todo = [(i, st) for i, st in _items_of(s, [group_id])[group_id] if st in OPEN]
        if not todo:
            raise Conflict(f"group {group_id} has no item waiting: nothing to accept")
        _bump(s, g, actor, status="accepted")
    try:
        first = queue.decide(todo[0][0], "new", _version(queue, todo[0][0]), actor, name=name)
    except Exception:
        _reopen(queue.engine, group_id, actor)
        raise
    iid = first["decision"]["individual_id"]
    refused = []
    for item_id, _ in todo[1:]:
        try:
            queue.decide(item_id, "same", _version(queue, item_id), actor, individual_id=iid)
        except Conflict as err:  # decided by someone else meanwhile
            refused.append(str(err))
    with changelog.write_session(queue.engine) as s:
        s.execute(sa.update(Group).where(Group.id == group_id).values(individual_id=iid))
        changelog.record(s, actor, "review.group_accept", individual_id=iid,
                         after={"group": group_id, "items": [i for i, _ in todo], "refused": refused})  # fmt: skip
    return get_group(queue.engine, group_id)


def _version(queue, item_id: int) -> int:
    with Session(queue.engine) as s:
        return int(s.scalar(sa.select(QueueItem.version).where(QueueItem.id == item_id)))


def _reopen(engine, group_id: int, actor: str) -> None:
    with changelog.write_session(engine) as s:
        s.execute(sa.update(Group).where(Group.id == group_id)
                  .values(status="proposed", version=Group.version + 1, updated_by=actor, updated_at=now()))  # fmt: skip


def split(engine, group_id: int, item_ids: list[int], actor: str, version: int | None = None) -> list[dict]:
    """Move ``item_ids`` out of the group into a new proposed group; returns [the group, the new group]."""
    with changelog.write_session(engine) as s:
        g = _group(s, group_id)
        _check_open(g, version)
        members = [i for i, _ in _items_of(s, [group_id])[group_id]]
        outside = sorted(set(item_ids) - set(members))
        if not item_ids or outside:
            raise ValueError(f"items {outside or item_ids} are not in group {group_id} (it has {members})")
        if set(item_ids) >= set(members):
            raise ValueError(f"split off some of group {group_id}'s items, not all of them")
        n = s.scalar(sa.select(sa.func.count()).where(Group.batch_id == g.batch_id)) + 1
        new = Group(batch_id=g.batch_id, species=g.species, status="proposed", version=1, created_at=now(),
                    proposed_name=f"{g.proposed_name}-{n}", updated_by=actor, updated_at=now())  # fmt: skip
        s.add(new)
        s.flush()
        s.execute(sa.update(QueueItem).where(QueueItem.id.in_(item_ids)).values(group_id=new.id))
        _bump(s, g, actor)
        changelog.record(s, actor, "review.group_split", after={"group": group_id, "new_group": new.id,
                                                                 "items": sorted(item_ids)})  # fmt: skip
        ids = [g.id, new.id]
    return [get_group(engine, i) for i in ids]


def merge(engine, group_ids: list[int], actor: str) -> dict:
    """Move every item of the second group into the first (the second kept as ``merged``); returns the first."""
    if len(group_ids) != 2 or group_ids[0] == group_ids[1]:
        raise ValueError(f"merge needs two different groups [a, b], got {group_ids}")
    a_id, b_id = group_ids
    with changelog.write_session(engine) as s:
        a, b = _group(s, a_id), _group(s, b_id)
        _check_open(a, None)
        _check_open(b, None)
        if a.species != b.species:
            raise Conflict(
                f"group {a_id} holds {a.species}, group {b_id} {b.species}: only one species merges"
            )
        s.execute(sa.update(QueueItem).where(QueueItem.group_id == b_id).values(group_id=a_id))
        _bump(s, b, actor, status="merged")
        _bump(s, a, actor)
        changelog.record(s, actor, "review.group_merge", after={"group": a_id, "merged": b_id})
    return get_group(engine, a_id)
