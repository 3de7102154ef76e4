"""Identify animals: rank the known individuals of a gallery for each query image, and flag new individuals.

Python API::

    from animal_reid.identify import BadImages, Identifier, read_gallery, read_queries
    ident = Identifier.from_pretrained("path/or/hub-id", cache_dir="~/.cache/animal_reid/embeddings")
    bad = BadImages("skip")  # or "raise"; without one, the first unusable image raises
    gallery, queries = read_gallery("gallery/", bad_images=bad), read_queries(["q1.jpg", "more/"], bad_images=bad)
    results = ident.identify(gallery, queries, top_k=5, threshold=0.45, bad_images=bad)
    write_results(results, "out/"); write_skipped(bad.skipped, "out/")

Command line::

    python -m animal_reid.identify --model DIR_OR_REPO --gallery GALLERY --queries Q [Q ...] --out OUTDIR \
        [--top-k 5] [--threshold 0.45 | thresholds.json | gallery] [--on-error skip|raise] [--overwrite] [-v]
        [--rerank local [--rerank-k 20] [--rerank-workers 1] [--rerank-time-budget S] [--rerank-fusion F.json]]

A gallery is one of

* a folder per individual: ``GALLERY/<identity>/**/<image>`` (jpg, jpeg, png, bmp, webp, tif);
* a CSV with columns ``path,identity`` and optional ``species,encounter`` (paths relative to the CSV's folder);
* a built corpus directory (Parquet, see docs/CONTRACTS.md "Corpus"); ``--gallery-config`` picks the config
  (default ``all`` when present, else every config) and ``--gallery-split`` the splits (default all); boxes
  and rotations of the corpus are applied.

Queries are image files, folders of images, or CSVs with a ``path`` column and optional ``identity`` (then each
result says whether the top candidate is right, and match sheets mark candidates green / red).

Image matches are aggregated to individuals by their maximum score. A query whose best score is below the
threshold is a new individual. ``--threshold`` is a number or a JSON file written by
:class:`animal_reid.openset.OpenSetThreshold` (per-species thresholds use the species of the best match), or
``gallery``: thresholds calibrated per species on the labelled gallery itself, no held-out queries needed
(:meth:`~animal_reid.openset.OpenSetThreshold.fit_gallery`); without it, a model directory holding
``open_set_threshold.json`` provides one; otherwise no verdict is given (``null``).

Bad images: a gallery or query file that cannot give an embedding (missing, empty, truncated, corrupt, not an
image, an unsupported type such as GIF or HEIC, smaller than the processor's ``min_side``, a decompression bomb,
a box outside its image) is skipped with ``--on-error skip`` (the default): each is logged, listed with its
reason in ``OUTDIR/skipped.csv`` (``path,role,reason``) and counted in a summary line on stderr, and the run
writes results for every usable image. ``--on-error raise`` stops at the first one instead. Hidden files and
folders (``.name``) are ignored. Encoding runs in chunks; a chunk that hits a bad image is split in halves until
the bad image is alone, so clean data pays nothing for the check.

Embeddings are cached in ``--cache-dir`` under a key made of the model weights (the Hub commit for a Hub model,
a hash of the weight files for a directory), the preprocessor configuration and the precision; each image is keyed
by its file path, size and modification time (bytes hash for corpus images) plus its box and rotation, so a
second run embeds only images it has not seen. The cache is saved after every chunk (a killed run keeps what it
embedded), written atomically, and checked when read: a truncated or corrupt cache file is reported in one
warning and rebuilt (see :class:`EmbeddingCache`).

Local re-ranking (``--rerank local``, API ``identify(..., rerank="local")`` or a
:class:`animal_reid.rerank.LocalReranker`): the top ``--rerank-k`` gallery images of each query by cosine
(within the query's species when both are known) are re-scored by verified SIFT matches inside the boxes, and
fused with the cosine by the fusion saved as ``rerank_fusion.json`` in the model directory or the gallery folder
(or ``--rerank-fusion``; without one a default weight is used, with a warning). Candidates then carry the fused
``score`` plus ``cosine`` and ``inliers``; the new-individual verdict compares the fused score with the fusion
file's own open-set threshold, or with ``--threshold`` (a threshold saved for plain cosines is not used). Local
features are cached beside the embeddings (``--cache-dir``/``local-*``); images without usable keypoints keep
their cosine and are counted. Each query also gets ``match_sheets/NNNN_<query>_matches.png`` with the verified
keypoint matches drawn between the query and each candidate. See docs/rerank.md.

Outputs in ``--out``: ``results.csv`` (one row per query and rank), ``results.json`` (one record per query),
``skipped.csv`` and ``match_sheets/NNNN_<query>.png``. An existing non-empty ``--out`` is refused before any work
unless ``--overwrite`` is given (which replaces these files and nothing else). Every option and path is checked
before the model is loaded; errors are one line ``error: <message>`` on stderr, exit status 2 for bad arguments
and 1 for failures (``-v`` adds the traceback).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import sys
import time
import traceback
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .openset import NEW_INDIVIDUAL, OpenSetThreshold
from .search import GalleryIndex

logger = logging.getLogger(__name__)

__all__ = [
    "ImageItem",
    "QueryResult",
    "SkippedImage",
    "BadImages",
    "BadImageError",
    "UsageError",
    "EmbeddingCache",
    "Identifier",
    "read_gallery",
    "read_queries",
    "write_results",
    "write_skipped",
    "model_cache_key",
    "run",
    "main",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
THRESHOLD_FILE = "open_set_threshold.json"
GALLERY_THRESHOLD = "gallery"  # threshold value: calibrate on the gallery itself
ON_ERROR = ("skip", "raise")
SKIPPED_FILE = "skipped.csv"
SKIPPED_FIELDS = ("path", "role", "reason")
#: images encoded between two saves of the embedding cache (and the unit a bad image is searched for in)
SAVE_EVERY = 256


class UsageError(ValueError):
    """A bad command-line argument or input path: the CLI exits with status 2."""


class BadImageError(ValueError):
    """An unusable gallery or query image under ``on_error="raise"`` (names the file and the reason)."""


# ------------------------------------------------------------------------------------------------------------------
# inputs
@dataclass
class ImageItem:
    """One image: a file path or encoded bytes, with what is known about it."""

    image: str | bytes
    name: str
    identity: str | None = None
    species: str | None = None
    encounter: str | None = None
    bbox: list[float] | None = None
    theta: float = 0.0

    def cache_key(self) -> str:
        if isinstance(self.image, bytes):
            src = "sha1:" + hashlib.sha1(self.image).hexdigest()
        else:
            p = Path(self.image).resolve()
            st = p.stat()
            src = f"file:{p}:{st.st_size}:{st.st_mtime_ns}"
        bbox = None if self.bbox is None else [round(float(v), 3) for v in self.bbox]
        payload = json.dumps([src, bbox, round(float(self.theta or 0.0), 6)])
        return hashlib.sha1(payload.encode()).hexdigest()

    def open(self):
        """The image as a PIL image (cropped to its box, if any), for match sheets."""
        from PIL import Image, ImageOps

        with Image.open(io.BytesIO(self.image) if isinstance(self.image, bytes) else self.image) as im:
            img = ImageOps.exif_transpose(im).convert("RGB")
        if self.bbox is not None:
            x, y, w, h = (float(v) for v in self.bbox)
            if w > 1 and h > 1:
                img = img.crop((int(x), int(y), int(x + w), int(y + h)))
        return img


@dataclass
class SkippedImage:
    """A gallery or query image left out of the run, and why."""

    path: str
    role: str  # "gallery" or "query"
    reason: str
    item: ImageItem | None = field(default=None, repr=False, compare=False)


class BadImages:
    """The bad-image policy of a run: ``"skip"`` lists unusable images and goes on, ``"raise"`` stops at the first.

    Pass one object to :func:`read_gallery`, :func:`read_queries` and :meth:`Identifier.identify`; afterwards
    ``skipped`` holds a :class:`SkippedImage` per image left out (write it with :func:`write_skipped`).
    """

    #: images logged one by one at WARNING; the rest at DEBUG (all are in ``skipped``)
    LOG_FIRST = 20

    def __init__(self, on_error: str = "skip"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.skipped: list[SkippedImage] = []

    def __len__(self) -> int:
        return len(self.skipped)

    def add(self, path: str, role: str, reason: str, item: ImageItem | None = None, error=None) -> None:
        """Record one unusable image (``"skip"``) or raise :class:`BadImageError` about it (``"raise"``)."""
        if self.on_error == "raise":
            raise BadImageError(f"{role} image {path}: {reason}") from error
        level = logging.WARNING if len(self.skipped) < self.LOG_FIRST else logging.DEBUG
        logger.log(level, "skipping %s image %s: %s", role, path, reason)
        self.skipped.append(SkippedImage(str(path), role, reason, item))

    def count(self, role: str) -> int:
        return sum(1 for s in self.skipped if s.role == role)

    def summary(self, report: str | os.PathLike | None = None) -> str:
        """One line: how many images were skipped, per role, and where the list is."""
        where = f"; path and reason of each in {report}" if report is not None else ""
        return (
            f"skipped {len(self.skipped)} unusable images ({self.count('gallery')} gallery, "
            f"{self.count('query')} query){where}"
        )


def _item_path(item: ImageItem) -> str:
    return item.image if isinstance(item.image, str) else item.name


def _is_image_error(err: BaseException) -> bool:
    """Whether ``err`` is about one image (the processor's ``InvalidImageError``, PIL failing to read a file).

    ``InvalidImageError`` is matched by name: a model loaded as remote code has its own copy of the class.
    """
    if any(c.__name__ == "InvalidImageError" for c in type(err).__mro__):
        return True
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - PIL comes with the model code
        return False
    return isinstance(err, UnidentifiedImageError | Image.DecompressionBombError)


def _error_reason(err: BaseException, item: ImageItem) -> str:
    """One line for the report: the error's message without the file name it starts with."""
    text = str(err).strip()
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the last line is the error
        text = text.splitlines()[-1].split(": ", 1)[-1]
    text = " ".join(text.split()) or type(err).__name__
    for prefix in (f"{_item_path(item)}: ", f"{item.image}: " if isinstance(item.image, str) else ""):
        if prefix and text.startswith(prefix):
            text = text[len(prefix) :]
    return re.sub(r"^<\d+ bytes>: ", "", text)


def _unsupported(p: Path) -> str:
    kind = f"file type {p.suffix.lower()!r}" if p.suffix else "file without an extension"
    return f"unsupported {kind} (supported: {', '.join(e[1:] for e in IMAGE_EXTENSIONS)})"


def _hidden(p: Path, base: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(base).parts)


def _scan(folder: Path, role: str, bad: BadImages | None, **fields) -> list[ImageItem]:
    """The images under ``folder`` (recursively, hidden files left out); other files go to ``bad``."""
    items = []
    for f in sorted(f for f in folder.rglob("*") if f.is_file() and not _hidden(f, folder)):
        if f.suffix.lower() in IMAGE_EXTENSIONS:
            items.append(ImageItem(image=str(f), name=str(f), **fields))
        elif bad is not None:
            bad.add(str(f), role, _unsupported(f))
    return items


def _read_csv(path: Path, need_identity: bool, bad: BadImages | None = None) -> list[ImageItem]:
    role = "gallery" if need_identity else "query"
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        need = {"path", "identity"} if need_identity else {"path"}
        if not need <= cols:
            raise ValueError(f"{path}: CSV needs columns {sorted(need)}, has {sorted(cols)}")
        items = []
        for row in reader:
            p = Path(row["path"])
            p = p if p.is_absolute() else path.parent / p
            if not p.is_file():
                if bad is None:
                    raise FileNotFoundError(f"{path}: image {row['path']!r} not found (looked at {p})")
                bad.add(str(p), role, f"file not found (listed in {path.name} as {row['path']!r})")
                continue
            if bad is not None and p.suffix.lower() not in IMAGE_EXTENSIONS:
                bad.add(str(p), role, _unsupported(p))
                continue
            items.append(
                ImageItem(
                    image=str(p),
                    name=row["path"],
                    identity=row.get("identity") or None,
                    species=row.get("species") or None,
                    encounter=row.get("encounter") or None,
                )
            )
    return items


def _read_corpus(root: Path, config: str | None, splits: Sequence[str] | None) -> list[ImageItem]:
    import pyarrow.parquet as pq

    data = root / "data"
    configs = sorted(d.name for d in data.iterdir() if d.is_dir())
    if config is None:
        chosen = ["all"] if "all" in configs else configs
    elif config in configs:
        chosen = [config]
    else:
        raise ValueError(f"{root}: no corpus config {config!r}; configs are {configs}")
    items: list[ImageItem] = []
    seen: set[str] = set()
    for c in chosen:
        files = sorted((data / c).glob("*.parquet"))
        for f in files:
            split = f.name.split("-", 1)[0]
            if splits and split not in splits:
                continue
            table = pq.read_table(f)
            cols = set(table.column_names)
            if not {"image", "identity"} <= cols:
                raise ValueError(f"{f}: corpus shard needs columns image and identity, has {sorted(cols)}")
            for row in table.to_pylist():
                image_id = str(row.get("image_id") or f"{f.name}:{len(items)}")
                if image_id in seen:
                    continue
                seen.add(image_id)
                img = row["image"]
                data_bytes = img.get("bytes") if isinstance(img, dict) else img
                if not data_bytes:
                    raise ValueError(f"{f}: image {image_id} has no embedded bytes")
                items.append(
                    ImageItem(
                        image=bytes(data_bytes),
                        name=image_id,
                        identity=row["identity"],
                        species=row.get("species"),
                        encounter=row.get("encounter"),
                        bbox=row.get("bbox"),
                        theta=float(row.get("theta") or 0.0),
                    )
                )
    if not items:
        raise ValueError(f"{root}: no images in configs {chosen} splits {list(splits) if splits else 'all'}")
    return items


def read_gallery(
    source: str | os.PathLike,
    config: str | None = None,
    splits: Sequence[str] | None = None,
    bad_images: BadImages | None = None,
) -> list[ImageItem]:
    """Gallery items from a folder per individual, a CSV, or a built corpus directory (see the module docstring).

    With ``bad_images``, files that cannot be images (unsupported type, a CSV row whose file is missing) go
    there; without, other files in the folders are ignored and a missing CSV row raises ``FileNotFoundError``.
    """
    root = Path(source)
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise ValueError(f"gallery file {root} is not a CSV (expected path,identity[,species,encounter])")
        items = _read_csv(root, need_identity=True, bad=bad_images)
    elif (root / "data").is_dir() and any((root / "data").glob("*/*.parquet")):
        items = _read_corpus(root, config, splits)
    elif root.is_dir():
        items = []
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for it in _scan(d, "gallery", bad_images, identity=d.name):
                it.name = str(Path(it.image).relative_to(root))
                items.append(it)
    else:
        raise FileNotFoundError(f"gallery {root} not found")
    if not items:
        skipped = f" ({len(bad_images)} unusable files skipped)" if bad_images else ""
        raise ValueError(
            f"gallery {root} holds no images{skipped}: expected <identity>/<image> folders, a CSV, "
            "or a corpus directory"
        )
    return items


def read_queries(
    sources: Iterable[str | os.PathLike], bad_images: BadImages | None = None
) -> list[ImageItem]:
    """Query items from image files, folders (searched recursively) and CSVs (``path`` [, ``identity``, ``species``]).

    ``bad_images`` as for :func:`read_gallery`; a file given by name with an unsupported type goes there too.
    """
    sources = list(sources)
    n_bad = len(bad_images) if bad_images is not None else 0
    items: list[ImageItem] = []
    for s in sources:
        p = Path(s)
        if p.is_file() and p.suffix.lower() == ".csv":
            items.extend(_read_csv(p, need_identity=False, bad=bad_images))
        elif p.is_file():
            if bad_images is not None and p.suffix.lower() not in IMAGE_EXTENSIONS:
                bad_images.add(str(p), "query", _unsupported(p))
            else:
                items.append(ImageItem(image=str(p), name=str(p)))
        elif p.is_dir():
            items.extend(_scan(p, "query", bad_images))
        else:
            raise FileNotFoundError(f"query {p} not found")
    if not items:
        skipped = len(bad_images) - n_bad if bad_images is not None else 0
        note = f" ({skipped} unusable files skipped)" if skipped else ""
        raise ValueError(f"no query images found in {list(map(str, sources))}{note}")
    return items


# ------------------------------------------------------------------------------------------------------------------
# embedding cache
def _hash_files(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def model_cache_key(
    model_dir: str | os.PathLike, processor: Any = None, precision: str = "fp32"
) -> tuple[str, dict]:
    """Cache key of a local model directory: weights (Hub commit or file hash) + preprocessing + precision."""
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
    meta = {"weights": weights_id, "preprocessor": proc, "precision": precision}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return key, meta


class _CorruptCache(Exception):
    """A cache file that cannot be trusted; the message says why."""


def _read_cache_file(path: Path) -> tuple[list[str], np.ndarray]:
    """``(keys, embeddings)`` of one cache file, checked; raises :class:`_CorruptCache` (or FileNotFoundError)."""
    try:
        with zipfile.ZipFile(path) as zf:  # CRCs cover the arrays' headers and data: any flipped byte shows
            damaged = zf.testzip()
        if damaged is not None:
            raise _CorruptCache(f"checksum mismatch in {damaged}")
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            if not {"keys", "embeddings"} <= names:
                raise _CorruptCache(f"holds arrays {sorted(names)}, not keys and embeddings")
            keys, emb = z["keys"], z["embeddings"]
    except (_CorruptCache, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001 - BadZipFile, EOFError, ValueError, OSError, MemoryError from a header
        raise _CorruptCache(f"{type(err).__name__}: {err}") from err
    if keys.ndim != 1 or keys.dtype.kind != "U":
        raise _CorruptCache(f"keys are {keys.dtype} {keys.shape}, not a list of strings")
    if emb.ndim != 2 or emb.dtype != np.float32 or emb.shape[1] == 0:
        raise _CorruptCache(f"embeddings are {emb.dtype} {emb.shape}, not float32 [N, D]")
    if emb.shape[0] != keys.shape[0]:
        raise _CorruptCache(f"{keys.shape[0]} keys but {emb.shape[0]} embedding rows")
    if not np.isfinite(emb).all():
        raise _CorruptCache("embeddings contain NaN or infinity")
    return [str(k) for k in keys], emb


def _write_atomic(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, flushed to disk, then renamed onto ``path``."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{time.time_ns()}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class EmbeddingCache:
    """Embeddings of images already seen, for one model key, in ``<root>/<key>/`` (+ ``meta.json``).

    ``embeddings.npz`` holds the compacted rows (arrays ``keys`` [N] str and ``embeddings`` [N, D] float32).
    :meth:`add` saves each batch at once to its own ``part-*.npz``, so a run killed half-way keeps what it
    embedded; :meth:`save` (``compact``) folds the parts into ``embeddings.npz``. Every file is written under a
    temporary name and renamed into place, so none is ever half-written. Reading checks each file (a readable
    archive, both arrays, as many rows as keys, float32, finite, one dimension for the whole cache): a file
    that fails (truncated, garbage, wrong arrays) is reported in one warning naming it and removed, and its
    images are embedded again. Runs sharing a cache may re-embed each other's images, never read wrong rows.
    """

    MAIN = "embeddings.npz"
    PART_GLOB = "part-*.npz"

    def __init__(self, root: str | os.PathLike, key: str, meta: dict | None = None):
        self.dir = Path(root).expanduser() / key
        self.path = self.dir / self.MAIN
        self.meta = meta or {}
        self._blocks: list[np.ndarray] = []
        self._where: dict[str, tuple[int, int]] = {}  # key -> (block, row)
        self._files: list[Path] = []  # files whose rows are loaded (compact() replaces them)
        self._parts: list[Path] = []  # part files among them
        self.n_rebuilt = 0  # corrupt files dropped on load
        self._meta_written = False
        if self.dir.is_dir():
            self._load()

    def _load(self) -> None:
        self._remove_stale_temporaries()
        for path in [self.path, *sorted(self.dir.glob(self.PART_GLOB))]:
            if not path.is_file():
                continue
            try:
                keys, emb = _read_cache_file(path)
                if self._blocks and emb.shape[1] != self.dim:
                    raise _CorruptCache(f"rows of dimension {emb.shape[1]}, the cache has {self.dim}")
            except FileNotFoundError:  # compacted away by another run meanwhile
                continue
            except _CorruptCache as err:
                logger.warning(
                    "embedding cache file %s is corrupt (%s): removing it, its images will be embedded again",
                    path,
                    err,
                )
                path.unlink(missing_ok=True)
                self.n_rebuilt += 1
                continue
            self._append(keys, emb)
            self._files.append(path)
            if path != self.path:
                self._parts.append(path)
        if self._where:
            logger.info("embedding cache %s: %d images", self.dir, len(self))

    def _remove_stale_temporaries(self, age_s: float = 3600.0) -> None:
        """Temporary files left by killed runs (a live run renames its own within seconds)."""
        now = time.time()
        for tmp in self.dir.glob(".tmp-*"):
            try:
                if now - tmp.stat().st_mtime > age_s:
                    tmp.unlink()
            except OSError:
                pass

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
        self.dir.mkdir(parents=True, exist_ok=True)
        part = self.dir / f"part-{time.time_ns():020d}-{os.getpid()}.npz"
        _write_atomic(part, lambda f: np.savez(f, keys=np.array(new_keys, dtype=str), embeddings=new_emb))
        self._append(new_keys, new_emb)
        self._files.append(part)
        self._parts.append(part)
        self._write_meta()

    def save(self) -> None:
        """Fold everything into ``embeddings.npz`` (atomically) and remove the part files it replaces."""
        if not self._where:
            return
        keys = list(self._where)
        emb = np.stack([self._blocks[b][r] for b, r in self._where.values()]).astype(np.float32, copy=False)
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path, lambda f: np.savez(f, keys=np.array(keys, dtype=str), embeddings=emb))
        for part in self._parts:
            part.unlink(missing_ok=True)
        self._blocks, self._where = [emb], {k: (0, r) for r, k in enumerate(keys)}
        self._files, self._parts = [self.path], []
        self._write_meta()

    compact = save

    @property
    def n_parts(self) -> int:
        return len(self._parts)

    def clear(self) -> None:
        """Forget every row and remove the cache files."""
        for path in self._files:
            path.unlink(missing_ok=True)
        self._blocks, self._where, self._files, self._parts = [], {}, [], []

    def _write_meta(self) -> None:
        """``meta.json`` (what the key stands for), once per cache object."""
        if self.meta and not self._meta_written:
            text = json.dumps(self.meta, indent=2, sort_keys=True, default=str).encode()
            _write_atomic(self.dir / "meta.json", lambda f: f.write(text))
            self._meta_written = True


def default_cache_dir() -> Path:
    base = os.environ.get("ANIMAL_REID_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "animal_reid"
    )
    return Path(base) / "embeddings"


# ------------------------------------------------------------------------------------------------------------------
# identification
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


def _resolve_threshold(threshold, model_dir: Path | None) -> OpenSetThreshold | None:
    if isinstance(threshold, OpenSetThreshold):
        return _checked_threshold(threshold, "threshold")
    if threshold is None:
        if model_dir is not None and (model_dir / THRESHOLD_FILE).is_file():
            logger.info("using the open-set threshold saved with the model: %s", model_dir / THRESHOLD_FILE)
            return _load_threshold(model_dir / THRESHOLD_FILE)
        return None
    if isinstance(threshold, int | float):
        return _checked_threshold(OpenSetThreshold(global_threshold=float(threshold)), "threshold")
    text = str(threshold)
    if text == GALLERY_THRESHOLD:
        return GALLERY_THRESHOLD  # calibrated on the gallery once it is embedded (`_gallery_threshold`)
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return _checked_threshold(OpenSetThreshold(global_threshold=value), "threshold")
    if Path(text).is_file():
        return _load_threshold(Path(text))
    raise ValueError(
        f"threshold must be a number, an open-set threshold JSON file or {GALLERY_THRESHOLD!r}, got {threshold!r}"
    )


def _gallery_threshold(embeddings: np.ndarray, gallery: Sequence[ImageItem]) -> OpenSetThreshold | None:
    """Thresholds calibrated on queries simulated from the labelled gallery (per species where it has enough
    images); None, with a warning, when the gallery has a single identity per species and so nothing to calibrate."""
    try:
        species = [g.species or "" for g in gallery] if any(g.species for g in gallery) else None
        thr = OpenSetThreshold.fit_gallery(
            embeddings, [g.identity for g in gallery], species, [g.encounter for g in gallery]
        )
    except ValueError as err:
        logger.warning("threshold 'gallery': no verdicts, %s", err)
        return None
    per = ", ".join(f"{k} {v:.3f}" for k, v in sorted(thr.per_species.items()))
    logger.info("threshold 'gallery': global %.3f%s", thr.global_threshold, f"; {per}" if per else "")
    return thr


def _load_threshold(path: Path) -> OpenSetThreshold:
    try:
        thr = OpenSetThreshold.load(path)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise ValueError(
            f"threshold file {path} is not an open-set threshold JSON ({type(err).__name__}: {err})"
        ) from err
    return _checked_threshold(thr, f"threshold file {path}")


def _checked_threshold(thr: OpenSetThreshold, what: str, low: float = -math.inf, high: float = math.inf):
    """``thr`` if its global and per-species values are finite numbers in [low, high]; else ValueError."""
    values = {
        "global": thr.global_threshold,
        **{f"species {k!r}": v for k, v in (thr.per_species or {}).items()},
    }
    for name, v in values.items():
        try:
            ok = math.isfinite(float(v)) and low <= float(v) <= high
        except (TypeError, ValueError):
            ok = False
        if not ok:
            span = "a finite number" if math.isinf(low) else f"a cosine in [{low:g}, {high:g}]"
            raise ValueError(f"{what}: the {name} threshold must be {span}, got {v!r}")
    return thr


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
        key, meta = model_cache_key(local, proc, precision)
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
                    bad_images.add(_item_path(items[i]), role, f"cannot read the file ({err})", items[i], err)
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
                reason = _unsupported(p)
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
            if bad_images is None or not _is_image_error(err):
                raise
            if len(idx) == 1:
                it = items[idx[0]]
                bad_images.add(_item_path(it), role, _error_reason(err, it), it, err)
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
        the model, its features cached beside the embeddings) or a ``LocalReranker``; see the module docstring.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        missing = [g.name for g in gallery if g.identity is None]
        if missing:
            raise ValueError(f"{len(missing)} gallery images have no identity, e.g. {missing[:3]}")
        if not gallery:
            raise ValueError("the gallery is empty")
        reranker = self.local_reranker(rerank) if rerank is not None else None
        if reranker is not None and str(threshold) == GALLERY_THRESHOLD:
            raise ValueError(
                "threshold 'gallery' calibrates cosines; with local re-ranking pass a fused-score threshold"
            )
        if reranker is not None and threshold is None:
            thr = reranker.fusion.threshold()
            if thr is None and self.model_dir is not None and (self.model_dir / THRESHOLD_FILE).is_file():
                logger.info(
                    "local re-ranking: %s holds a threshold on cosines, not on fused scores; no verdicts "
                    "(fit one on fused scores into the fusion file, or pass a threshold)",
                    self.model_dir / THRESHOLD_FILE,
                )
        else:
            thr = _resolve_threshold(threshold, self.model_dir)
        kept, g_emb = self.embed_usable(gallery, bad_images, "gallery")
        if not kept:
            raise ValueError(f"no usable gallery image: all {len(gallery)} were skipped as unusable")
        gallery = [gallery[i] for i in kept]
        if thr == GALLERY_THRESHOLD:
            thr = _gallery_threshold(g_emb, gallery)
        kept, q_emb = self.embed_usable(queries, bad_images, "query")
        queries = [queries[i] for i in kept]
        if not queries:
            return []
        index = GalleryIndex.build(g_emb, method=self.search_method, device=self.search_device)
        identities = np.array([g.identity for g in gallery], dtype=object)
        gallery_ids = set(identities.tolist())
        n_ids = len(gallery_ids)
        want = min(top_k, n_ids)
        k_img = min(len(gallery), max(50, 10 * top_k))
        if reranker is not None:
            k_img = min(len(gallery), max(k_img, 4 * reranker.k))
        scores, idx = index.search(q_emb, k_img)
        fused = cos_of = inliers_of = None
        if reranker is not None:
            fused, cos_of, inliers_of = self._rerank(reranker, queries, gallery, scores, idx)
        results = []
        for qi, q in enumerate(queries):
            s, ii = scores[qi], idx[qi]
            while True:
                best: dict[str, tuple[float, int]] = {}
                pairs = zip(s, ii, strict=True)
                if fused is not None:  # re-scored shortlist first, by fused score; then the rest by cosine
                    pairs = sorted(
                        ((fused[qi].get(int(gi), sc), gi) for sc, gi in pairs), key=lambda p: -p[0]
                    )
                for sc, gi in pairs:
                    if gi < 0:
                        continue
                    ident = identities[gi]
                    if ident not in best:  # rows come sorted: the first hit is the individual's max
                        best[ident] = (float(sc), int(gi))
                if len(best) >= want or k_img >= len(gallery) or len(s) >= len(gallery):
                    break
                s, ii = (a[0] for a in index.search(q_emb[qi : qi + 1], min(len(gallery), 4 * len(s))))
            ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:want]
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
                for c, (_, (_, gi)) in zip(cands, ranked, strict=True):
                    c["cosine"] = round(cos_of[qi][gi], 6) if gi in cos_of[qi] else c["score"]
                    c["inliers"] = inliers_of[qi].get(gi)  # None: outside the shortlist; -1: no keypoints
                matches = [reranker.match(q, gallery[gi]) for _, (_, gi) in ranked]
            verdict, t = None, None
            if thr is not None and cands:
                t = thr.threshold_for(cands[0]["species"])
                verdict = bool(cands[0]["score"] < t)
            results.append(
                QueryResult(
                    query=q.name,
                    candidates=cands,
                    new_individual=verdict,
                    threshold=t,
                    query_identity=q.identity,
                    item=q,
                    candidate_items=[gallery[gi] for _, (_, gi) in ranked],
                    matches=matches,
                    match_config=reranker.config if reranker is not None else None,
                    query_in_gallery=None if q.identity is None else q.identity in gallery_ids,
                )
            )
        return results

    def local_reranker(self, rerank: Any):
        """The :class:`animal_reid.rerank.LocalReranker` for ``rerank`` (``"local"`` or one already built)."""
        from .rerank import FUSION_FILE, Fusion, LocalReranker

        if isinstance(rerank, LocalReranker):
            return rerank
        if rerank != "local":
            raise ValueError(f"rerank must be None, 'local' or a LocalReranker, got {rerank!r}")
        fusion = None
        if self.model_dir is not None and (self.model_dir / FUSION_FILE).is_file():
            logger.info(
                "local re-ranking with the fusion saved with the model: %s", self.model_dir / FUSION_FILE
            )
            fusion = Fusion.load(self.model_dir / FUSION_FILE)
        cache_root = self.cache.dir.parent if self.cache is not None else None
        return LocalReranker(fusion, cache_dir=cache_root)

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


# ------------------------------------------------------------------------------------------------------------------
# outputs
def write_results(
    results: Sequence[QueryResult],
    out_dir: str | os.PathLike,
    match_sheets: bool = True,
    prune_sheets: bool = False,
) -> Path:
    """Write ``results.csv``, ``results.json`` and (optionally) ``match_sheets/*.png`` into ``out_dir``.

    Each file is written under a temporary name and renamed into place. A match sheet that cannot be drawn is
    logged and left out. ``prune_sheets`` removes earlier ``match_sheets/NNNN_*.png`` this call did not write
    (``--overwrite``: a shorter run must not leave sheets of the previous one).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = [
        "query",
        "rank",
        "identity",
        "score",
        "species",
        "image",
        "new_individual",
        "threshold",
        "query_identity",
        "correct",
    ]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in results:
        for c in r.candidates:
            w.writerow(
                {
                    **{k: c[k] for k in ("rank", "identity", "score", "species", "image")},
                    "query": r.query,
                    "new_individual": "" if r.new_individual is None else r.new_individual,
                    "threshold": "" if r.threshold is None else r.threshold,
                    "query_identity": r.query_identity or "",
                    "correct": "" if r.correct is None else r.correct,
                }
            )
    _write_text(out / "results.csv", buf.getvalue())
    _write_text(out / "results.json", json.dumps([r.to_dict() for r in results], indent=2))
    if match_sheets:
        _write_match_sheets(results, out / "match_sheets", prune_sheets)
    return out


def _write_text(path: Path, text: str) -> None:
    data = text.encode()
    _write_atomic(path, lambda f: f.write(data))


def _write_match_sheets(results: Sequence[QueryResult], sheets: Path, prune: bool) -> None:
    from .plots import match_sheet

    written = set()
    for i, r in enumerate(results):
        if r.item is None:
            continue
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(r.query).stem)[:60]
        verdict = None
        if r.new_individual is not None:
            verdict = (
                f"NEW individual (< {r.threshold:.3f})"
                if r.new_individual
                else f"known (>= {r.threshold:.3f})"
            )
        path = sheets / f"{i:04d}_{stem}.png"
        try:
            match_sheet(
                r.item.open(),
                [
                    {"image": it.open(), "identity": c["identity"], "score": c["score"]}
                    for c, it in zip(r.candidates, r.candidate_items, strict=True)
                ],
                path,
                query_label=r.query_identity,
                verdict=verdict,
            )
        except Exception as err:  # noqa: BLE001 - results are written; one sheet must not stop the others
            logger.warning("no match sheet for %s: %s", r.query, err)
            continue
        written.add(path.name)
        if r.matches is not None and r.candidates:
            from .rerank.reranker import draw_match_sheet

            mpath = sheets / f"{i:04d}_{stem}_matches.png"
            captions = [
                f"{c['rank']}. {c['identity']}  fused {c['score']:.3f}  cosine {c.get('cosine', c['score']):.3f}  "
                f"{'no keypoints' if m.n_inliers < 0 else f'{m.n_inliers} verified matches'}"
                for c, m in zip(r.candidates, r.matches, strict=True)
            ]
            try:
                draw_match_sheet(r.item, r.candidate_items, r.matches, captions, mpath, r.match_config)
            except Exception as err:  # noqa: BLE001 - as above
                logger.warning("no keypoint match sheet for %s: %s", r.query, err)
                continue
            written.add(mpath.name)
    if prune and sheets.is_dir():
        for old in sheets.glob("[0-9][0-9][0-9][0-9]_*.png"):
            if old.name not in written:
                old.unlink(missing_ok=True)


def write_skipped(skipped: Sequence[SkippedImage], out_dir: str | os.PathLike) -> Path:
    """Write ``skipped.csv`` (``path,role,reason``, one row per image left out; header only when none)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(SKIPPED_FIELDS)
    w.writerows((s.path, s.role, s.reason) for s in skipped)
    _write_text(out / SKIPPED_FILE, buf.getvalue())
    return out / SKIPPED_FILE


# ------------------------------------------------------------------------------------------------------------------
# command line
OUTPUT_NAMES = ("results.csv", "results.json", SKIPPED_FILE, "match_sheets")
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")


class _Parser(argparse.ArgumentParser):
    """argparse raising :class:`UsageError` (one line from ``main``) instead of printing usage and exiting."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m animal_reid.identify",
        description="Rank the known individuals of a gallery for each query image and flag new individuals.",
    )
    p.add_argument(
        "--model", required=True, help="model directory or Hub repo id (AutoModel, trust_remote_code)"
    )
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    p.add_argument(
        "--gallery", required=True, help="folder per individual, CSV (path,identity,...) or corpus dir"
    )
    p.add_argument(
        "--gallery-config", default=None, help="corpus config (default: 'all' if present, else all)"
    )
    p.add_argument("--gallery-split", action="append", default=None, help="corpus split(s) (default: all)")
    p.add_argument(
        "--queries", nargs="+", required=True, help="image files, folders or CSVs (path[,identity])"
    )
    p.add_argument("--out", required=True, help="output directory (new or empty, unless --overwrite)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out, replacing results.csv/json, skipped.csv and match sheets",
    )
    p.add_argument("--top-k", type=int, default=5, help="candidate individuals per query (>= 1)")
    p.add_argument(
        "--threshold",
        default=None,
        help="new-individual threshold: a cosine in [-1, 1], a thresholds JSON, or 'gallery' (calibrated per "
        "species on the labelled gallery itself: each gallery image queries the rest as a known and an unknown)",
    )
    p.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="skip",
        help="unusable image (corrupt, truncated, empty, unsupported type): skip it and list it in "
        "OUT/skipped.csv (default), or raise: stop at the first",
    )
    p.add_argument("--cache-dir", default=None, help=f"embedding cache (default {default_cache_dir()})")
    p.add_argument("--no-cache", action="store_true", help="embed everything, read and write no cache")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="worker processes decoding images (0: one background thread, fastest on a few CPU cores)",
    )
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--no-match-sheets", action="store_true")
    p.add_argument(
        "--rerank",
        choices=("none", "local"),
        default="none",
        help="local: re-score each query's shortlist with verified SIFT keypoint matches (docs/rerank.md)",
    )
    p.add_argument("--rerank-k", type=int, default=20, help="shortlist size re-scored per query (>= 1)")
    p.add_argument("--rerank-workers", type=int, default=1, help="threads matching keypoints (>= 1)")
    p.add_argument(
        "--rerank-time-budget",
        type=float,
        default=None,
        help="seconds per query; candidates not matched in time keep their cosine (default: no limit)",
    )
    p.add_argument(
        "--rerank-fusion",
        default=None,
        help="fitted fusion JSON (default: rerank_fusion.json in --model, else in a --gallery folder)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks with errors")
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Every option and path, before anything expensive; raises :class:`UsageError` naming the culprit."""
    for name, value, low in (("--top-k", args.top_k, 1), ("--batch-size", args.batch_size, 1)):
        if value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    if args.num_workers < 0:
        raise UsageError(f"--num-workers must be >= 0, got {args.num_workers}")
    rerank = args.rerank == "local"
    if rerank:
        _check_rerank_args(args)
    if args.threshold is not None:
        _check_threshold_arg(args.threshold, rerank)
    _check_model(args.model)
    if not Path(args.gallery).exists():
        raise UsageError(f"--gallery {args.gallery}: no such file or folder")
    for q in args.queries:
        if not Path(q).exists():
            raise UsageError(f"--queries {q}: no such file or folder")
    if args.cache_dir is not None and not args.no_cache:
        c = Path(args.cache_dir).expanduser()
        if c.exists() and not c.is_dir():
            raise UsageError(f"--cache-dir {args.cache_dir} exists and is not a folder")
    if args.device is not None:
        _check_device(args.device)
    _check_out(args)


def _check_rerank_args(args: argparse.Namespace) -> None:
    for name, value in (("--rerank-k", args.rerank_k), ("--rerank-workers", args.rerank_workers)):
        if value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")
    budget = args.rerank_time_budget
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise UsageError(f"--rerank-time-budget must be a number of seconds > 0, got {budget}")
    if args.rerank_fusion is not None:
        from .rerank import Fusion

        if not Path(args.rerank_fusion).is_file():
            raise UsageError(f"--rerank-fusion {args.rerank_fusion}: no such file")
        try:
            Fusion.load(args.rerank_fusion)
        except (OSError, ValueError) as err:
            raise UsageError(f"--rerank-fusion {args.rerank_fusion}: {err}") from err


def _cli_reranker(args: argparse.Namespace, ident: Identifier):
    """The LocalReranker the CLI options describe (fusion: --rerank-fusion, the model's, the gallery folder's)."""
    from .rerank import FUSION_FILE, Fusion, LocalReranker

    path = args.rerank_fusion
    if path is None:
        for d in (ident.model_dir, Path(args.gallery)):
            if d is not None and d.is_dir() and (d / FUSION_FILE).is_file():
                path = d / FUSION_FILE
                break
    fusion = None
    if path is not None:
        logger.info("local re-ranking with the fusion in %s", path)
        fusion = Fusion.load(path)
    return LocalReranker(
        fusion,
        k=args.rerank_k,
        workers=args.rerank_workers,
        time_budget_s=args.rerank_time_budget,
        cache_dir=ident.cache.dir.parent if ident.cache is not None else None,
        progress=None if not args.quiet else False,
    )


def _accuracy_summary(results: list[QueryResult]) -> str:
    """``, top-1 correct a/b`` over queries of gallery individuals, and the new-individual verdicts over the rest."""
    known = [r.correct for r in results if r.correct is not None and r.query_in_gallery is not False]
    new = [r.correct for r in results if r.correct is not None and r.query_in_gallery is False]
    out = f", top-1 correct {sum(known)}/{len(known)}" if known else ""
    if new:
        out += f", called new {sum(new)}/{len(new)} of the queries whose individual is not in the gallery"
    return out


def _check_threshold_arg(value: str, fused: bool = False) -> None:
    if value == GALLERY_THRESHOLD:
        if fused:
            raise UsageError(
                "--threshold gallery calibrates cosines; with --rerank local pass a fused-score threshold"
            )
        return
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if fused:  # fused scores are a cosine plus a non-negative bonus
            if not (math.isfinite(number) and number >= -1.0):
                raise UsageError(f"--threshold must be a fused score >= -1, got {value}")
            return
        if not (math.isfinite(number) and -1.0 <= number <= 1.0):
            raise UsageError(f"--threshold must be a cosine in [-1, 1], got {value}")
        return
    if not Path(value).is_file():
        raise UsageError(
            f"--threshold must be a number, an open-set threshold JSON file or 'gallery', got {value!r} (no such file)"
        )
    try:
        _checked_threshold(
            _load_threshold(Path(value)), f"--threshold {value}", -1.0, math.inf if fused else 1.0
        )
    except ValueError as err:
        raise UsageError(str(err)) from err


def _check_model(spec: str) -> None:
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UsageError(
                f"--model {spec}: the folder holds no config.json, so it is not a model directory"
            )
    elif p.exists():
        raise UsageError(f"--model {spec} is a file; expected a model directory or a Hub repo id")
    elif not _HUB_ID.fullmatch(spec):
        raise UsageError(f"--model {spec}: no such model directory, and not a Hub repo id (owner/name)")


def _check_device(spec: str) -> None:
    import torch

    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"--device {spec!r} is not a torch device ({err})") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: CUDA is not available on this machine")


