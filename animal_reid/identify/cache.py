"""The on-disk embedding cache of identification: its key (model weights, preprocessing, precision) and its files.

Embeddings are cached under a key made of the model weights (the Hub commit for a Hub model, a hash of the weight
files for a directory), the modeling code that computes them (the export's ``*.py`` and, when it is used, the
installed ``modeling`` package's), the preprocessor configuration and the precision; each image is keyed by
:meth:`animal_reid.identify.ImageItem.cache_key`. The file discipline (part files, atomic writes, checks on read)
is :class:`animal_reid.io.PartFileCache`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import CorruptCacheFile, PartFileCache, read_npz, remove_stale_temporaries
from ..manifest import describe_os_error

logger = logging.getLogger(__name__)


def _hash_files(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def modeling_code_hash(model_dir: str | os.PathLike, *loaded: Any) -> str:
    """SHA-256 of the modeling code that embeds with an export: every ``*.py`` in ``model_dir`` (the remote code
    ``trust_remote_code`` loads) and, when an object of ``loaded`` (the model, the processor) comes from the
    installed ``modeling`` package or the folder has no code of its own, every ``*.py`` of that package (all of
    them, whatever file the code is split into). A changed or tampered file gives another hash."""
    files = [("export", p) for p in Path(model_dir).glob("*.py") if p.is_file()]
    installed = [type(obj).__module__.split(".")[0] for obj in loaded if obj is not None]
    if not files or "modeling" in installed:
        import modeling

        package = Path(modeling.__file__).resolve().parent
        files += [("modeling", p) for p in package.glob("*.py") if p.is_file()]
    h = hashlib.sha256()
    for where, p in sorted(files, key=lambda f: (f[0], f[1].name)):
        h.update(f"{where}/{p.name}\0".encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def model_cache_key(
    model_dir: str | os.PathLike, processor: Any = None, precision: str = "fp32", model: Any = None
) -> tuple[str, dict]:
    """Cache key of a local model directory: weights (Hub commit or file hash), the modeling code
    (:func:`modeling_code_hash`, ``model`` and ``processor`` saying whether the installed package's is used),
    preprocessing and precision."""
    d = Path(model_dir)
    weights = [p for p in d.iterdir() if p.suffix in (".safetensors", ".bin")] + [d / "config.json"]
    weights = [p for p in weights if p.is_file()]
    if not weights:
        raise FileNotFoundError(f"{d}: no weight files (*.safetensors / *.bin) to key the embedding cache on")
    # a Hub snapshot lives in .../snapshots/<commit>/: the commit names the weights
    revision = d.name if d.parent.name == "snapshots" and len(d.name) == 40 else None
    weights_id = f"revision:{revision}" if revision else f"sha256:{_hash_files(weights)}"
    proc = {}
    if processor is not None:
        proc = processor.to_dict() if hasattr(processor, "to_dict") else dict(processor)
        proc = {k: v for k, v in proc.items() if k not in ("auto_map", "_processor_class")}
    code = f"sha256:{modeling_code_hash(d, model, processor)}"
    meta = {"weights": weights_id, "code": code, "preprocessor": proc, "precision": precision}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return key, meta


def _read_cache_file(path: Path) -> tuple[list[str], np.ndarray]:
    """``(keys, embeddings)`` of one cache file, checked; raises :class:`CorruptCacheFile` (or FileNotFoundError)."""
    arrays = read_npz(path, ("keys", "embeddings"), "keys and embeddings")
    keys, emb = arrays["keys"], arrays["embeddings"]
    if keys.ndim != 1 or keys.dtype.kind != "U":
        raise CorruptCacheFile(f"keys are {keys.dtype} {keys.shape}, not a list of strings")
    if emb.ndim != 2 or emb.dtype != np.float32 or emb.shape[1] == 0:
        raise CorruptCacheFile(f"embeddings are {emb.dtype} {emb.shape}, not float32 [N, D]")
    if emb.shape[0] != keys.shape[0]:
        raise CorruptCacheFile(f"{keys.shape[0]} keys but {emb.shape[0]} embedding rows")
    if not np.isfinite(emb).all():
        raise CorruptCacheFile("embeddings contain NaN or infinity")
    return [str(k) for k in keys], emb


class EmbeddingCache(PartFileCache):
    """Embeddings of images already seen, for one model key, in ``<root>/<key>/`` (+ ``meta.json``).

    ``embeddings.npz`` holds the compacted rows (arrays ``keys`` [N] str and ``embeddings`` [N, D] float32).
    :meth:`add` saves each batch at once to its own ``part-*.npz``, so a run killed half-way keeps what it
    embedded; :meth:`save` (``compact``) folds the parts into ``embeddings.npz``. Every file is written under a
    temporary name and renamed into place, so none is ever half-written. Reading checks each file (a readable
    archive, both arrays, as many rows as keys, float32, finite, one dimension for the whole cache): a file
    that fails (truncated, garbage, wrong arrays) is reported in one warning naming it and removed, and its
    images are embedded again. Runs sharing a cache may re-embed each other's images, never read wrong rows. A
    cache that cannot be written (disk full, permission denied, read-only) is reported in one warning naming it
    and the problem; the run goes on without saving to it.
    """

    MAIN = "embeddings.npz"
    CORRUPT_WARNING = (
        "embedding cache file %s is corrupt (%s): removing it, its images will be embedded again"
    )
    UNUSABLE_WARNING = (
        "cannot %s the embedding cache %s; the run goes on without it (results are not affected)"
    )
    describe_error = staticmethod(describe_os_error)
    log = logger

    def __init__(self, root: str | os.PathLike, key: str, meta: dict | None = None):
        super().__init__(root, key, meta)
        self._blocks: list[np.ndarray] = []
        self._where: dict[str, tuple[int, int]] = {}  # key -> (block, row)
        if self.dir.is_dir():
            self._load()

    def _load(self) -> None:
        remove_stale_temporaries(self.dir)
        super()._load()
        if self._where:
            logger.info("embedding cache %s: %d images", self.dir, len(self))

    def read_file(self, path: Path) -> tuple[list[str], np.ndarray]:
        """``(keys, embeddings)`` of one cache file, checked, of the cache's dimension."""
        keys, emb = _read_cache_file(path)
        if self._blocks and emb.shape[1] != self.dim:
            raise CorruptCacheFile(f"rows of dimension {emb.shape[1]}, the cache has {self.dim}")
        return keys, emb

    def _remember(self, content: tuple[list[str], np.ndarray]) -> None:
        self._append(*content)

    def _append(self, keys: Sequence[str], emb: np.ndarray) -> None:
        rows = [(k, r) for r, k in enumerate(keys) if k not in self._where]
        if not rows:
            return
        b = len(self._blocks)
        self._blocks.append(emb)
        for k, r in rows:
            self._where[k] = (b, r)

    def __len__(self) -> int:
        return len(self._where)

    @property
    def dim(self) -> int | None:
        return self._blocks[0].shape[1] if self._blocks else None

    def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """``(found_mask [N], rows [n_found, D])`` for the given image keys."""
        found = np.array([k in self._where for k in keys], dtype=bool)
        if not found.any():
            return found, None
        rows = np.stack(
            [self._blocks[b][r] for b, r in (self._where[k] for k, f in zip(keys, found, strict=True) if f)]
        )
        return found, rows

    def add(self, keys: Sequence[str], embeddings: np.ndarray) -> None:
        """Remember new rows and save them at once (a part file); keys already cached are ignored."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(keys):
            raise ValueError(f"expected {len(keys)} embedding rows, got an array of shape {emb.shape}")
        if self.dim is not None and emb.shape[1] != self.dim:
            logger.warning(
                "embedding cache %s holds rows of dimension %d but the model gives %d: starting it afresh",
                self.dir, self.dim, emb.shape[1],
            )  # fmt: skip
            self.clear()
        new = [i for i, k in enumerate(keys) if k not in self._where]
        ok = np.isfinite(emb).all(axis=1)
        new = [i for i in new if ok[i]]  # a non-finite row is returned to the caller but never cached
        if not new:
            return
        new_keys, new_emb = [keys[i] for i in new], emb[new]
        self._write_part({"keys": np.array(new_keys, dtype=str), "embeddings": new_emb})
        self._append(new_keys, new_emb)

    def save(self) -> None:
        """Fold everything into ``embeddings.npz`` (atomically) and remove the part files it replaces."""
        if not self._where:
            return
        keys = list(self._where)
        emb = np.stack([self._blocks[b][r] for b, r in self._where.values()]).astype(np.float32, copy=False)
        self._write_main({"keys": np.array(keys, dtype=str), "embeddings": emb})
        self._blocks, self._where = [emb], {k: (0, r) for r, k in enumerate(keys)}
        self._write_meta()

    compact = save

    def clear(self) -> None:
        """Forget every row and remove the cache files."""
        for path in self._files:
            self._remove(path)
        self._blocks, self._where, self._files, self._parts = [], {}, [], []


def default_cache_dir() -> Path:
    base = os.environ.get("ANIMAL_REID_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "animal_reid"
    )
    return Path(base) / "embeddings"
