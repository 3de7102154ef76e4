"""Top-k cosine search over a gallery of embeddings: exact chunked search, or an approximate faiss index.

``GalleryIndex`` holds L2-normalised gallery rows (rows that are not unit-norm are normalised on the way in)
and answers ``search(queries, k) -> (scores [Q, k] float32, indices [Q, k] int64)`` by inner product, which is
the cosine similarity of unit rows. Missing slots (``k`` larger than the gallery, or an approximate index that
found fewer) come back as score ``-inf`` and index ``-1``.

Methods
-------
* ``"exact"``: torch matmul + ``topk`` over gallery chunks, merging running top-k lists; memory beyond the
  gallery itself is bounded by ``memory_budget_bytes`` (default 128 MiB) whatever the gallery size.
  ``dtype="float16"`` halves storage; scores are still computed in float32 chunk by chunk. ``device="cuda"``
  keeps the rows on a GPU and scores there.
* ``"ivf"``: faiss ``IndexIVFFlat`` (``IndexIVFScalarQuantizer`` fp16 with ``dtype="float16"``) on inner
  product, ``nlist`` coarse cells trained by k-means on a sample, ``nprobe`` cells visited per query (the
  recall / speed knob).
* ``"hnsw"``: faiss ``IndexHNSWFlat`` on inner product, ``ef_search`` the knob (slow to build on few cores).
* ``"auto"``: exact below ``AUTO_EXACT_MAX`` rows (or without faiss), IVF above.

``index.save(dir)`` writes ``gallery_index.json`` plus ``embeddings.npy`` (exact) or ``faiss.index``;
``GalleryIndex.load(dir)`` reads them back.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["GalleryIndex", "METHODS", "DTYPES", "AUTO_EXACT_MAX", "faiss_available"]

METHODS = ("exact", "ivf", "hnsw", "auto")
DTYPES = ("float32", "float16")
AUTO_EXACT_MAX = 200_000
SMALL_SEARCH_MAX = 1 << 18  # query x gallery pairs up to which exact search on the CPU runs in numpy, not torch
INDEX_FILE = "gallery_index.json"
FORMAT_VERSION = 1


def _torch():
    # imported lazily: a faiss-only index (and a process that only searches one) never pays torch's import
    import torch

    return torch


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _import_faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the approximate gallery index needs faiss: pip install 'animal-reid[search]' (faiss-cpu)"
        ) from e
    return faiss


def _as_float32_rows(x, dim: int | None, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D [N, D] array, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what} have width {arr.shape[1]}, expected {dim} (the index dimension)")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _padding(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A search result with no hits yet: scores -inf, indices -1 (what ranks beyond the gallery keep)."""
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


