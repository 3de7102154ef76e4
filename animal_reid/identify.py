"""Identify animals: rank the known individuals of a gallery for each query image, and flag new individuals.

Python API::

    from animal_reid.identify import Identifier, read_gallery, read_queries
    ident = Identifier.from_pretrained("path/or/hub-id", cache_dir="~/.cache/animal_reid/embeddings")
    results = ident.identify(read_gallery("gallery/"), read_queries(["q1.jpg", "more/"]), top_k=5, threshold=0.45)
    write_results(results, "out/")

Command line::

    python -m animal_reid.identify --model DIR_OR_REPO --gallery GALLERY --queries Q [Q ...] --out OUTDIR \
        [--top-k 5] [--threshold 0.45 | --threshold thresholds.json]

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
:class:`animal_reid.openset.OpenSetThreshold` (per-species thresholds use the species of the best match); without
it, a model directory holding ``open_set_threshold.json`` provides one; otherwise no verdict is given (``null``).

Embeddings are cached in ``--cache-dir`` under a key made of the model weights (the Hub commit for a Hub model,
a hash of the weight files for a directory), the preprocessor configuration and the precision; each image is keyed
by its file path, size and modification time (bytes hash for corpus images) plus its box and rotation, so a
second run embeds only images it has not seen.

Outputs in ``--out``: ``results.csv`` (one row per query and rank), ``results.json`` (one record per query) and
``match_sheets/NNNN_<query>.png``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import sys
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
    "EmbeddingCache",
    "Identifier",
    "read_gallery",
    "read_queries",
    "write_results",
    "model_cache_key",
    "run",
    "main",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
THRESHOLD_FILE = "open_set_threshold.json"


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


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def _read_csv(path: Path, need_identity: bool) -> list[ImageItem]:
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
                raise FileNotFoundError(f"{path}: image {row['path']!r} not found (looked at {p})")
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
    source: str | os.PathLike, config: str | None = None, splits: Sequence[str] | None = None
) -> list[ImageItem]:
    """Gallery items from a folder per individual, a CSV, or a built corpus directory (see the module docstring)."""
    root = Path(source)
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise ValueError(f"gallery file {root} is not a CSV (expected path,identity[,species,encounter])")
        items = _read_csv(root, need_identity=True)
    elif (root / "data").is_dir() and any((root / "data").glob("*/*.parquet")):
        items = _read_corpus(root, config, splits)
    elif root.is_dir():
        items = []
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            for img in sorted(p for p in d.rglob("*") if _is_image(p)):
                items.append(ImageItem(image=str(img), name=str(img.relative_to(root)), identity=d.name))
    else:
        raise FileNotFoundError(f"gallery {root} not found")
    if not items:
        raise ValueError(
            f"gallery {root} holds no images: expected <identity>/<image> folders, a CSV, or a corpus directory"
        )
    return items


def read_queries(sources: Iterable[str | os.PathLike]) -> list[ImageItem]:
    """Query items from image files, folders (searched recursively) and CSVs (``path`` [, ``identity``, ``species``])."""
    items: list[ImageItem] = []
    for s in sources:
        p = Path(s)
        if p.is_file() and p.suffix.lower() == ".csv":
            items.extend(_read_csv(p, need_identity=False))
        elif p.is_file():
            items.append(ImageItem(image=str(p), name=str(p)))
        elif p.is_dir():
            items.extend(ImageItem(image=str(f), name=str(f)) for f in sorted(p.rglob("*")) if _is_image(f))
        else:
            raise FileNotFoundError(f"query {p} not found")
    if not items:
        raise ValueError(f"no query images found in {list(map(str, sources))}")
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


class EmbeddingCache:
    """Embeddings of images already seen, for one model key: ``<root>/<key>/embeddings.npz`` (+ ``meta.json``)."""

    def __init__(self, root: str | os.PathLike, key: str, meta: dict | None = None):
        self.dir = Path(root).expanduser() / key
        self.path = self.dir / "embeddings.npz"
        self.meta = meta or {}
        self._keys: list[str] = []
        self._emb: np.ndarray | None = None
        self._row: dict[str, int] = {}
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as z:
                self._keys = [str(k) for k in z["keys"]]
                self._emb = z["embeddings"]
            self._row = {k: i for i, k in enumerate(self._keys)}
            logger.info("embedding cache %s: %d images", self.dir, len(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """``(found_mask [N], rows [n_found, D])`` for the given image keys."""
        found = np.array([k in self._row for k in keys], dtype=bool)
        if not found.any() or self._emb is None:
            return found, None
        rows = np.array([self._row[k] for k, f in zip(keys, found, strict=True) if f], dtype=np.int64)
        return found, self._emb[rows]

    def add(self, keys: Sequence[str], embeddings: np.ndarray) -> None:
        new = [(k, i) for i, k in enumerate(keys) if k not in self._row]
        if not new:
            return
        emb = np.asarray(embeddings, dtype=np.float32)[[i for _, i in new]]
        self._emb = emb if self._emb is None else np.concatenate([self._emb, emb])
        for k, _ in new:
            self._row[k] = len(self._keys)
            self._keys.append(k)
        self.save()

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".embeddings.{os.getpid()}.tmp.npz"
        np.savez(tmp, keys=np.array(self._keys), embeddings=self._emb)
        os.replace(tmp, self.path)
        if self.meta:
            (self.dir / "meta.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True, default=str))


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

    @property
    def predicted_identity(self) -> str | None:
        if self.new_individual:
            return NEW_INDIVIDUAL
        return self.candidates[0]["identity"] if self.candidates else None

    @property
    def correct(self) -> bool | None:
        """Top-1 (or the new-individual verdict) against the query's known identity; None when unknown."""
        if self.query_identity is None:
            return None
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
        return threshold
    if threshold is None:
        if model_dir is not None and (model_dir / THRESHOLD_FILE).is_file():
            logger.info("using the open-set threshold saved with the model: %s", model_dir / THRESHOLD_FILE)
            return OpenSetThreshold.load(model_dir / THRESHOLD_FILE)
        return None
    if isinstance(threshold, int | float):
        return OpenSetThreshold(global_threshold=float(threshold))
    text = str(threshold)
    try:
        return OpenSetThreshold(global_threshold=float(text))
    except ValueError:
        pass
    if Path(text).is_file():
        return OpenSetThreshold.load(text)
    raise ValueError(f"threshold must be a number or an open-set threshold JSON file, got {threshold!r}")


