"""Local features (keypoints + descriptors) of an image crop, and their on-disk cache.

Memory budget: an image keeps at most ``max_keypoints`` keypoints, each ``2 x float32`` coordinates plus a
``uint8`` descriptor (128 bytes for SIFT, 32 for ORB), so a cached image costs at most
``max_keypoints * (8 + descriptor bytes)``: 69.6 kB for SIFT at the default 512, i.e. <= 70 MB per 1,000 images
on disk and in memory (:meth:`LocalFeatureConfig.bytes_per_image`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import SAVE_EVERY, CorruptCacheFile, PartFileCache, cv2_threads, progress_bar, read_npz
from ..manifest import describe_os_error

logger = logging.getLogger(__name__)

FEATURE_METHODS = ("sift", "orb")
#: why an image has no usable keypoints (its global score is kept)
STATUS = ("ok", "too_small", "featureless", "unreadable")
DESCRIPTOR_BYTES = {"sift": 128, "orb": 32}


GEOMETRIES = ("fundamental", "homography")


@dataclass(frozen=True)
class LocalFeatureConfig:
    """How keypoints are computed. Every field is part of the cache key.

    ``max_side``: the crop is resized so its longer side is this many pixels (shrunk always; enlarged, at most
    ``max_upscale`` times, bicubic, when ``max_upscale`` > 1: small photos give more keypoints enlarged).
    ``min_side``: a crop whose shorter side is below this is ``too_small`` (no keypoints, global score kept).
    ``min_keypoints``: fewer keypoints than this make an image ``featureless``.
    ``ratio``: Lowe's ratio test; ``ransac_px``: MAGSAC's maximum residual (pixels at ``max_side``);
    ``min_matches``: ratio-test matches needed before a geometry is fitted (at least 8);
    ``geometry``: the model the matches must agree with, ``"fundamental"`` (any rigid 3-D scene; a homography when
    F is degenerate) or ``"homography"`` (a planar patch: stricter, so chance matches keep only its minimal sample
    of 4 rather than F's 7-8). Matching-only fields are not part of the cache key.
    """

    method: str = "sift"
    max_side: int = 384
    max_upscale: float = 2.0
    max_keypoints: int = 512
    min_side: int = 32
    min_keypoints: int = 8
    ratio: float = 0.8
    ransac_px: float = 2.0
    min_matches: int = 8
    geometry: str = "fundamental"

    def __post_init__(self):
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if self.method not in FEATURE_METHODS:
            raise ValueError(f"method must be one of {FEATURE_METHODS}, got {self.method!r}")
        for name in ("max_side", "max_keypoints", "min_side", "min_keypoints"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.max_upscale >= 1.0:
            raise ValueError(f"max_upscale must be >= 1, got {self.max_upscale!r}")
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must be <= max_side ({self.max_side})")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio!r}")
        if not self.ransac_px > 0:
            raise ValueError(f"ransac_px must be > 0, got {self.ransac_px!r}")
        if self.min_matches < 8:
            raise ValueError(
                f"min_matches must be >= 8 (a fundamental matrix needs 8 points), got {self.min_matches}"
            )

    @property
    def descriptor_bytes(self) -> int:
        return DESCRIPTOR_BYTES[self.method]

    def bytes_per_image(self) -> int:
        """Upper bound of one image's cached features (coordinates + descriptors)."""
        return self.max_keypoints * (8 + self.descriptor_bytes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LocalFeatureConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def cache_key(self) -> tuple[str, dict]:
        """``(key, meta)``: the extraction settings (matching-only fields left out) and OpenCV's version."""
        import cv2

        extraction = {
            k: v
            for k, v in self.to_dict().items()
            if k not in ("ratio", "ransac_px", "min_matches", "geometry")
        }
        meta = {"local_features": extraction, "opencv": cv2.__version__}
        key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20]
        return f"local-{self.method}-{key}", meta


@dataclass
class LocalFeatures:
    """Keypoints of one crop: ``xy`` [n, 2] float32 pixels of the resized crop, ``desc`` [n, D] uint8."""

    xy: np.ndarray
    desc: np.ndarray
    size: tuple[int, int]  # (width, height) of the crop the keypoints live in
    status: str = "ok"

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    @property
    def usable(self) -> bool:
        return self.status == "ok"

    @classmethod
    def empty(cls, status: str, size=(0, 0), dim: int = 128) -> LocalFeatures:
        return cls(np.zeros((0, 2), np.float32), np.zeros((0, dim), np.uint8), tuple(size), status)


_PROCESSOR = None


def _processor():
    """The model's image processor, for its validated decode and its box + theta crop (min_side 1: we check)."""
    global _PROCESSOR
    if _PROCESSOR is None:
        from modeling import AnimalReIDImageProcessor

        _PROCESSOR = AnimalReIDImageProcessor(min_side=1)
    return _PROCESSOR


def crop_item(item: Any):
    """The RGB crop of an item (its box rotated by theta, if any), at the image's own resolution.

    ``item`` is an :class:`animal_reid.identify.ImageItem` (or anything with ``image``, ``bbox``, ``theta``) or a
    PIL image. The box is in the displayed photo's pixels (EXIF orientation applied), as for the model. Raises
    ``ValueError`` (the processor's ``InvalidImageError``, naming the image) or ``OSError`` for unusable input.
    """
    from PIL import Image

    if isinstance(item, Image.Image):
        return item.convert("RGB")
    proc = _processor()
    img = proc.load_image(item.image)
    if item.bbox is not None:
        name = item.image if isinstance(item.image, str) else getattr(item, "name", None)
        img = proc.crop(img, item.bbox, item.theta, name=name)
    return img


def resize_crop(img, max_side: int, max_upscale: float = 1.0):
    """``img`` resized so its longer side is ``max_side`` (enlarged at most ``max_upscale`` times)."""
    from PIL import Image

    w, h = img.size
    scale = min(max_upscale, max_side / max(w, h))
    if scale == 1.0:
        return img
    resample = Image.Resampling.BILINEAR if scale < 1.0 else Image.Resampling.BICUBIC
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)


