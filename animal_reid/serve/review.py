"""The review queue: uploaded batches become encounters waiting for a reviewer, each with its candidates from the
catalogue and a band (likely known / unsure / likely new); a reviewer files it as the same animal as a candidate, a
new individual, skips it as unsure, or rejects it as not an animal, and can undo that.

* **Batches** (:meth:`ReviewQueue.create_batch`): read by :mod:`animal_reid.serve.review_ingest`, each photo stored
  content-addressed in the catalogue's photo folder and its embedding kept (pending) in ``queue_photos``; one queue
  item per encounter; encounters called new are grouped into proposed new individuals
  (:mod:`animal_reid.serve.review_groups`).
* **Candidates** are computed when an item is shown, from the live index: each photo of the encounter searched, the
  per-photo scores fused per individual (:func:`animal_reid.season.matching.rank`, best photo's score), so an
  individual filed a minute ago from the same batch is already a candidate. Each candidate lists its best matching
  catalogue photos first, with the item photo each matched.
* **Decisions** are compare-and-set on the item's ``version`` in the database: the first of two submissions (two
  reviewers, a double click, two replicas) wins; the other gets 409 naming who decided what, and nothing is filed
  twice. Filing goes through :meth:`Service.add_sighting` (store and index in step), one sighting per photo, each
  recorded on its queue photo as it is made, so :meth:`ReviewQueue.undo` deletes exactly what was filed. Every
  decision and undo is a row of the change log.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from animal_reid.season.matching import rank
from animal_reid.serve import changelog
from animal_reid.serve import review_filing as filing
from animal_reid.serve.review_groups import DEFAULT_GROUP_THRESHOLD, propose_groups
from animal_reid.serve.review_ingest import (
    BatchError,
    BatchPhoto,
    ZipLimits,
    embed_photos,
    encounters,
    extract_zip,
    read_batch,
    write_uploads,
)
from animal_reid.serve.review_tables import OPEN, STATUSES, Batch, QueueItem, QueuePhoto, now
from animal_reid.serve.store import NotFound

logger = logging.getLogger(__name__)


def band_of(service, species: str, best: float | None) -> tuple[str | None, str]:
    """(band, reason) for an encounter whose best candidate scores ``best`` (None: no candidate at all)."""
    if best is None:
        return "new", f"no {species} in the catalogue is comparable yet: a new individual"
    return service.band_for(species, best)


def _batch_dict(b: Batch) -> dict:
    return {
        "id": b.id, "species": b.species, "source": b.source, "upload": b.upload, "n_photos": b.n_photos,
        "n_encounters": b.n_encounters, "n_items": b.n_items, "skipped": list(b.skipped or []),
        "observer": b.observer, "site": b.site, "encounter_gap_min": b.gap_min,
        "created_by": b.created_by, "created_at": b.created_at.isoformat(),
    }  # fmt: skip


def _photo_dict(p: QueuePhoto) -> dict:
    return {
        "id": p.id, "url": f"/v1/queue/photos/{p.id}", "file": p.file, "box": p.box, "theta": p.theta,
        "width": p.width, "height": p.height, "taken_at": p.taken_at, "site": p.site, "camera": p.camera,
        "viewpoint": p.viewpoint, "sighting_id": p.sighting_id,
    }  # fmt: skip


def _item_dict(item: QueueItem, photos: list[QueuePhoto], matched: dict) -> dict:
    return {
        "id": item.id, "batch_id": item.batch_id, "species": item.species, "status": item.status,
        **matched, "photos": [_photo_dict(p) for p in photos], "group_id": item.group_id,
        "decision": item.decision, "version": item.version, "started_at": item.started_at,
        "ended_at": item.ended_at, "site": item.site, "lat": item.lat, "lon": item.lon,
        "observer": item.observer, "notes": item.notes, "updated_by": item.updated_by,
        "updated_at": item.updated_at.isoformat() if item.updated_at else None,
        "created_at": item.created_at.isoformat(),
    }  # fmt: skip


class ReviewQueue:
    """The review queue of one service: batches in, decisions out (module docstring)."""

    def __init__(self, service, zip_limits: ZipLimits | None = None,
                 group_threshold: float = DEFAULT_GROUP_THRESHOLD, top_k: int = 5):  # fmt: skip
        self.service = service
        self.zip_limits = zip_limits or ZipLimits()
        self.group_threshold = group_threshold
        self.top_k = top_k
        # one decision at a time in this process; between replicas the database's compare-and-set arbitrates
        self.lock = threading.Lock()

    @property
    def engine(self) -> sa.Engine:
        return self.service.catalogue.engine

    def group_threshold_for(self, species: str) -> float:
        """Discovery's similarity for ``species``: its calibrated ``known_above`` once it has bands, else
        :attr:`group_threshold`."""
        calibration = self.service.calibration
        fit = calibration.fit_of(species) if calibration is not None else None
        return float(fit.band.known_above) if fit is not None else self.group_threshold

    # --- batches ------------------------------------------------------------------------------------------
    def create_batch(self, files: list[tuple[str | None, object]], species: str, actor: str,
                     observer: str | None = None, site: str | None = None, gap_min: float = 60.0) -> dict:  # fmt: skip
        """Read an upload (``files``: (name, binary file) pairs: photos, or one zip) into queue items."""
        with tempfile.TemporaryDirectory(prefix="animal-reid-batch-") as tmp:
            root = Path(tmp)
            rels, upload = self._write_upload(files, root)
            read = read_batch(root, rels, species, self.service, site=site, observer=observer)
            photos = embed_photos(self.service.batcher.encode, read.photos, read.skipped)
            for head in {p.photo.sha256: p.photo for p in photos}.values():
                self.service.catalogue.write_photo(head.read())
        groups = encounters(photos, species, gap_min)
        catalogued = self.service.index.has_sightings_of(species)
        matched = [self._match(species, [p.embedding for p in g]) for g in groups]
        with changelog.write_session(self.engine) as s:
            batch = Batch(species=species, source=read.source, upload=upload[:255], n_photos=read.n_files,
                          n_encounters=len(groups), n_items=len(groups), skipped=read.skipped, observer=observer,
                          site=site, gap_min=float(gap_min), created_by=actor, created_at=now())  # fmt: skip
            s.add(batch)
            s.flush()
            items = [self._add_item(s, batch, g, m) for g, m in zip(groups, matched, strict=True)]
            propose_groups(s, batch, items, groups, catalogued, self.group_threshold_for(species))
            filing.log(s, actor, "review.batch", after=_batch_dict(batch))
            out = _batch_dict(batch)
        logger.info("batch %d: %d photos, %d encounters queued, %d skipped", out["id"], len(photos),
                    len(groups), len(read.skipped))  # fmt: skip
        return out

    def _write_upload(self, files, root: Path) -> tuple[list[str], str]:
        zips = [(n, f) for n, f in files if (n or "").lower().endswith(".zip")]
        if zips and len(files) > 1:
            raise BatchError("send either photos or one .zip file, not both or several zips")
        if zips:
            name, fileobj = zips[0]
            rels = extract_zip(fileobj, name, root, self.service.limits.max_upload_bytes, self.zip_limits)
            return rels, name
        if not files:
            raise BatchError("the upload holds no files")
        if len(files) > self.zip_limits.max_entries:
            raise BatchError(f"{len(files)} files in one batch; at most {self.zip_limits.max_entries}", 413)
        cap = self.service.limits.max_upload_bytes + 1  # one byte over is enough to refuse it
        names = write_uploads([(n, f.read(cap)) for n, f in files], root)
        return names, f"{len(names)} photos"

    def _add_item(self, s: Session, batch: Batch, photos: list[BatchPhoto], matched: dict) -> QueueItem:
        first = photos[0]
        dates = [p.taken_at for p in photos if p.taken_at]
        notes = "; ".join(dict.fromkeys(p.notes for p in photos if p.notes))
        item = QueueItem(
            batch_id=batch.id, species=batch.species, status="waiting", version=1,
            started_at=min(dates) if dates else None, ended_at=max(dates) if dates else None,
            site=next((p.site for p in photos if p.site), None), lat=first.lat, lon=first.lon,
            observer=next((p.observer for p in photos if p.observer), None), notes=notes,
            band=matched["band"], band_reason=matched["band_reason"], best_score=matched["best_score"],
            created_at=now(),
        )  # fmt: skip
        s.add(item)
        s.flush()
        for i, p in enumerate(photos):
            s.add(filing.queue_photo(item.id, i, p, self.service))
        return item

    def list_batches(self, species: str | None = None) -> list[dict]:
        with Session(self.engine) as s:
            q = sa.select(Batch).order_by(Batch.id.desc())
            if species is not None:
                q = q.where(Batch.species == species)
            return [_batch_dict(b) for b in s.scalars(q)]

    # --- candidates ---------------------------------------------------------------------------------------
    def _match(self, species: str, embeddings: list[np.ndarray], photo_ids: list[int] | None = None) -> dict:
        """{candidates, best_score, band, band_reason} of an encounter from the live index (module docstring)."""
        ids = photo_ids or [None] * len(embeddings)
        hits = [self.service.index.search(e, species, self.top_k, per_individual=3) for e in embeddings]
        individuals = list(dict.fromkeys(h["individual_id"] for found in hits for h in found))
        scores = np.full((len(hits), len(individuals)), np.nan)
        photos: dict[int, dict[int, tuple[float, int | None]]] = {i: {} for i in individuals}
        for row, found in enumerate(hits):
            for h in found:
                scores[row, individuals.index(h["individual_id"])] = h["score"]
                for sh in h["sightings"]:
                    seen = photos[h["individual_id"]].get(sh["sighting_id"])
                    if seen is None or sh["score"] > seen[0]:
                        photos[h["individual_id"]][sh["sighting_id"]] = (sh["score"], ids[row])
        order, fused = rank(scores, "max") if individuals else ([], [])
        top = [individuals[j] for j in list(order)[: self.top_k]]
        fused_of = {individuals[j]: float(fused[j]) for j in list(order)[: self.top_k]}
        candidates = self._describe(top, fused_of, photos)
        best = candidates[0]["score"] if candidates else None
        band, reason = band_of(self.service, species, best)
        return {"candidates": candidates, "best_score": best, "band": band, "band_reason": reason}

    def _describe(self, top: list[int], fused: dict[int, float], photos: dict) -> list[dict]:
        best_photos = {i: sorted(photos[i].items(), key=lambda kv: -kv[1][0])[:3] for i in top}
        sids = [sid for i in top for sid, _ in best_photos[i]]
        names, shas = self.service.describe(top, sids)
        return [
            {"individual_id": i, "name": names.get(i), "score": fused[i],
             "photos": [{"sighting_id": sid, "url": f"/v1/photos/{shas[sid]}", "score": sc, "query_photo_id": q}
                        for sid, (sc, q) in best_photos[i] if sid in shas]}
            for i in top if i in names
        ]  # fmt: skip

    # --- items --------------------------------------------------------------------------------------------
    def _photos(self, s: Session, item_ids: list[int]) -> dict[int, list[QueuePhoto]]:
        out: dict[int, list[QueuePhoto]] = {i: [] for i in item_ids}
        q = sa.select(QueuePhoto).where(QueuePhoto.item_id.in_(item_ids)).order_by(QueuePhoto.position)
        for p in s.scalars(q):
            out[p.item_id].append(p)
        return out

    def _shown(self, item: QueueItem, photos: list[QueuePhoto]) -> dict:
        if item.status in OPEN:
            embs = [filing.embedding(p, self.service) for p in photos]
            matched = self._match(item.species, embs, [p.id for p in photos])
        else:  # filed or rejected: its own sightings would be its best match; the band it had is kept
            matched = {"candidates": [], "best_score": item.best_score, "band": item.band,
                       "band_reason": item.band_reason}  # fmt: skip
        return _item_dict(item, photos, matched)

    def get_item(self, item_id: int) -> dict:
        with Session(self.engine) as s:
            item = s.get(QueueItem, item_id)
            if item is None:
                raise NotFound(f"item {item_id} is not in the review queue")
            return self._shown(item, self._photos(s, [item_id])[item_id])

    def list_items(self, species: str | None = None, status: str | None = "waiting", batch: int | None = None,
                   limit: int = 50, offset: int = 0) -> dict:  # fmt: skip
        """{"items": [...], "counts": {status: n}}: items oldest first; counts over every status."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        where = []
        if species:
            where.append(QueueItem.species == species)
        if batch is not None:
            where.append(QueueItem.batch_id == batch)
        with Session(self.engine) as s:
            counts = dict(s.execute(sa.select(QueueItem.status, sa.func.count()).where(*where)
                                    .group_by(QueueItem.status)).all())  # fmt: skip
            q = sa.select(QueueItem).where(*where).order_by(QueueItem.id).limit(limit).offset(offset)
            if status is not None:
                q = q.where(QueueItem.status == status)
            items = list(s.scalars(q))
            photos = self._photos(s, [i.id for i in items])
            shown = [self._shown(i, photos[i.id]) for i in items]
        return {"items": shown, "counts": {st: int(counts.get(st, 0)) for st in STATUSES}}

    def photo_file(self, photo_id: int) -> tuple[Path, str]:
        with Session(self.engine) as s:
            p = s.get(QueuePhoto, photo_id)
            if p is None:
                raise NotFound(f"queue photo {photo_id} is not in the review queue")
            return self.service.catalogue.photo_path(p.sha256, p.format), p.format

    # --- decisions ----------------------------------------------------------------------------------------
    def decide(self, item_id: int, kind: str, version: int, actor: str, individual_id: int | None = None,
               name: str | None = None) -> dict:  # fmt: skip
        """File item ``item_id`` (module docstring); 409 when it was decided already or changed since
        ``version``."""
        filing.check_decision(kind, individual_id, name)
        with self.lock:
            before = filing.claim(self.engine, item_id, version, kind, actor, individual_id, name)
            if kind in ("same", "new"):
                filing.file_item(self.service, self.engine, item_id, before, actor)
        return self.get_item(item_id)

    def undo(self, item_id: int, actor: str) -> dict:
        """Put item ``item_id`` back in the queue: the sightings it filed deleted, and the individual it created
        when it has no other sighting; 409 when it has no decision to undo."""
        with self.lock:
            filing.undo_item(self.service, self.engine, item_id, actor)
        return self.get_item(item_id)