class Identifier:
    """Embeds gallery and query images (through the on-disk cache) and ranks gallery individuals per query.

    ``model`` is anything with ``encode(images, batch_size=..., processor=..., boxes=..., thetas=...)`` returning
    unit-norm rows, e.g. ``AnimalReIDModel``; ``model_key`` names its weights + preprocessing for the cache.
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
    ):
        self.model = model
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
        """Unit-norm embeddings of ``items``; cached ones are read, the others run through the model (and cached)."""
        keys = [it.cache_key() for it in items] if self.cache is not None else None
        if self.cache is not None:
            found, rows = self.cache.lookup(keys)
        else:
            found, rows = np.zeros(len(items), dtype=bool), None
        todo = np.flatnonzero(~found)
        new = None
        if todo.size:
            logger.info("embedding %d images (%d from the cache)", todo.size, int(found.sum()))
            kwargs = {"batch_size": self.batch_size}
            if self.processor is not None:
                kwargs["processor"] = self.processor
            if any(items[i].bbox is not None for i in todo):
                kwargs["boxes"] = [items[i].bbox for i in todo]
            if any(items[i].theta for i in todo):
                kwargs["thetas"] = [items[i].theta for i in todo]
            if self.num_workers:
                kwargs["num_workers"] = self.num_workers
            if self.precision != "fp32":
                kwargs["precision"] = self.precision
            new = np.asarray(self.model.encode([items[i].image for i in todo], **kwargs), dtype=np.float32)
            if new.shape[0] != todo.size:
                raise RuntimeError(f"model.encode returned {new.shape[0]} rows for {todo.size} images")
            self.n_embedded += int(todo.size)
            if self.cache is not None:
                self.cache.add([keys[i] for i in todo], new)
        dim = (new if new is not None else rows).shape[1]
        out = np.empty((len(items), dim), dtype=np.float32)
        if rows is not None:
            out[found] = rows
        if new is not None:
            out[todo] = new
        return out

    def identify(
        self,
        gallery: Sequence[ImageItem],
        queries: Sequence[ImageItem],
        top_k: int = 5,
        threshold: float | str | OpenSetThreshold | None = None,
    ) -> list[QueryResult]:
        """Ranked candidate individuals (max score over each individual's images) and a verdict per query."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        missing = [g.name for g in gallery if g.identity is None]
        if missing:
            raise ValueError(f"{len(missing)} gallery images have no identity, e.g. {missing[:3]}")
        if not gallery:
            raise ValueError("the gallery is empty")
        thr = _resolve_threshold(threshold, self.model_dir)
        g_emb = self.embed(gallery)
        q_emb = self.embed(queries)
        index = GalleryIndex.build(g_emb, method=self.search_method, device=self.search_device)
        identities = np.array([g.identity for g in gallery], dtype=object)
        n_ids = len(set(identities.tolist()))
        want = min(top_k, n_ids)
        k_img = min(len(gallery), max(50, 10 * top_k))
        scores, idx = index.search(q_emb, k_img)
        results = []
        for qi, q in enumerate(queries):
            s, ii = scores[qi], idx[qi]
            while True:
                best: dict[str, tuple[float, int]] = {}
                for sc, gi in zip(s, ii, strict=True):
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
                )
            )
        return results


