"""What the app serves from: the model, the catalogue, the search index and the micro-batcher, kept in step.

Every catalogue change that touches the index or the caches (sightings added or deleted, merges, renames,
individuals deleted) goes through :class:`Service` under one write lock: the store commits first (with its
change-log rows, naming the reviewer as ``actor``), then the index follows, so the index is always the store's
committed state (and is rebuilt from it at every start). Who may write is :attr:`Service.reviewers`.
Changes committed by other processes on the same catalogue (replicas on one PostgreSQL) are brought in by a
:class:`~animal_reid.serve.changes.ChangeFollower` thread calling :meth:`Service.sync`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from animal_reid.serve.batcher import MicroBatcher
from animal_reid.serve.changes import ChangeFollower, content_digest
from animal_reid.serve.index import CatalogueIndex
from animal_reid.serve.reviewers import Reviewers
from animal_reid.serve.settings import DEFAULT_POLL_MS, SPECIES_RE, TOKEN_ENV, Limits  # noqa: F401  (re-exported)
from animal_reid.serve.store import Catalogue, FollowState, NewPhoto

#: the identify answer's band_reason while no calibration is set (``Service.calibration``)
NO_BAND = "no calibration for this species yet"
#: more change-log rows than this since the last look: a full look is cheaper than following them
MAX_INCREMENTAL = 5000

logger = logging.getLogger(__name__)


def load_model(model: str | os.PathLike, device: str | None = None) -> tuple[Any, Any, Path]:
    """``AutoModel`` + ``AutoImageProcessor`` (remote code) from a directory or a Hub repo id."""
    import torch
    from transformers import AutoImageProcessor, AutoModel

    local = Path(model)
    if not local.is_dir():
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(repo_id=str(model)))
    net = AutoModel.from_pretrained(str(local), trust_remote_code=True)
    proc = AutoImageProcessor.from_pretrained(str(local), trust_remote_code=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return net.to(device).eval(), proc, local


def model_keys(model_dir: Path, processor: Any) -> tuple[str, str]:
    """(model id, preprocessing key): short hashes of the weights, and of the processor's settings with the
    modeling code that runs them (a changed ``*.py`` of the export re-embeds the catalogue at the next start)."""
    from animal_reid.identify import model_cache_key

    _, meta = model_cache_key(model_dir, processor)
    model_id = hashlib.sha256(meta["weights"].encode()).hexdigest()[:32]
    how = {"preprocessor": meta["preprocessor"], "code": meta["code"]}
    prep = hashlib.sha256(json.dumps(how, sort_keys=True, default=str).encode()).hexdigest()
    return model_id, prep[:32]


class Service:
    """The model, catalogue, index and batcher of one running app."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        catalogue: Catalogue,
        model_id: str,
        preprocessing_key: str,
        threshold: Any = None,
        reviewers: Reviewers | None = None,
        limits: Limits | None = None,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        workers: int | None = None,
        poll_s: float | None = DEFAULT_POLL_MS / 1000,
        **encode_kwargs,
    ):
        self.model, self.processor, self.catalogue = model, processor, catalogue
        self.model_id, self.preprocessing_key = model_id, preprocessing_key
        self.threshold, self.limits = threshold, limits or Limits()
        self.reviewers = (
            reviewers if reviewers is not None else Reviewers()
        )  # none: the catalogue is read-only
        self.calibration: Any = None  # an object with band_for(species, score) -> (band, reason), once fitted
        self.batcher = MicroBatcher(
            model, processor, max_batch=max_batch, max_wait_s=max_wait_s, workers=workers, **encode_kwargs
        )
        self.index: CatalogueIndex | None = None
        self.write_lock = threading.Lock()
        # other processes' writes: checked every poll_s seconds (and at each NOTIFY on PostgreSQL); None or 0: off
        self.follower = (
            ChangeFollower(catalogue.engine, self.sync, poll_s, catalogue.shown_url) if poll_s else None
        )
        # read-through cache of what each answer shows (individual names, sighting photo hashes): entries are
        # dropped on delete and merge and updated by sync() (other replicas' renames), so a hit is the store's
        self._names: dict[int, str] = {}
        self._photos: dict[int, str] = {}
        self._cache_lock = threading.Lock()
        # other models' sightings whose photo could not be read here: {id: (individual id, species)}
        self._unembeddable: dict[int, tuple[int, str]] = {}
        # sync(): every individual's (species, name) as last followed (for the content digest), a full look at
        # least this often (when the catalogue changed), the (seq, digest) last found in step, what it read
        self._individuals: dict[int, tuple[str, str]] | None = None
        self.full_sync_every_s = 600.0
        self._last_full = time.monotonic()
        self._verified: tuple | None = None
        self.last_sync: dict | None = None

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, catalogue_url: str, photo_dir=None, threshold=None,
                        token: str | None = None, reviewers: Reviewers | str | os.PathLike | None = None,
                        device: str | None = None, **kwargs) -> Service:  # fmt: skip
        """Load the model and open the catalogue; call :meth:`open` to migrate it and build the index.

        Who may write: ``reviewers`` (a :class:`Reviewers`, or the path of a reviewers file) and/or the operator
        ``token`` (default: the ``ANIMAL_REID_TOKEN`` variable), which writes as ``operator``."""
        from animal_reid.identify import GALLERY_THRESHOLD, resolve_threshold

        if str(threshold) == GALLERY_THRESHOLD:  # the catalogue changes while serving; a fixed file is needed
            raise ValueError(
                "threshold 'gallery' is for `identify`; for the service, save thresholds calibrated on your "
                "catalogue (OpenSetThreshold.fit_gallery(...).save(path)) and pass that JSON"
            )
        net, proc, local = load_model(model, device)
        model_id, prep = model_keys(local, proc)
        thr = resolve_threshold(threshold, local)
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        if not isinstance(reviewers, Reviewers):
            reviewers = Reviewers(reviewers, token)
        elif token is not None and reviewers.operator_token is None:
            reviewers.operator_token = token
        return cls(net, proc, Catalogue(catalogue_url, photo_dir), model_id, prep, thr, reviewers, **kwargs)

    @property
    def dim(self) -> int:
        return int(self.model.embedding_dim)

    def open(self) -> None:
        """Migrate the store, re-embed sightings made with another model, and build the index from the store."""
        self.catalogue.migrate()
        self._reembed_stale()
        if self.follower is not None:
            self.follower.prime()  # before reading the rows: a commit from now on is looked at by the follower
        self.index = CatalogueIndex.from_rows(self.catalogue.index_rows(), self.dim)
        self._last_full = time.monotonic()
        if self.follower is not None:
            self._individuals = self.catalogue.individual_rows()
        logger.info("catalogue %s: %d sightings indexed", self.catalogue.shown_url, len(self.index))
        if self.follower is not None:
            self.follower.start()

    def _reembed_stale(self) -> None:
        stale = self.catalogue.stale_sightings(self.model_id, self.preprocessing_key)
        if stale:
            logger.info("re-embedding %d sightings made with another model or preprocessing", len(stale))
        for sid, path, box, theta in stale:
            emb = self.batcher.encode([path.read_bytes()], [box], [theta])[0]
            self.catalogue.update_embedding(sid, emb, self.model_id, self.preprocessing_key)

    def close(self) -> None:
        if self.calibration is not None and hasattr(self.calibration, "stop"):
            self.calibration.stop()  # its refit thread (inside the app, the lifespan has stopped it already)
        if self.follower is not None:
            self.follower.stop()
        self.batcher.close()
        self.catalogue.close()

    def ready(self) -> dict:
        return {
            "model": self.model is not None,
            "catalogue": self.catalogue.ping(),
            "index": self.index is not None,
        }

    def threshold_for(self, species: str) -> float | None:
        return None if self.threshold is None else float(self.threshold.threshold_for(species))

    def band_for(self, species: str, best_score: float | None) -> tuple[str | None, str]:
        """(band, reason) of an identify answer: ``known``/``unsure``/``new`` from :attr:`calibration` once one
        is set, else (None, why there is none)."""
        if self.calibration is None:
            return None, NO_BAND
        return self.calibration.band_for(species, best_score)

    def species(self) -> list[dict]:
        """Every species in the catalogue or in the threshold file: name, individuals, sightings, threshold."""
        counts = self.catalogue.species_counts()
        names = set(counts) | {
            s for s in getattr(self.threshold, "per_species", {}) if SPECIES_RE.fullmatch(s)
        }
        return [
            {"name": name, "individuals": counts.get(name, (0, 0))[0], "sightings": counts.get(name, (0, 0))[1],
             "threshold": self.threshold_for(name)}
            for name in sorted(names)
        ]  # fmt: skip

    # --- writes: store first, then the index, under one lock ----------------------------------------------
    def add_sighting(self, photo: NewPhoto, embedding: np.ndarray, **kwargs) -> dict:
        with self.write_lock:
            row = self.catalogue.add_sighting(
                photo=photo, embedding=embedding, model_id=self.model_id,
                preprocessing_key=self.preprocessing_key, **kwargs,
            )  # fmt: skip
            self.index.add(row["id"], row["individual_id"], row["species"], embedding)
        if hasattr(self.calibration, "kick"):  # count it towards the next refit now, not at the next poll
            self.calibration.kick()
        return row

    def delete_sighting(self, sighting_id: int, actor: str = "operator") -> dict:
        with self.write_lock:
            row = self.catalogue.delete_sighting(sighting_id, actor)
            self.index.remove(sighting_id)
            with self._cache_lock:
                self._photos.pop(sighting_id, None)
            return row

    def merge(self, source_id: int, target_id: int, actor: str = "operator") -> dict:
        with self.write_lock:
            out = self.catalogue.merge(source_id, target_id, actor)
            self.index.merge(source_id, target_id)
            with self._cache_lock:
                self._names.pop(source_id, None)
            return out

    def delete_individual(self, individual_id: int, actor: str) -> dict:
        """Delete an individual and its sightings (store, index and caches); photo files are kept."""
        with self.write_lock:
            out = self.catalogue.delete_individual(individual_id, actor)
            self.index.apply(remove=out["sighting_ids"])
            with self._cache_lock:
                self._names.pop(individual_id, None)
                for sid in out["sighting_ids"]:
                    self._photos.pop(sid, None)
            return out

    def update_individual(self, individual_id: int, actor: str, **fields) -> dict:
        """Rename an individual or change its notes or aliases (store and name cache)."""
        with self.write_lock:
            out = self.catalogue.update_individual(individual_id, actor, **fields)
            with self._cache_lock:
                if individual_id in self._names:
                    self._names[individual_id] = out["name"]
            return out

    # --- other processes' writes ---------------------------------------------------------------------------
    def sync(self, after_seq: int | None = None) -> dict:
        """Bring the index and caches to the store's committed state: sightings other processes added, deleted
        or moved (merges, species edits) and individuals they renamed or deleted. Returns what changed.

        With ``after_seq`` (the seq this replica has followed), only what the change-log rows after it name is
        read, then checked against the store's content digest (``incremental``); without it, or when that is
        not enough (:mod:`animal_reid.serve.changes`), every sighting's individual and species and every
        individual are read (``full``). What was read is :attr:`last_sync`."""
        with self.write_lock:
            state, changed = self._follow(after_seq)
            if state is None:
                state = self.catalogue.follow_state(self.model_id, self.preprocessing_key)
                changed = {k: changed.get(k, 0) + v for k, v in self._apply(state).items()}
                self._last_full = time.monotonic()
            self._verified = (state.seq, state.digest)
            self.last_sync = {
                "mode": "full" if state.touched is None else "incremental",
                "changes": None if state.touched is None else state.touched.changes,
                "sightings_read": len(state.sightings) + len(state.other_model),
            }
        if any(changed.values()):
            logger.info("catalogue changed by another process: %s", changed)
        return changed

    def _follow(self, after_seq: int | None) -> tuple[FollowState | None, dict]:
        """Apply what the change-log rows after ``after_seq`` name, then check the whole against the store's
        content digest; (None, what was applied) when a full look is needed instead."""
        if (
            after_seq is None
            or self._individuals is None
            or time.monotonic() - self._last_full > self.full_sync_every_s
        ):
            return None, {}
        state = self.catalogue.follow_changes(
            self.model_id, self.preprocessing_key, after_seq, MAX_INCREMENTAL
        )
        if state is None or state.digest is None:
            return None, {}
        if state.touched.changes == 0 and self._verified == (state.seq, state.digest):
            return state, {}  # e.g. a write to the review queue's tables (SQLite's data_version moved)
        changed = self._apply(state)
        known = {**self._unembeddable, **self.index.entries()}
        if content_digest(known, self._individuals) != state.digest:
            logger.info("catalogue %s was written without a change-log row (another tool?): reading it all",
                        self.catalogue.shown_url)  # fmt: skip
            return None, changed
        return state, changed

    def _apply(self, state: FollowState) -> dict:
        """Bring the index, caches and known individuals in step with ``state`` (all of them, or what
        ``state.touched`` names); what changed."""
        entries = self.index.entries()
        touched = state.touched
        have = (
            entries if touched is None else {sid: e for sid, e in entries.items() if _in_scope(sid, e, state)}
        )
        want = {**state.sightings, **state.other_model}
        remove = [sid for sid in have if sid not in want]
        moves = {sid: want[sid] for sid, entry in have.items() if sid in want and want[sid] != entry}
        add = self._embeddings_for([sid for sid in want if sid not in have], state)
        self.index.apply(remove=remove, moves=moves, add=add)
        for sid, entry in list(self._unembeddable.items()):  # left out of the index, counted in the digest
            if touched is None or _in_scope(sid, entry, state):
                if sid in want:
                    self._unembeddable[sid] = want[sid]
                else:
                    del self._unembeddable[sid]
        if touched is None:
            self._individuals = dict(state.individuals)
        else:
            for i in touched.individual_ids:
                if i in state.individuals:
                    self._individuals[i] = state.individuals[i]
                else:
                    self._individuals.pop(i, None)
        renamed = self._sync_caches(state, remove, None if touched is None else touched.individual_ids)
        return {"added": len(add), "removed": len(remove), "moved": len(moves), "renamed": renamed}

    def _embeddings_for(self, sighting_ids: list[int], state: FollowState) -> list[tuple]:
        """Index rows for new sightings: the stored embedding when this model made it, else one made here from
        the photo (kept in memory only: writing it back would make replicas with two models take turns)."""
        ours = [sid for sid in sighting_ids if sid in state.sightings]
        rows = [(sid, *state.sightings[sid], emb) for sid, emb in self.catalogue.embeddings(ours).items()]
        others = self.catalogue.photo_files([sid for sid in sighting_ids if sid in state.other_model])
        for sid, (path, box, theta) in others.items():
            try:
                emb = self.batcher.encode([path.read_bytes()], [box], [theta])[0]
            except (OSError, ValueError) as err:  # e.g. replicas on two machines that do not share --photos
                if sid not in self._unembeddable:  # tried again whenever it is looked at, said once
                    logger.warning("sighting %d (embedded by another model) is left out of this replica's index:"
                                   " cannot re-embed %s: %s", sid, path, err)  # fmt: skip
                self._unembeddable[sid] = state.other_model[sid]
                continue
            self._unembeddable.pop(sid, None)
            rows.append((sid, *state.other_model[sid], emb))
        return rows

    def _sync_caches(self, state: FollowState, removed: list[int], individual_ids=None) -> int:
        """Drop removed sightings' photos; bring cached names (of ``individual_ids`` only, when given) to the
        store's. Returns how many names changed or went."""
        with self._cache_lock:
            for sid in removed:
                self._photos.pop(sid, None)
            looked = (
                self._names if individual_ids is None else [i for i in individual_ids if i in self._names]
            )
            stale = [i for i in looked if state.names.get(i) != self._names[i]]
            for i in stale:
                if i in state.names:
                    self._names[i] = state.names[i]
                else:
                    del self._names[i]
        return len(stale)

    def describe_cached(self, individual_ids: list[int], sighting_ids: list[int]) -> tuple[dict, dict] | None:
        """What :meth:`describe` answers when every id is cached (no store read, so the event loop may call it);
        None when one is not."""
        with self._cache_lock:
            if all(i in self._names for i in individual_ids) and all(i in self._photos for i in sighting_ids):
                return {i: self._names[i] for i in individual_ids}, {i: self._photos[i] for i in sighting_ids}
        return None

    def describe(self, individual_ids: list[int], sighting_ids: list[int]) -> tuple[dict, dict]:
        """``catalogue.describe`` through the cache: the store is read only for ids not seen before."""
        with self._cache_lock:
            need_i = [i for i in individual_ids if i not in self._names]
            need_s = [i for i in sighting_ids if i not in self._photos]
        if need_i or need_s:  # under the write lock: no delete or merge between this read and the fill
            with self.write_lock:
                names, photos = self.catalogue.describe(need_i, need_s)
                with self._cache_lock:
                    self._names.update(names)
                    self._photos.update(photos)
        with self._cache_lock:
            return (
                {i: self._names[i] for i in individual_ids if i in self._names},
                {i: self._photos[i] for i in sighting_ids if i in self._photos},
            )

    def stats(self) -> dict:
        with self.write_lock:
            store_ids, index_ids = self.catalogue.sighting_pairs(), self.index.sighting_pairs()
        return {
            "individuals": self.catalogue.count_individuals(),
            "sightings_in_store": len(store_ids),
            "sightings_in_index": len(index_ids),
            "index_agrees_with_store": store_ids == index_ids,
            "model_id": self.model_id,
            "preprocessing_key": self.preprocessing_key,
            "schema_revision": self.catalogue.revision(),
            "encode_batches": self.batcher.batches,
            "follow_poll_s": None if self.follower is None else self.follower.poll_s,
            "syncs": 0 if self.follower is None else self.follower.syncs,
            "last_seq": self.catalogue.last_seq(),
            "follow_seq": None if self.follower is None else self.follower.seq,
            "last_sync": self.last_sync,
        }


def _in_scope(sighting_id: int, entry: tuple[int, str], state: FollowState) -> bool:
    """Whether an incremental ``state`` speaks for this sighting: one its changes name, one it read, or one of
    an individual they name (a merged or deleted one's)."""
    touched = state.touched
    return (
        sighting_id in touched.sighting_ids
        or sighting_id in state.sightings
        or sighting_id in state.other_model
        or entry[0] in touched.individual_ids
    )
