"""What the app serves from: the model, the catalogue, the search index and the micro-batcher, kept in step.

Every catalogue change goes through :class:`Service` under one write lock: the store commits first, then the
index follows, so the index is always the store's committed state (and is rebuilt from it at every start).
Changes committed by other processes on the same catalogue (replicas on one PostgreSQL) are brought in by a
:class:`~animal_reid.serve.changes.ChangeFollower` thread calling :meth:`Service.sync`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from animal_reid.serve.batcher import MicroBatcher
from animal_reid.serve.changes import ChangeFollower
from animal_reid.serve.index import CatalogueIndex
from animal_reid.serve.settings import DEFAULT_POLL_MS, SPECIES_RE, TOKEN_ENV, Limits  # noqa: F401  (re-exported)
from animal_reid.serve.store import Catalogue, FollowState, NewPhoto

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
        token: str | None = None,
        limits: Limits | None = None,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        workers: int | None = None,
        poll_s: float | None = DEFAULT_POLL_MS / 1000,
        **encode_kwargs,
    ):
        self.model, self.processor, self.catalogue = model, processor, catalogue
        self.model_id, self.preprocessing_key = model_id, preprocessing_key
        self.threshold, self.token, self.limits = threshold, token, limits or Limits()
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
        self._unembeddable: set[int] = set()  # other models' sightings whose photo could not be read here

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, catalogue_url: str, photo_dir=None, threshold=None,
                        token: str | None = None, device: str | None = None, **kwargs) -> Service:  # fmt: skip
        """Load the model and open (and migrate) the catalogue; call :meth:`open` to build the index."""
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
        return cls(net, proc, Catalogue(catalogue_url, photo_dir), model_id, prep, thr, token, **kwargs)

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
            return row

    def delete_sighting(self, sighting_id: int) -> dict:
        with self.write_lock:
            row = self.catalogue.delete_sighting(sighting_id)
            self.index.remove(sighting_id)
            with self._cache_lock:
                self._photos.pop(sighting_id, None)
            return row

    def merge(self, source_id: int, target_id: int) -> dict:
        with self.write_lock:
            out = self.catalogue.merge(source_id, target_id)
            self.index.merge(source_id, target_id)
            with self._cache_lock:
                self._names.pop(source_id, None)
            return out

    # --- other processes' writes ---------------------------------------------------------------------------
    def sync(self) -> dict:
        """Bring the index and caches to the store's committed state: sightings other processes added, deleted
        or moved (merges, species edits) and individuals they renamed or deleted. Returns what changed."""
        with self.write_lock:
            state = self.catalogue.follow_state(self.model_id, self.preprocessing_key)
            have = self.index.entries()
            want = {**state.sightings, **state.other_model}
            remove = [sid for sid in have if sid not in want]
            moves = {sid: want[sid] for sid, entry in have.items() if sid in want and want[sid] != entry}
            new = [sid for sid in want if sid not in have]
            add = self._embeddings_for(new, state)
            self.index.apply(remove=remove, moves=moves, add=add)
            renamed = self._sync_caches(state, remove)
        changed = {"added": len(add), "removed": len(remove), "moved": len(moves), "renamed": renamed}
        if any(changed.values()):
            logger.info("catalogue changed by another process: %s", changed)
        return changed

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
                if sid not in self._unembeddable:  # tried again at every sync, said once
                    self._unembeddable.add(sid)
                    logger.warning("sighting %d (embedded by another model) is left out of this replica's index:"
                                   " cannot re-embed %s: %s", sid, path, err)  # fmt: skip
                continue
            rows.append((sid, *state.other_model[sid], emb))
        return rows

    def _sync_caches(self, state: FollowState, removed: list[int]) -> int:
        with self._cache_lock:
            for sid in removed:
                self._photos.pop(sid, None)
            stale = [i for i, name in self._names.items() if state.names.get(i) != name]
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
            "individuals": len(self.catalogue.list_individuals()),
            "sightings_in_store": len(store_ids),
            "sightings_in_index": len(index_ids),
            "index_agrees_with_store": store_ids == index_ids,
            "model_id": self.model_id,
            "preprocessing_key": self.preprocessing_key,
            "schema_revision": self.catalogue.revision(),
            "encode_batches": self.batcher.batches,
            "follow_poll_s": None if self.follower is None else self.follower.poll_s,
            "syncs": 0 if self.follower is None else self.follower.syncs,
        }