def load_crop(item: Any, max_side: int, grey: bool = True, max_upscale: float = 1.0):
    """:func:`crop_item` resized by :func:`resize_crop`, grey-level (``L``) or RGB."""
    img = resize_crop(crop_item(item), max_side, max_upscale)
    return img.convert("L") if grey else img


def extract(item: Any, config: LocalFeatureConfig) -> LocalFeatures:
    """Keypoints of one item; never raises for bad images (status ``too_small``/``featureless``/``unreadable``)."""
    import cv2

    try:
        crop = crop_item(item)
    except (
        ValueError,
        OSError,
    ) as err:  # InvalidImageError is a ValueError; PIL decoding errors are OSErrors
        logger.debug("no local features for %s: %s", getattr(item, "name", item), err)
        return LocalFeatures.empty("unreadable", dim=config.descriptor_bytes)
    if min(crop.size) < config.min_side:  # in the image's own pixels
        return LocalFeatures.empty("too_small", crop.size, config.descriptor_bytes)
    crop = resize_crop(crop, config.max_side, config.max_upscale).convert("L")
    size = crop.size
    arr = np.asarray(crop, dtype=np.uint8)
    if config.method == "sift":
        det = cv2.SIFT_create(nfeatures=config.max_keypoints)
    else:
        det = cv2.ORB_create(nfeatures=config.max_keypoints)
    kps, desc = det.detectAndCompute(arr, None)
    if desc is None or len(kps) < config.min_keypoints:
        return LocalFeatures.empty("featureless", size, config.descriptor_bytes)
    kps, desc = kps[: config.max_keypoints], desc[: config.max_keypoints]
    xy = np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2)
    if config.method == "sift":  # OpenCV's SIFT descriptors are integers in [0, 255] stored as float
        desc = np.clip(np.rint(desc), 0, 255)
    return LocalFeatures(xy, np.ascontiguousarray(desc, dtype=np.uint8), size, "ok")