def _check_out(args: argparse.Namespace) -> None:
    """``--out`` is new, empty, or ``--overwrite`` is given; not inside the inputs; created and writable."""
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder")
    if out.is_dir() and not args.overwrite:
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            n = f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}"
            raise UsageError(
                f"--out {args.out} is not empty ({n}: {shown}); choose a new or empty folder, or pass "
                "--overwrite to replace its results"
            )
    resolved = out.resolve()
    for flag, src in [("--gallery", args.gallery)] + [("--queries", q) for q in args.queries]:
        src_dir = Path(src).resolve()
        if src_dir.is_dir() and resolved.is_relative_to(src_dir):
            raise UsageError(
                f"--out {args.out} lies inside {flag} {src}: its match sheets would become inputs"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {args.out}: cannot create the folder ({err.strerror or err})") from err
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {args.out}: the folder is not writable")


def _read_inputs(args: argparse.Namespace, bad: BadImages) -> tuple[list[ImageItem], list[ImageItem]]:
    try:
        gallery = read_gallery(args.gallery, args.gallery_config, args.gallery_split, bad_images=bad)
        queries = read_queries(args.queries, bad_images=bad)
    except BadImageError:
        raise
    except (ValueError, FileNotFoundError) as err:  # what the gallery / query arguments point at is wrong
        raise UsageError(str(err)) from err
    return gallery, queries


def run(argv: list[str] | None = None) -> list[QueryResult]:
    """The command line as a function: parse ``argv``, identify, write outputs, print a summary; returns results.

    Raises :class:`UsageError` for bad arguments (before any model is loaded) and the underlying error for
    failures; :func:`main` turns both into one line and an exit status.
    """
    return _run(_parser().parse_args(argv))


def _run(args: argparse.Namespace) -> list[QueryResult]:
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    package, level = logging.getLogger("animal_reid"), logging.getLogger("animal_reid").level
    if args.verbose:  # every skipped image, not only the first BadImages.LOG_FIRST
        package.setLevel(logging.DEBUG)
    try:
        return _identify_cli(args)
    finally:
        package.setLevel(level)


def _identify_cli(args: argparse.Namespace) -> list[QueryResult]:
    _check_args(args)
    out = Path(args.out).expanduser()
    bad = BadImages(args.on_error)
    finished = False
    try:
        gallery, queries = _read_inputs(args, bad)
        cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
        ident = Identifier.from_pretrained(
            args.model,
            revision=args.revision,
            cache_dir=cache_dir,
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        )
        reranker = _cli_reranker(args, ident) if args.rerank == "local" else None
        results = ident.identify(
            gallery, queries, top_k=args.top_k, threshold=args.threshold, bad_images=bad, rerank=reranker
        )
        write_results(results, out, match_sheets=not args.no_match_sheets, prune_sheets=args.overwrite)
        finished = True
    finally:  # after a failure too, as long as it lists something (else an earlier report stays as it was)
        report = out / SKIPPED_FILE
        if finished or bad.skipped:
            try:
                write_skipped(bad.skipped, out)
            except OSError as err:
                logger.error("could not write %s: %s", report, err)
        if bad.skipped:
            print(bad.summary(report), file=sys.stderr)
    _print_results(args, results, gallery, ident, bad, out)
    n_queries = len(queries) + bad.count("query")
    if not results and n_queries:
        raise RuntimeError(f"no usable query image: all {n_queries} were skipped (see {report})")
    return results


def _print_results(args, results, gallery, ident, bad: BadImages, out: Path) -> None:
    if not args.quiet:
        for r in results:
            verdict = (
                ""
                if r.new_individual is None
                else ("  -> NEW individual" if r.new_individual else "  -> known")
            )
            truth = (
                ""
                if r.query_identity is None
                else f"  [true: {r.query_identity}, {'ok' if r.correct else 'wrong'}]"
            )
            print(f"{r.query}{verdict}{truth}")
            for c in r.candidates:
                print(f"  {c['rank']}. {c['identity']}  {c['score']:.3f}  ({c['image']})")
    skipped_items = {id(s.item) for s in bad.skipped if s.item is not None}
    used = [g for g in gallery if id(g) not in skipped_items]
    acc = _accuracy_summary(results)
    skipped = f"; skipped {len(bad)} unusable images ({SKIPPED_FILE})" if bad.skipped else ""
    st = ident.rerank_stats if args.rerank == "local" else None
    if st is not None:
        skipped += (
            f"; re-ranked {st['n_pairs_verified']}/{st['n_pairs']} shortlist pairs with local features "
            f"({st['n_queries_fallback']} queries and {st['n_gallery_fallback']} gallery images without usable "
            f"keypoints kept the cosine, {st['n_pairs_over_time_budget']} pairs over the time budget)"
        )
    print(
        f"{len(results)} queries against {len(used)} gallery images "
        f"({len({g.identity for g in used})} individuals); embedded {ident.n_embedded} images "
        f"({'no cache' if ident.cache is None else f'cache {ident.cache.dir}'}){acc}{skipped}; results in {out}"
    )


def _one_line(err: BaseException) -> str:
    """An exception as one line: its message (the last line of a worker's traceback), with its type if unclear."""
    text = str(err).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
    else:
        text = text.splitlines()[0] if text else ""
    if not text:
        return type(err).__name__
    if isinstance(err, ValueError | OSError | RuntimeError) and not isinstance(err, KeyError):
        return text
    return f"{type(err).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``animal-reid-identify``): 0 on success, 2 for bad arguments, 1 for failures.

    Errors are printed as one line ``error: <message>`` on stderr; ``-v`` prints the traceback too.
    """
    args = None
    try:
        args = _parser().parse_args(argv)
        _run(args)
        return 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the console gets one line, not a traceback
        verbose = bool(getattr(args, "verbose", False))
        if verbose:
            traceback.print_exc()
        hint = "" if verbose or isinstance(err, UsageError) else " (-v shows the traceback)"
        print(f"error: {_one_line(err)}{hint}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
