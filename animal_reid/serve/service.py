"""What the app serves from: the model, the catalogue, the search index and the micro-batcher, kept in step.

Every catalogue change goes through :class:`Service` under one write lock: the store commits first, then the
index follows, so the index is always the store's committed state (and is rebuilt from it at every start).
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
from animal_reid.serve.index import CatalogueIndex
from animal_reid.serve.settings import TOKEN_ENV, Limits  # noqa: F401  (re-exported)
from animal_reid.serve.store import Catalogue, NewPhoto

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
        # read-through cache of what each answer shows (individual names, sighting photo hashes): names never
        # change and entries are dropped on delete and merge, so a hit is always the store's answer
        self._names: dict[int, str] = {}
        self._photos: dict[int, str] = {}
        self._cache_lock = threading.Lock()

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
        self.index = CatalogueIndex.from_rows(self.catalogue.index_rows(), self.dim)
        logger.info("catalogue %s: %d sightings indexed", self.catalogue.url, len(self.index))

    def _reembed_stale(self) -> None:
        stale = self.catalogue.stale_sightings(self.model_id, self.preprocessing_key)
        if stale:
            logger.info("re-embedding %d sightings made with another model or preprocessing", len(stale))
        for sid, path, box, theta in stale:
            emb = self.batcher.encode([path.read_bytes()], [box], [theta])[0]
            self.catalogue.update_embedding(sid, emb, self.model_id, self.preprocessing_key)

    def close(self) -> None:
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
        }