# ------------------------------------------------------------------------------------------------------------------
# outputs
def write_results(
    results: Sequence[QueryResult], out_dir: str | os.PathLike, match_sheets: bool = True
) -> Path:
    """Write ``results.csv``, ``results.json`` and (optionally) ``match_sheets/*.png`` into ``out_dir``."""
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
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
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
    (out / "results.json").write_text(json.dumps([r.to_dict() for r in results], indent=2))
    if match_sheets:
        from .plots import match_sheet

        sheets = out / "match_sheets"
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
            match_sheet(
                r.item.open(),
                [
                    {"image": it.open(), "identity": c["identity"], "score": c["score"]}
                    for c, it in zip(r.candidates, r.candidate_items, strict=True)
                ],
                sheets / f"{i:04d}_{stem}.png",
                query_label=r.query_identity,
                verdict=verdict,
            )
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument(
        "--threshold", default=None, help="new-individual threshold: a cosine, or a thresholds JSON"
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
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    return p


def run(argv: list[str] | None = None) -> list[QueryResult]:
    """The command line as a function: parse ``argv``, identify, write outputs, print a summary; returns results."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
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
    gallery = read_gallery(args.gallery, args.gallery_config, args.gallery_split)
    queries = read_queries(args.queries)
    results = ident.identify(gallery, queries, top_k=args.top_k, threshold=args.threshold)
    out = write_results(results, args.out, match_sheets=not args.no_match_sheets)
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
    known = [r.correct for r in results if r.correct is not None]
    acc = f", top-1 correct {sum(known)}/{len(known)}" if known else ""
    print(
        f"{len(results)} queries against {len(gallery)} gallery images "
        f"({len({g.identity for g in gallery})} individuals); embedded {ident.n_embedded} images "
        f"({'no cache' if ident.cache is None else f'cache {ident.cache.dir}'}){acc}; results in {out}"
    )
    return results


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``animal-reid-identify``); exit status 0 on success."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