# ------------------------------------------------------------------------------------------------------------------
# cache
_ARRAYS = ("keys", "status", "offsets", "xy", "desc", "size")


def _pack(keys: Sequence[str], feats: Sequence[LocalFeatures]) -> dict[str, np.ndarray]:
    counts = [len(f) for f in feats]
    dim = feats[0].desc.shape[1] if feats else 0
    return {
        "keys": np.array(list(keys), dtype=str),
        "status": np.array([STATUS.index(f.status) for f in feats], dtype=np.int8),
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "xy": np.concatenate([f.xy for f in feats]) if feats else np.zeros((0, 2), np.float32),
        "desc": np.concatenate([f.desc for f in feats]) if feats else np.zeros((0, dim), np.uint8),
        "size": np.array([f.size for f in feats], dtype=np.int32).reshape(-1, 2),
    }


def _read(path: Path) -> dict[str, LocalFeatures]:
    """The features of one cache file by image key, checked; raises :class:`CorruptCacheFile` (or
    FileNotFoundError)."""
    a = read_npz(path, _ARRAYS, str(list(_ARRAYS)))
    n = a["keys"].shape[0]
    off = a["offsets"]
    ok = (
        a["status"].shape == (n,)
        and off.shape == (n + 1,)
        and a["size"].shape == (n, 2)
        and a["xy"].ndim == 2
        and a["xy"].shape[1] == 2
        and a["desc"].dtype == np.uint8
        and a["desc"].shape[0] == a["xy"].shape[0]
        and (n == 0 or (off[0] == 0 and off[-1] == a["xy"].shape[0] and (np.diff(off) >= 0).all()))
        and ((a["status"] >= 0) & (a["status"] < len(STATUS))).all()
        and np.isfinite(a["xy"]).all()
    )
    if not ok:
        raise CorruptCacheFile("arrays of inconsistent shapes or types")
    out = {}
    for i, k in enumerate(a["keys"]):
        s, e = int(off[i]), int(off[i + 1])
        out[str(k)] = LocalFeatures(
            a["xy"][s:e], a["desc"][s:e], (int(a["size"][i, 0]), int(a["size"][i, 1])), STATUS[a["status"][i]]
        )
    return out


class LocalFeatureCache(PartFileCache):
    """Local features of images already seen, in ``<root>/<key>/`` (``features.npz`` + ``part-*.npz``).

    The same discipline as :class:`animal_reid.identify.EmbeddingCache` (both are
    :class:`animal_reid.io.PartFileCache`): the folder is keyed by the extraction settings, each image by
    :meth:`ImageItem.cache_key`; every file is written atomically, parts are saved as they are computed and folded
    into ``features.npz`` by :meth:`save`; a corrupt file is reported, removed and its images computed again; a
    cache that cannot be written is reported once and the run goes on without saving to it. Images without usable
    keypoints are cached too (with their status).
    """

    MAIN = "features.npz"
    CORRUPT_WARNING = "local-feature cache file %s is corrupt (%s): removing it"
    UNUSABLE_WARNING = (
        "cannot %s the local-feature cache %s; the run goes on without it (results are not affected)"
    )
    describe_error = staticmethod(describe_os_error)
    log = logger

    def __init__(self, root: str | os.PathLike, config: LocalFeatureConfig):
        key, meta = config.cache_key()
        super().__init__(root, key, meta)
        self.config = config
        self._feats: dict[str, LocalFeatures] = {}
        if self.dir.is_dir():
            self._load()

    def read_file(self, path: Path) -> dict[str, LocalFeatures]:
        """The features of one cache file by image key, checked."""
        return _read(path)

    def _remember(self, content: dict[str, LocalFeatures]) -> None:
        for k, f in content.items():
            self._feats.setdefault(k, f)

    def __len__(self) -> int:
        return len(self._feats)

    def __contains__(self, key: str) -> bool:
        return key in self._feats

    def get(self, key: str) -> LocalFeatures | None:
        return self._feats.get(key)

    def add(self, keys: Sequence[str], feats: Sequence[LocalFeatures]) -> None:
        """Remember new features and save them at once (a part file); keys already cached are ignored."""
        new = [(k, f) for k, f in zip(keys, feats, strict=True) if k not in self._feats]
        if not new:
            return
        self._write_part(_pack([k for k, _ in new], [f for _, f in new]))
        self._feats.update(new)

    def save(self) -> None:
        """Fold the parts into ``features.npz`` (atomically) and remove them."""
        if not self._parts:
            return
        self._write_main(_pack(list(self._feats), list(self._feats.values())))

    def nbytes(self) -> int:
        """Bytes of the cache files on disk."""
        return sum(p.stat().st_size for p in self.dir.glob("*.npz")) if self.dir.is_dir() else 0


