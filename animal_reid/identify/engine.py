"""The identification engine: embed gallery and query images (through the cache), search, re-rank, decide.

:class:`Identifier` ranks the known individuals of a gallery for each query (an individual scores the maximum over
its images) and calls a query a new individual when its best score is below the open-set threshold; each query
gives a :class:`QueryResult`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io import SAVE_EVERY
from ..openset import NEW_INDIVIDUAL, OpenSetThreshold
from ..search import GalleryIndex
from .cache import EmbeddingCache, default_cache_dir, model_cache_key
from .inputs import (
    IMAGE_EXTENSIONS,
    BadImages,
    ImageItem,
    error_reason,
    is_image_error,
    item_path,
    unsupported_reason,
)
from .thresholds import GALLERY_THRESHOLD, THRESHOLD_FILE, gallery_threshold, resolve_threshold

logger = logging.getLogger(__name__)


@dataclass
class QueryResult:
    query: str
    candidates: list[dict]  # rank, identity, score, species, image (name of the best-matching gallery image)
    new_individual: bool | None
    threshold: float | None
    query_identity: str | None = None
    item: ImageItem | None = field(default=None, repr=False)
    candidate_items: list[ImageItem] = field(default_factory=list, repr=False)
    matches: list | None = field(default=None, repr=False)  # PairMatch per candidate under local re-ranking
    match_config: Any = field(default=None, repr=False)  # its LocalFeatureConfig (for drawing)
    # whether query_identity has gallery images (None: no query_identity)
    query_in_gallery: bool | None = None

    @property
    def predicted_identity(self) -> str | None:
        if self.new_individual:
            return NEW_INDIVIDUAL
        return self.candidates[0]["identity"] if self.candidates else None

    @property
    def correct(self) -> bool | None:
        """Top-1 (or the new-individual verdict) against the query's known identity; None when unknown.

        A query whose identity has no gallery image is right only when called a new individual."""
        if self.query_identity is None:
            return None
        if self.query_in_gallery is False:
            return bool(self.new_individual)
        return self.predicted_identity == self.query_identity

    def to_dict(self) -> dict:
        return {
            "query": self.query,
            "query_identity": self.query_identity,
            "predicted_identity": self.predicted_identity,
            "new_individual": self.new_individual,
            "threshold": self.threshold,
            "correct": self.correct,
            "candidates": self.candidates,
        }


@dataclass
class _Search:
    """One identify() call's gallery search: the index, the query rows, their first hits, the gallery's labels."""

    index: GalleryIndex
    queries: np.ndarray  # query embeddings [Q, D]
    scores: np.ndarray  # [Q, k] first hits, best first
    indices: np.ndarray  # [Q, k] their gallery indices (-1: none)
    k: int  # gallery images searched per query at first
    identities: np.ndarray  # identity of each gallery image

    @property
    def n_gallery(self) -> int:
        return len(self.identities)


class Identifier:
    """Embeds gallery and query images (through the on-disk cache) and ranks gallery individuals per query.

    ``model`` is anything with ``encode(images, batch_size=..., processor=..., boxes=..., thetas=...)`` returning
    unit-norm rows, e.g. ``AnimalReIDModel``; ``model_key`` names its weights + preprocessing for the cache.
    Images are encoded ``save_every`` at a time; the cache is saved after each such chunk.
    """

    def __init__(
        self,
        model: Any,
        processor: Any = None,
        model_key: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache_meta: dict | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        precision: str = "fp32",
        model_dir: str | os.PathLike | None = None,
        search_method: str = "auto",
        search_device: str | None = None,
        save_every: int = SAVE_EVERY,
    ):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        self.model = model
        self.save_every = save_every
        self.processor = processor
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.precision = precision
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.search_method = search_method
        self.search_device = search_device  # exact gallery search on this torch device (None: CPU)
        self.cache = None
        if cache_dir is not None:
            if model_key is None:
                raise ValueError("a cache_dir needs a model_key naming the model weights and preprocessing")
            self.cache = EmbeddingCache(cache_dir, model_key, cache_meta)
        self.n_embedded = 0  # images run through the model (cache misses), over this object's life
        self.rerank_stats: dict | None = None  # of the last identify() with local re-ranking

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = "default",
        device: str | None = None,
        precision: str = "fp32",
        **kwargs,
    ) -> Identifier:
        """Load ``AutoModel`` / ``AutoImageProcessor`` (``trust_remote_code=True``) from a directory or a Hub id."""
        import torch
        from transformers import AutoImageProcessor, AutoModel

        local = Path(model)
        if not local.is_dir():
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(repo_id=str(model), revision=revision))
        net = AutoModel.from_pretrained(str(local), trust_remote_code=True)
        proc = AutoImageProcessor.from_pretrained(str(local), trust_remote_code=True)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        net = net.to(device).eval()
        if cache_dir == "default":
            cache_dir = default_cache_dir()
        key, meta = model_cache_key(local, proc, precision, model=net)
        meta["model"] = str(model)
        kwargs.setdefault("search_device", device if str(device).startswith("cuda") else None)
        return cls(net, proc, key, cache_dir, meta, precision=precision, model_dir=local, **kwargs)

    def embed(self, items: Sequence[ImageItem]) -> np.ndarray:
        """Unit-norm embeddings of ``items``; cached ones are read, the others run through the model (and cached).

        The first unusable image raises (the model's own error); see :meth:`embed_usable` to skip them.
        """
        return self.embed_usable(items)[1]

    def embed_usable(
        self, items: Sequence[ImageItem], bad_images: BadImages | None = None, role: str = "image"
    ) -> tuple[list[int], np.ndarray]:
        """``(indices of the items embedded, their rows [n, D])``; unusable items go to ``bad_images``.

        Files are checked cheaply first (missing, empty, unsupported type). The rest are encoded in chunks of
        ``save_every`` images, each chunk cached as soon as it is done; a chunk that fails on an image error
        (``InvalidImageError`` and PIL's decoding errors) is split in halves until the bad image is alone, so
        one bad file costs a few extra encodes and clean data none. Other errors (out of memory, a model bug)
        are raised. Without ``bad_images`` (or with ``on_error="raise"``) the first image error is raised.
        """
        skip = bad_images is not None and bad_images.on_error == "skip"
        usable = list(range(len(items)))
        if bad_images is not None:
            usable = [i for i in usable if not self._file_problem(items[i], bad_images, role)]
        keys: dict[int, str] = {}
        if self.cache is not None:
            for i in list(usable):
                try:
                    keys[i] = items[i].cache_key()
                except OSError as err:  # vanished or unreadable since it was listed
                    if bad_images is None:
                        raise
                    bad_images.add(item_path(items[i]), role, f"cannot read the file ({err})", items[i], err)
                    usable.remove(i)
        rows: dict[int, np.ndarray] = {}
        if self.cache is not None and usable:
            found, cached = self.cache.lookup([keys[i] for i in usable])
            hits = [i for i, f in zip(usable, found, strict=True) if f]
            rows.update(zip(hits, cached if cached is not None else [], strict=True))
        todo = [i for i in usable if i not in rows]
        if todo:
            logger.info("embedding %d images (%d from the cache)", len(todo), len(rows))
        for start in range(0, len(todo), self.save_every):
            done = self._encode_isolating(
                items, todo[start : start + self.save_every], bad_images if skip else None, role
            )
            if self.cache is not None and done:
                self.cache.add([keys[i] for i in done], np.stack(list(done.values())))
            rows.update(done)
        if self.cache is not None and self.cache.n_parts:
            self.cache.save()
        kept = sorted(rows)
        if not kept:
            dim = (self.cache.dim if self.cache is not None else None) or 0
            return [], np.zeros((0, dim), dtype=np.float32)
        return kept, np.stack([rows[i] for i in kept]).astype(np.float32, copy=False)

    @staticmethod
    def _file_problem(item: ImageItem, bad_images: BadImages, role: str) -> bool:
        """Whether a file item is unusable at a glance (missing, empty, unreadable, unsupported): then reported."""
        if not isinstance(item.image, str):
            return False
        p = Path(item.image)
        try:
            if not p.is_file():
                reason = "file not found" if not p.exists() else "not a regular file"
            elif p.suffix.lower() not in IMAGE_EXTENSIONS:
                reason = unsupported_reason(p)
            elif p.stat().st_size == 0:
                reason = "file is empty (0 bytes)"
            elif not os.access(p, os.R_OK):
                reason = "permission denied"
            else:
                return False
        except OSError as err:  # removed or made unreadable meanwhile
            reason = f"cannot read the file ({err.strerror or err})"
        bad_images.add(item.image, role, reason, item)
        return True

    def _encode_isolating(
        self, items: Sequence[ImageItem], idx: list[int], bad_images: BadImages | None, role: str
    ) -> dict[int, np.ndarray]:
        """Rows of ``items[idx]``; with ``bad_images`` an image error splits ``idx`` until the culprit is alone."""
        try:
            emb = self._encode([items[i] for i in idx])
        except Exception as err:
            if bad_images is None or not is_image_error(err):
                raise
            if len(idx) == 1:
                it = items[idx[0]]
                bad_images.add(item_path(it), role, error_reason(err, it), it, err)
                return {}
            mid = len(idx) // 2
            first = self._encode_isolating(items, idx[:mid], bad_images, role)
            return {**first, **self._encode_isolating(items, idx[mid:], bad_images, role)}
        return dict(zip(idx, emb, strict=True))

    def _encode(self, chunk: Sequence[ImageItem]) -> np.ndarray:
        kwargs = {"batch_size": self.batch_size}
        if self.processor is not None:
            kwargs["processor"] = self.processor
        if any(it.bbox is not None for it in chunk):
            kwargs["boxes"] = [it.bbox for it in chunk]
        if any(it.theta for it in chunk):
            kwargs["thetas"] = [it.theta for it in chunk]
        if self.num_workers:
            kwargs["num_workers"] = self.num_workers
        if self.precision != "fp32":
            kwargs["precision"] = self.precision
        new = np.asarray(self.model.encode([it.image for it in chunk], **kwargs), dtype=np.float32)
        if new.ndim != 2 or new.shape[0] != len(chunk):
            raise RuntimeError(f"model.encode returned an array of shape {new.shape} for {len(chunk)} images")
        self.n_embedded += len(chunk)
        return new

    def identify(
        self,
        gallery: Sequence[ImageItem],
        queries: Sequence[ImageItem],
        top_k: int = 5,
        threshold: float | str | OpenSetThreshold | None = None,
        bad_images: BadImages | None = None,
        rerank: Any = None,
    ) -> list[QueryResult]:
        """Ranked candidate individuals (max score over each individual's images) and a verdict per query.

        With ``bad_images`` (``on_error="skip"``) unusable gallery and query images are left out and listed
        there, and results cover the usable queries; without, the first unusable image raises.
        ``rerank``: None, ``"local"`` (a :class:`animal_reid.rerank.LocalReranker` with the fusion saved beside
        the model, its features cached beside the embeddings), ``"pairx"`` (a
        :class:`animal_reid.rerank.PairxReranker`, likewise) or a re-ranker; see the module docstring.
        """
        _check_gallery(gallery, top_k)
        reranker = self.local_reranker(rerank) if rerank is not None else None
        thr = self._run_threshold(threshold, reranker)
        gallery, g_emb = self._embed_gallery(gallery, bad_images)
        if thr == GALLERY_THRESHOLD:
            thr = gallery_threshold(g_emb, gallery)
        kept, q_emb = self.embed_usable(queries, bad_images, "query")
        queries = [queries[i] for i in kept]
        if not queries:
            return []
        search = self._search(gallery, g_emb, q_emb, top_k, reranker)
        fused = cos_of = inliers_of = None
        if reranker is not None:
            fused, cos_of, inliers_of = self._rerank(
                reranker, queries, gallery, search.scores, search.indices
            )
        gallery_ids = set(search.identities.tolist())
        want = min(top_k, len(gallery_ids))
        results = []
        for qi, q in enumerate(queries):
            ranked = _rank_individuals(search, qi, want, None if fused is None else fused[qi])
            local = None if reranker is None else (cos_of[qi], inliers_of[qi])
            results.append(_query_result(q, ranked, gallery, thr, reranker, local, gallery_ids))
        return results

    def _run_threshold(self, threshold, reranker) -> OpenSetThreshold | str | None:
        """The run's open-set threshold: :func:`resolve_threshold`'s, or under re-ranking without one the fusion's."""
        if reranker is not None and str(threshold) == GALLERY_THRESHOLD:
            raise ValueError(
                "threshold 'gallery' calibrates cosines; with local re-ranking pass a fused-score threshold"
            )
        if reranker is None or threshold is not None:
            return resolve_threshold(threshold, self.model_dir)
        thr = reranker.fusion.threshold()
        if thr is None and self.model_dir is not None and (self.model_dir / THRESHOLD_FILE).is_file():
            logger.info(
                "local re-ranking: %s holds a threshold on cosines, not on fused scores; no verdicts "
                "(fit one on fused scores into the fusion file, or pass a threshold)",
                self.model_dir / THRESHOLD_FILE,
            )
        return thr

    def _embed_gallery(
        self, gallery: Sequence[ImageItem], bad_images: BadImages | None
    ) -> tuple[list[ImageItem], np.ndarray]:
        """The usable gallery items and their rows; ValueError when none is usable."""
        kept, g_emb = self.embed_usable(gallery, bad_images, "gallery")
        if not kept:
            raise ValueError(f"no usable gallery image: all {len(gallery)} were skipped as unusable")
        return [gallery[i] for i in kept], g_emb

    def _search(
        self, gallery: Sequence[ImageItem], g_emb: np.ndarray, q_emb: np.ndarray, top_k: int, reranker
    ) -> _Search:
        """The gallery index and each query's first hits (enough for ``top_k`` individuals and the shortlist)."""
        index = GalleryIndex.build(g_emb, method=self.search_method, device=self.search_device)
        identities = np.array([g.identity for g in gallery], dtype=object)
        k_img = min(len(gallery), max(50, 10 * top_k))
        if reranker is not None:
            k_img = min(len(gallery), max(k_img, 4 * reranker.k))
        scores, idx = index.search(q_emb, k_img)
        return _Search(index, q_emb, scores, idx, k_img, identities)

    def local_reranker(self, rerank: Any):
        """The re-ranker for ``rerank``: ``"local"`` (SIFT, :class:`animal_reid.rerank.LocalReranker`), ``"pairx"``
        (the model's own features, :class:`animal_reid.rerank.PairxReranker`), or one already built; the fusion
        saved beside the model is used when there, the features cached beside the embeddings."""
        from ..rerank import FUSION_FILE, PAIRX_FUSION_FILE, Fusion, LocalReranker, PairxReranker, ScoreFusion

        if isinstance(rerank, LocalReranker | PairxReranker):
            return rerank
        if rerank not in ("local", "pairx"):
            raise ValueError(f"rerank must be None, 'local', 'pairx' or a re-ranker, got {rerank!r}")
        name, kind = (FUSION_FILE, Fusion) if rerank == "local" else (PAIRX_FUSION_FILE, ScoreFusion)
        fusion = None
        if self.model_dir is not None and (self.model_dir / name).is_file():
            logger.info(
                "%s re-ranking with the fusion saved with the model: %s", rerank, self.model_dir / name
            )
            fusion = kind.load(self.model_dir / name)
        cache_root = self.cache.dir.parent if self.cache is not None else None
        if rerank == "local":
            return LocalReranker(fusion, cache_dir=cache_root)
        key = self.cache.dir.name if self.cache is not None else "model"
        return PairxReranker(self.model, self.processor, fusion, cache_dir=cache_root, model_key=key)

    def _rerank(self, reranker, queries, gallery, scores, idx) -> tuple[list[dict], list[dict], list[dict]]:
        """Per query ``{gallery index: fused score}``, ``{.. : cosine}``, ``{.. : inliers}`` of its shortlist.

        The shortlist is the top ``reranker.k`` gallery images by cosine of the query's own species (when known).
        """
        k = reranker.k
        short = np.full((len(queries), k), -1, dtype=np.int64)
        cos = np.full((len(queries), k), -np.inf)
        for qi, q in enumerate(queries):
            keep = [
                j
                for j, gi in enumerate(idx[qi])
                if gi >= 0 and (q.species is None or gallery[gi].species in (None, q.species))
            ][:k]
            short[qi, : len(keep)] = idx[qi][keep]
            cos[qi, : len(keep)] = scores[qi][keep]
        out = reranker.rerank(queries, gallery, short, cos)
        self.rerank_stats = out.stats

        def per_query(values, cast):
            return [
                {int(g): cast(v) for g, v in zip(out.indices[qi], values[qi], strict=True) if g >= 0}
                for qi in range(len(queries))
            ]

        return per_query(out.scores, float), per_query(out.cosine, float), per_query(out.inliers, int)


def _check_gallery(gallery: Sequence[ImageItem], top_k: int) -> None:
    """ValueError unless ``top_k`` >= 1 and the gallery is non-empty with an identity on every image."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    missing = [g.name for g in gallery if g.identity is None]
    if missing:
        raise ValueError(f"{len(missing)} gallery images have no identity, e.g. {missing[:3]}")
    if not gallery:
        raise ValueError("the gallery is empty")


def _best_per_identity(
    scores, indices, identities: np.ndarray, fused: dict | None
) -> dict[str, tuple[float, int]]:
    """``{identity: (score, gallery index)}`` of each individual's best hit (by ``fused`` score where given)."""
    best: dict[str, tuple[float, int]] = {}
    pairs = zip(scores, indices, strict=True)
    if fused is not None:  # re-scored shortlist first, by fused score; then the rest by cosine
        pairs = sorted(((fused.get(int(gi), sc), gi) for sc, gi in pairs), key=lambda p: -p[0])
    for sc, gi in pairs:
        if gi < 0:
            continue
        ident = identities[gi]
        if ident not in best:  # rows come sorted: the first hit is the individual's max
            best[ident] = (float(sc), int(gi))
    return best


def _rank_individuals(
    search: _Search, qi: int, want: int, fused: dict | None
) -> list[tuple[str, tuple[float, int]]]:
    """Query ``qi``'s ``want`` best individuals, best first, widening the search until it finds them."""
    s, ii = search.scores[qi], search.indices[qi]
    n = search.n_gallery
    while True:
        best = _best_per_identity(s, ii, search.identities, fused)
        if len(best) >= want or search.k >= n or len(s) >= n:
            break
        s, ii = (a[0] for a in search.index.search(search.queries[qi : qi + 1], min(n, 4 * len(s))))
    return sorted(best.items(), key=lambda kv: -kv[1][0])[:want]


def _query_result(
    q: ImageItem, ranked, gallery: Sequence[ImageItem], thr, reranker, local, gallery_ids: set
) -> QueryResult:
    """One query's candidates (with cosine, inliers and keypoint matches under re-ranking) and verdict."""
    cands = [
        {
            "rank": r + 1,
            "identity": ident,
            "score": round(sc, 6),
            "species": gallery[gi].species,
            "image": gallery[gi].name,
        }
        for r, (ident, (sc, gi)) in enumerate(ranked)
    ]
    matches = None
    if reranker is not None:
        cos_of, inliers_of = local
        keypoints = hasattr(reranker, "match") or getattr(reranker, "sift", None) is not None
        for c, (_, (_, gi)) in zip(cands, ranked, strict=True):
            c["cosine"] = round(cos_of[gi], 6) if gi in cos_of else c["score"]
            if keypoints:
                c["inliers"] = inliers_of.get(gi)  # None: outside the shortlist; -1: no keypoints
        if hasattr(reranker, "match"):  # SIFT's matches are drawn on the match sheets (PAIR-X: --explain)
            matches = [reranker.match(q, gallery[gi]) for _, (_, gi) in ranked]
    verdict, t = None, None
    if thr is not None and cands:
        t = thr.threshold_for(cands[0]["species"])
        verdict = bool(cands[0]["score"] < t)
    return QueryResult(
        query=q.name,
        candidates=cands,
        new_individual=verdict,
        threshold=t,
        query_identity=q.identity,
        item=q,
        candidate_items=[gallery[gi] for _, (_, gi) in ranked],
        matches=matches,
        match_config=getattr(reranker, "config", None),
        query_in_gallery=None if q.identity is None else q.identity in gallery_ids,
    )
