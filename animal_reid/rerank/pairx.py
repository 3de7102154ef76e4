"""Re-ranking with PAIR-X: the shortlist re-scored by how the model's own intermediate features of the query and
each candidate correspond (:mod:`animal_reid.explain`), optionally beside SIFT.

Each image's feature map at the explanation stage is computed once and cached on disk (float16, keyed by the
model, the stage and the image's embedding-cache key); per query, relevance is propagated for the ``K`` pairs in
one batched pass through the later stages, and each pair gets the inverted residual mean, the match coverage and
the matched similarity (:data:`PAIRX_SCORES`).
They are fused with the cosine by a :class:`~.score_fusion.ScoreFusion` fitted on validation
(``rerank_pairx_fusion.json`` beside the model or the gallery). An image that cannot be read keeps its cosine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import CorruptCacheFile, PartFileCache, read_npz
from .features import item_key
from .reranker import LocalReranker, RerankOutput
from .score_fusion import PAIRX_SCORES, ScoreFusion

logger = logging.getLogger(__name__)


class StageMapCache(PartFileCache):
    """Stage feature maps (float16 ``[C, H, W]``) by image key in ``<root>/<key>/`` (``maps.npz`` + parts)."""

    MAIN = "maps.npz"
    CORRUPT_WARNING = "PAIR-X feature-map cache file %s is corrupt (%s): removing it"
    UNUSABLE_WARNING = "cannot %s the PAIR-X feature-map cache %s; the run goes on without it"
    log = logger

    def __init__(self, root: str | os.PathLike, model_key: str, stage: int):
        digest = hashlib.sha1(f"{model_key}|stage{stage}".encode()).hexdigest()[:16]
        super().__init__(root, f"pairx-{digest}", {"model": model_key, "stage": stage})
        self._maps: dict[str, np.ndarray] = {}
        if self.dir.is_dir():
            self._load()

    def read_file(self, path: Path) -> dict[str, np.ndarray]:
        a = read_npz(path, ("keys", "maps"), "keys, maps")
        if a["maps"].ndim != 4 or a["maps"].shape[0] != a["keys"].shape[0] or a["maps"].dtype != np.float16:
            raise CorruptCacheFile("arrays of inconsistent shapes or types")
        return {str(k): a["maps"][i] for i, k in enumerate(a["keys"])}

    def _remember(self, content: dict[str, np.ndarray]) -> None:
        for k, m in content.items():
            self._maps.setdefault(k, m)

    def __len__(self) -> int:
        return len(self._maps)

    def get(self, key: str) -> np.ndarray | None:
        return self._maps.get(key)

    def add(self, keys: Sequence[str], maps: Sequence[np.ndarray]) -> None:
        new = [(k, m) for k, m in zip(keys, maps, strict=True) if k not in self._maps]
        if new:
            self._write_part({"keys": np.array([k for k, _ in new]), "maps": np.stack([m for _, m in new])})
            self._maps.update(new)

    def save(self) -> None:
        if self._parts:
            self._write_main(
                {"keys": np.array(list(self._maps)), "maps": np.stack(list(self._maps.values()))}
            )

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("*.npz")) if self.dir.is_dir() else 0


class PairxReranker:
    """Re-scores shortlists with PAIR-X scores (and SIFT inliers where the fusion weights them); the same
    interface as :class:`~.reranker.LocalReranker` (``k``, ``fusion``, :meth:`rerank`)."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        fusion: ScoreFusion | None = None,
        k: int = 20,
        cache_dir: str | os.PathLike | None = None,
        model_key: str = "model",
        batch_size: int = 16,
    ):
        from animal_reid.explain import stage_index

        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if fusion is None:
            logger.warning("PAIR-X re-ranking without a fitted fusion: weights 0.5 on residual and coverage")
            fusion = ScoreFusion({"residual": 0.5, "coverage": 0.5})
        self.model, self.processor, self.fusion, self.k = model, processor, fusion, k
        config = fusion.pairx_config or {}
        self.stage = stage_index(model, config.get("stage"))
        self.method = config.get("method")
        self.border = int(config.get("border") or 0)
        self.batch_size = batch_size
        self.cache = StageMapCache(cache_dir, model_key, self.stage) if cache_dir is not None else None
        self._memory: dict[str, np.ndarray] = {}
        self.n_computed = 0
        self.sift = (
            LocalReranker(config=_sift_config(fusion), k=k, cache_dir=cache_dir)
            if fusion.uses("sift")
            else None
        )

    def maps(self, items: Sequence[Any]) -> list[np.ndarray | None]:
        """Each item's stage map (cached, else computed in batches); None for an image that cannot be read."""
        keys = [item_key(it) for it in items]
        out: list[np.ndarray | None] = [self._lookup(k) for k in keys]
        todo = [i for i, m in enumerate(out) if m is None]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            new: dict[str, np.ndarray] = {}
            for i, m in zip(chunk, self._compute([items[i] for i in chunk]), strict=True):
                out[i] = m
                if m is not None and keys[i] is not None:
                    new[keys[i]] = m
            self._memory.update(new)
            if self.cache is not None and new:
                self.cache.add(list(new), list(new.values()))  # one part file per batch
        if todo and self.cache is not None:
            self.cache.save()
        return out

    def _lookup(self, key: str | None) -> np.ndarray | None:
        if key is None:
            return None
        found = self._memory.get(key)
        if found is None and self.cache is not None:
            found = self.cache.get(key)
        return found

    def _compute(self, items: Sequence[Any]) -> list[np.ndarray | None]:
        import torch

        from animal_reid.explain import feature_maps
        from animal_reid.explain.features import current_processor

        proc = current_processor(self.processor)
        pixels: list[Any] = []
        for it in items:
            try:
                pixels.append(proc.preprocess_one(it.image, it.bbox, it.theta))
            except (OSError, ValueError) as err:
                logger.warning("PAIR-X: %s keeps its cosine (%s)", getattr(it, "name", it), err)
                pixels.append(None)
        good = [p for p in pixels if p is not None]
        self.n_computed += len(good)
        if not good:
            return [None] * len(items)
        with torch.no_grad():
            maps = iter(feature_maps(self.model, torch.stack(good), self.stage).half().numpy())
        return [None if p is None else next(maps) for p in pixels]

    def scores(self, query: Any, candidates: Sequence[Any], borders: Sequence[int] | None = None) -> dict:
        """``{name: [K]}`` for each of :data:`PAIRX_SCORES`, of one query against its candidates (0 where
        unreadable), at the fusion's border width; with ``borders``, one such dict per border width (one
        relevance pass)."""
        import torch

        from animal_reid.explain import shortlist_scores

        widths = (self.border,) if borders is None else tuple(borders)
        out = {b: {n: np.zeros(len(candidates)) for n in PAIRX_SCORES} for b in widths}
        maps = self.maps([query, *candidates])
        ok = [j for j, m in enumerate(maps[1:]) if m is not None]
        if maps[0] is not None and ok:
            q = torch.from_numpy(maps[0].astype(np.float32))
            g = torch.from_numpy(np.stack([maps[j + 1] for j in ok]).astype(np.float32))
            got = shortlist_scores(self.model, self.stage, q, g, self.method, widths)
            for b, found in (got if len(widths) > 1 else {widths[0]: got}).items():
                for j, sc in zip(ok, found, strict=True):
                    for name in PAIRX_SCORES:
                        out[b][name][j] = getattr(sc, name)
        return out[widths[0]] if borders is None else out

    def score_shortlists(self, queries, gallery, indices, borders: Sequence[int] | None = None) -> dict:
        """PAIR-X scores ``[Q, K]`` of each query's shortlist ``indices`` (-1: padding, score 0), a dict by
        name; with ``borders``, one such dict per border width."""
        idx = np.asarray(indices, dtype=np.int64)[:, : self.k]
        widths = (self.border,) if borders is None else tuple(borders)
        out = {b: {n: np.zeros(idx.shape) for n in PAIRX_SCORES} for b in widths}
        for qi, q in enumerate(queries):
            slots = [j for j in range(idx.shape[1]) if idx[qi, j] >= 0]
            got = self.scores(q, [gallery[idx[qi, j]] for j in slots], widths)
            for b in widths:
                for name in PAIRX_SCORES:
                    out[b][name][qi, slots] = got[b][name]
        return out[widths[0]] if borders is None else out

    def rerank(self, queries, gallery, indices, cosine, species=None) -> RerankOutput:
        """Fused scores of shortlists ``indices`` [Q, >=K] (best cosine first) with cosines ``cosine``."""
        idx = np.asarray(indices, dtype=np.int64)[:, : self.k]
        cos = np.asarray(cosine, dtype=np.float64)[:, : self.k]
        if idx.shape != cos.shape or idx.shape[0] != len(queries):
            raise ValueError(
                f"{len(queries)} queries, indices {idx.shape} and cosine {cos.shape} do not agree"
            )
        t0 = time.perf_counter()
        scores = self.score_shortlists(queries, gallery, idx)
        inliers = np.full(idx.shape, -1, dtype=np.int64)
        stats: dict[str, Any] = {
            "n_queries": len(idx),
            "k": int(idx.shape[1]),
            "maps_computed": self.n_computed,
        }
        if self.sift is not None:
            inliers, stats["sift"] = self.sift.verify(queries, gallery, idx)
            scores["sift"] = inliers
        stats["pairx_s"] = round(time.perf_counter() - t0, 3)
        fused = self.fusion.fuse(np.where(idx >= 0, cos, -np.inf), scores)
        return RerankOutput(idx, cos, inliers, fused, stats)


def _sift_config(fusion: ScoreFusion):
    from .features import LocalFeatureConfig

    return (
        LocalFeatureConfig.from_dict(fusion.feature_config) if fusion.feature_config else LocalFeatureConfig()
    )