def _normalized(x: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    """Unit rows; returns ``x`` itself (no copy) when it already is."""
    # row norms chunk by chunk: np.linalg.norm(x, axis=1) would materialise x * x, a full-size temporary
    norms = np.empty(x.shape[0], dtype=np.float32)
    step = 1 << 16
    for start in range(0, x.shape[0], step):
        part = x[start : start + step]
        norms[start : start + step] = np.sqrt(np.einsum("ij,ij->i", part, part))
    if x.shape[0] == 0 or np.all(np.abs(norms - 1.0) < tol):
        return x
    if np.any(norms == 0):
        raise ValueError(f"{int((norms == 0).sum())} embedding rows are all zeros; cannot normalise them")
    out = np.empty_like(x)
    np.divide(x, norms[:, None], out=out)
    return out


class GalleryIndex:
    """Top-k inner-product (cosine) search over unit-norm gallery embeddings."""

    def __init__(
        self,
        dim: int,
        method: str = "exact",
        dtype: str = "float32",
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_search: int = 128,
        memory_budget_bytes: int = 128 * 1024**2,
        seed: int = 0,
        device: str | None = None,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if nprobe < 1 or ef_search < 1 or hnsw_m < 2:
            raise ValueError(
                f"need nprobe >= 1, ef_search >= 1, hnsw_m >= 2; got {nprobe}, {ef_search}, {hnsw_m}"
            )
        self.dim = int(dim)
        self.method = method
        self.dtype = dtype
        self.nlist = nlist
        self.nprobe = int(nprobe)
        self.hnsw_m = int(hnsw_m)
        self.ef_search = int(ef_search)
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.seed = seed
        self.device = device  # exact search: where the rows live and scores are computed (None: CPU)
        self._chunks: list[torch.Tensor] = []  # exact: stored gallery rows
        self._faiss = None

    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, embeddings, method: str = "auto", copy: bool = True, **kwargs) -> GalleryIndex:
        """Build an index over ``embeddings`` ([N, D]); ``method="auto"`` picks exact or IVF by size."""
        emb = _as_float32_rows(embeddings, None, "gallery embeddings")
        if method == "auto":
            method = "ivf" if emb.shape[0] > AUTO_EXACT_MAX and faiss_available() else "exact"
        index = cls(emb.shape[1], method=method, **kwargs)
        index.add(emb, copy=copy)
        return index

    def __len__(self) -> int:
        if self._faiss is not None:
            return int(self._faiss.ntotal)
        return sum(int(c.shape[0]) for c in self._chunks)

    def __repr__(self) -> str:
        return f"GalleryIndex(method={self.method!r}, dim={self.dim}, dtype={self.dtype!r}, size={len(self)})"

    @property
    def torch_dtype(self) -> torch.dtype:
        torch = _torch()
        return torch.float16 if self.dtype == "float16" else torch.float32

    def add(self, embeddings, copy: bool = True) -> None:
        """Append gallery rows (normalised if they are not unit-norm). Row ids continue from ``len(self)``.

        ``copy=False`` lets an exact float32 index keep a reference to already unit-norm float32 rows instead of
        copying them (the caller must then not modify the array); faiss indexes always hold their own copy.
        """
        emb = _as_float32_rows(embeddings, self.dim, "gallery embeddings")
        if emb.shape[0] == 0:
            return
        if self.method == "auto":
            self.method = (
                "ivf" if len(self) + emb.shape[0] > AUTO_EXACT_MAX and faiss_available() else "exact"
            )
        if self.method == "exact":
            self._add_exact(emb, copy)
        else:
            self._add_faiss(emb)

    def _add_exact(self, emb: np.ndarray, copy: bool) -> None:
        torch = _torch()
        normed = _normalized(emb)
        if self.dtype == "float16":
            self._chunks.append(torch.from_numpy(normed).to(self.device or "cpu", torch.float16))
        elif normed is emb and copy:
            self._chunks.append(torch.from_numpy(emb).to(self.device or "cpu", copy=True))
        else:
            # aliases the caller's array when copy=False (on the CPU)
            self._chunks.append(torch.from_numpy(normed).to(self.device or "cpu"))

    def _default_nlist(self, n: int) -> int:
        # ~sqrt(N) cells, at least 39 training points per cell (faiss' minimum) and at most 4096 cells
        return int(max(1, min(4096, n // 39, round(math.sqrt(n)))))

    def _new_faiss_index(self, train: np.ndarray):
        faiss = _import_faiss()
        if self.method == "hnsw":
            if self.dtype == "float16":
                index = faiss.IndexHNSWSQ(
                    self.dim, faiss.ScalarQuantizer.QT_fp16, self.hnsw_m, faiss.METRIC_INNER_PRODUCT
                )
                index.train(train)
            else:
                index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = max(40, self.hnsw_m * 2)
            return index
        nlist = self.nlist or self._default_nlist(train.shape[0])
        self.nlist = nlist
        quantizer = faiss.IndexFlatIP(self.dim)
        if self.dtype == "float16":
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
        else:
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        index.cp.seed = self.seed
        index.cp.max_points_per_centroid = 64
        logger.info("training IVF index: %d cells on %d rows", nlist, train.shape[0])
        index.train(train)
        self._quantizer = quantizer  # keep the python object alive alongside the index
        return index

    def _add_faiss(self, emb: np.ndarray) -> None:
        if self._faiss is None:
            nlist = self.nlist or self._default_nlist(emb.shape[0])
            rng = np.random.default_rng(self.seed)
            n_train = min(emb.shape[0], 64 * nlist)
            sample = np.sort(rng.choice(emb.shape[0], size=n_train, replace=False))
            self._faiss = self._new_faiss_index(_normalized(emb[sample]))
        step = 1 << 16
        for start in range(0, emb.shape[0], step):
            self._faiss.add(_normalized(emb[start : start + step]))

    # ------------------------------------------------------------------------------------------------------------
    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` gallery rows by cosine similarity: ``(scores [Q, k] float32, indices [Q, k] int64)``."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = _normalized(_as_float32_rows(queries, self.dim, "queries"))
        if self.method in ("ivf", "hnsw"):
            return self._search_faiss(q, k)
        return self._search_exact(q, k)

    def _search_exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._small_on_cpu(q.shape[0]):
            return self._search_small(q, k)
        torch = _torch()
        with torch.inference_mode():
            return self._search_exact_impl(torch, q, k)

    def _small_on_cpu(self, nq: int) -> bool:
        """float32 rows on the CPU whose whole score block is small and within the memory budget."""
        n = len(self)
        block = 4 * nq * n
        return (
            0 < n and 0 < nq and nq * n <= SMALL_SEARCH_MAX and block <= self.memory_budget_bytes
            and all(c.device.type == "cpu" and c.dtype == _torch().float32 for c in self._chunks)
        )  # fmt: skip

    def _search_small(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """One numpy product and a stable sort (descending score, ties by gallery index, as the chunked path).
        For a block this small, torch's per-op dispatch costs more than the work: a service searches one query
        at a time against a few thousand sightings (BENCHMARKS.md §10)."""
        rows = [c.numpy() for c in self._chunks]
        g = rows[0] if len(rows) == 1 else np.concatenate(rows)
        s = q @ g.T
        kk = min(k, g.shape[0])
        order = np.argsort(-s, axis=1, kind="stable")[:, :kk]
        scores, indices = _padding(q.shape[0], k)
        scores[:, :kk] = np.take_along_axis(s, order, 1)
        indices[:, :kk] = order
        return scores, indices

    def _search_exact_impl(self, torch, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        nq = q.shape[0]
        scores, indices = _padding(nq, k)
        n = len(self)
        if n == 0 or nq == 0:
            return scores, indices
        kk = min(k, n)
        dev = self._chunks[0].device
        qt = torch.from_numpy(q).to(dev)
        # bound the [q_chunk, g_chunk] score block to the memory budget (plus a float32 copy of a fp16 chunk)
        q_chunk = max(1, min(nq, 1024))
        g_chunk = max(kk, self.memory_budget_bytes // (4 * (q_chunk + self.dim)))
        for qs in range(0, nq, q_chunk):
            qb = qt[qs : qs + q_chunk]
            best_s = torch.full((qb.shape[0], 0), -torch.inf, device=dev)
            best_i = torch.zeros((qb.shape[0], 0), dtype=torch.int64, device=dev)
            offset = 0
            for chunk in self._chunks:
                for gs in range(0, chunk.shape[0], g_chunk):
                    gb = chunk[gs : gs + g_chunk]
                    if gb.dtype != torch.float32:
                        gb = gb.float()
                    s = qb @ gb.T
                    top_s, top_i = torch.topk(s, min(kk, s.shape[1]), dim=1)
                    best_s = torch.cat([best_s, top_s], dim=1)
                    best_i = torch.cat([best_i, top_i + offset + gs], dim=1)
                    if best_s.shape[1] > kk:
                        best_s, sel = torch.topk(best_s, kk, dim=1)
                        best_i = torch.gather(best_i, 1, sel)
                offset += chunk.shape[0]
            # final order: descending score, ties by gallery index
            order = torch.argsort(best_i, dim=1)
            best_s, best_i = torch.gather(best_s, 1, order), torch.gather(best_i, 1, order)
            order = torch.sort(best_s, dim=1, descending=True, stable=True).indices
            scores[qs : qs + qb.shape[0], :kk] = torch.gather(best_s, 1, order).cpu().numpy()
            indices[qs : qs + qb.shape[0], :kk] = torch.gather(best_i, 1, order).cpu().numpy()
        return scores, indices

    def _search_faiss(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._faiss is None or len(self) == 0:
            return _padding(q.shape[0], k)
        if self.method == "ivf":
            self._faiss.nprobe = min(self.nprobe, self._faiss.nlist)
        else:
            self._faiss.hnsw.efSearch = max(self.ef_search, k)
        scores, indices = self._faiss.search(q, k)
        scores = scores.astype(np.float32, copy=False)
        scores[indices < 0] = -np.inf
        return scores, indices.astype(np.int64, copy=False)

    def reconstruct(self, ids) -> np.ndarray:
        """The stored (normalised) rows with these ids, as float32."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self._faiss is not None:
            if self.method == "ivf":
                self._faiss.make_direct_map()
            return (
                np.stack([self._faiss.reconstruct(int(i)) for i in ids])
                if ids.size
                else np.zeros((0, self.dim))
            )
        torch = _torch()
        full = torch.cat(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        return full[torch.from_numpy(ids).to(full.device)].float().cpu().numpy()

    # ------------------------------------------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "dim": self.dim,
            "dtype": self.dtype,
            "size": len(self),
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "hnsw_m": self.hnsw_m,
            "ef_search": self.ef_search,
            "memory_budget_bytes": self.memory_budget_bytes,
            "seed": self.seed,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index into ``directory`` (created if needed); returns the directory."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self._faiss is not None:
            _import_faiss().write_index(self._faiss, str(d / "faiss.index"))
        else:
            torch = _torch()
            data = (
                torch.cat(self._chunks)
                if self._chunks
                else torch.zeros((0, self.dim), dtype=self.torch_dtype)
            )
            np.save(d / "embeddings.npy", data.cpu().numpy())
        (d / INDEX_FILE).write_text(json.dumps(self._meta(), indent=2))
        return d

    @classmethod
    def load(
        cls, directory: str | os.PathLike, mmap: bool = False, device: str | None = None
    ) -> GalleryIndex:
        """Read an index written by :meth:`save`; ``mmap=True`` maps an exact index's rows instead of reading them."""
        d = Path(directory)
        meta_path = d / INDEX_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"no {INDEX_FILE} in {d}: not a saved GalleryIndex")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: format_version {meta.get('format_version')}, expected {FORMAT_VERSION}"
            )
        index = cls(
            meta["dim"],
            method=meta["method"],
            dtype=meta["dtype"],
            nlist=meta["nlist"],
            nprobe=meta["nprobe"],
            hnsw_m=meta["hnsw_m"],
            ef_search=meta["ef_search"],
            memory_budget_bytes=meta["memory_budget_bytes"],
            seed=meta["seed"],
            device=device,
        )
        if meta["method"] in ("ivf", "hnsw"):
            index._faiss = _import_faiss().read_index(str(d / "faiss.index"))
        else:
            # "c": copy-on-write map, writable for torch without ever touching the file
            arr = np.load(d / "embeddings.npy", mmap_mode="c" if mmap else None)
            if arr.shape[0]:
                index._chunks = [_torch().from_numpy(arr).to(device or "cpu")]
        if len(index) != meta["size"]:
            raise ValueError(f"{d}: index holds {len(index)} rows, its {INDEX_FILE} says {meta['size']}")
        return index