class LocalFeatureStore:
    """Local features of items, computed once (``workers`` threads) and cached (``cache_dir``) when given.

    ``n_computed`` counts extractions over the object's life (cache misses); ``stats()`` counts the statuses.
    """

    #: items computed between two cache saves
    SAVE_EVERY = SAVE_EVERY

    def __init__(self, config: LocalFeatureConfig | None = None, cache_dir: str | os.PathLike | None = None):
        self.config = config or LocalFeatureConfig()
        self.cache = LocalFeatureCache(cache_dir, self.config) if cache_dir is not None else None
        self._memory: dict[str, LocalFeatures] = {}
        self.n_computed = 0

    def features(
        self,
        items: Sequence[Any],
        workers: int = 1,
        progress: bool | None = None,
        desc: str = "local features",
    ) -> list[LocalFeatures]:
        """Features of each item (from the cache when there), in order; identical whatever ``workers``."""
        keys = [item_key(it) for it in items]
        out: dict[int, LocalFeatures] = {}
        todo = []
        for i, k in enumerate(keys):
            f = self._memory.get(k) if k is not None else None
            if f is None and k is not None and self.cache is not None:
                f = self.cache.get(k)
            if f is None:
                todo.append(i)
            else:
                out[i] = f
        if todo:
            logger.info("computing local features of %d images (%d cached)", len(todo), len(out))
            bar = progress_bar(len(todo), desc, progress)
            with cv2_threads(1), ThreadPoolExecutor(max(1, workers)) as pool:
                for start in range(0, len(todo), self.SAVE_EVERY):
                    chunk = todo[start : start + self.SAVE_EVERY]
                    feats = list(pool.map(lambda i: extract(items[i], self.config), chunk))
                    bar.update(len(chunk))
                    self.n_computed += len(chunk)
                    for i, f in zip(chunk, feats, strict=True):
                        out[i] = f
                    cached = [(keys[i], f) for i, f in zip(chunk, feats, strict=True) if keys[i] is not None]
                    if self.cache is not None and cached:
                        self.cache.add([k for k, _ in cached], [f for _, f in cached])
                    for k, f in cached:
                        self._memory[k] = f
            bar.close()
            if self.cache is not None:
                self.cache.save()
        return [out[i] for i in range(len(items))]


def item_key(item: Any) -> str | None:
    """The embedding cache's image key (path/size/mtime or bytes hash, box, theta); None for in-memory images."""
    key = getattr(item, "cache_key", None)
    if key is None:
        return None
    try:
        return key()
    except OSError:  # vanished: extract() reports it unreadable
        return None


def map_ordered(fn: Callable, items: Sequence[Any], workers: int) -> list[Any]:
    """``[fn(x) for x in items]`` on ``workers`` threads, in order."""
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))
