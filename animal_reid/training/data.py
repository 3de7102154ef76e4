"""Data adapter: a built corpus (docs/CONTRACTS.md, "Corpus") to PyTorch datasets for training and evaluation.

Images stay encoded in the Arrow table (``datasets.Image(decode=False)``) and are decoded once per
access, inside DataLoader workers, by the decode-heavy half of the model's image processor
(``processor.preprocess_uint8``: EXIF, box crop rotated by theta, resize). Training augmentations
(`ReIDAugment`) run after it on the uint8 image, so batches cross the worker boundary as uint8
``[B, 3, H, W]`` (a quarter of the bytes of float32). The consumer finishes them on the model's device
with ``processor.normalize_uint8``, the other half of ``processor.preprocess_one``: un-augmented images
reach the model with exactly the values of the single preprocessing path used at inference.

`dataloader_kwargs` keeps the workers alive across epochs (``persistent_workers``); the batch sampler runs
in the main process, so `SeededBatches.set_epoch` still reaches every epoch's batches and seeds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shlex
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .augment import ReIDAugment
from .config import DataArguments

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
METADATA_COLUMNS = ("image_id", "identity", "species", "encounter", "viewpoint")


def ensure_corpus(data_args: DataArguments, is_main_process: bool = True) -> Path:
    """Return the corpus directory, building it first when missing and ``build_corpus`` says how.

    Only the main process builds; callers on other processes should wait (``accelerator.wait_for_everyone``)
    and call again with ``is_main_process=False``.
    """
    path = Path(data_args.corpus)
    if path.is_dir() and (path / "README.md").is_file():
        return path
    if not is_main_process:
        raise FileNotFoundError(f"corpus {path} missing after the main process should have built it")
    if not data_args.build_corpus:
        raise FileNotFoundError(
            f"corpus directory {path} not found (expected README.md and data/<config>/<split>-*.parquet); "
            "build it with `python -m data_scripts.build --out DIR ...` or set build_corpus"
        )
    cmd = [
        sys.executable,
        "-m",
        "data_scripts.build",
        "--out",
        str(path),
        *shlex.split(data_args.build_corpus),
    ]
    logger.info("corpus %s missing: building it with %s", path, " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"building the corpus failed (exit {result.returncode}): {' '.join(cmd)}\n{result.stderr[-4000:]}"
        )
    return path


def cap_per_identity(identities: Sequence[str], cap: int, seed: int) -> list[int]:
    """Row indices keeping at most ``cap`` rows per identity (a seeded choice, original order kept)."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, ident in enumerate(identities):
        rows[ident].append(i)
    keep: list[int] = []
    for ident in sorted(rows):
        r = rows[ident]
        if len(r) > cap:
            digest = hashlib.sha256(f"{seed}:{ident}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            r = sorted(rng.choice(r, size=cap, replace=False).tolist())
        keep.extend(r)
    return sorted(keep)


def cap_per_species(identities: Sequence[str], species: Sequence[str], cap: int, seed: int) -> list[int]:
    """Row indices keeping at most ``cap`` rows per species: whole identities, in a seeded order per species,
    while they fit (an identity larger than what is left is passed over); original order kept."""
    rows: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (ident, sp) in enumerate(zip(identities, species, strict=True)):
        rows[sp][ident].append(i)
    keep: list[int] = []
    for sp in sorted(rows):
        digest = hashlib.sha256(f"{seed}:species:{sp}".encode()).digest()
        order = sorted(rows[sp])
        np.random.default_rng(int.from_bytes(digest[:8], "little")).shuffle(order)
        left = cap
        for ident in order:
            if len(rows[sp][ident]) <= left:
                keep.extend(rows[sp][ident])
                left -= len(rows[sp][ident])
    return sorted(keep)


@dataclass
class Corpus:
    """The three splits of a corpus, filtered and capped as the config says, with the train label map."""

    splits: dict[str, Any]  # split -> datasets.Dataset (image not decoded)
    root: Path
    config_name: str
    label_of: dict[str, int]  # train identity -> class index
    train_counts: list[int]  # images per class index in the train split
    refit: bool = False  # the train split holds the validation images too (train_on_validation)

    @property
    def num_classes(self) -> int:
        return len(self.label_of)

    def species(self, split: str) -> list[str]:
        return sorted(set(self.splits[split]["species"]))

    def card_info(self) -> dict[str, Any]:
        """What the corpus says about itself (dataset card YAML and build_report.json), for the model card."""
        info: dict[str, Any] = {"corpus": self.root.name, "config": self.config_name}
        report = self.root / "build_report.json"
        if report.is_file():
            try:
                info["build_report"] = json.loads(report.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                logger.warning("cannot read %s: %s", report, err)
        readme = self.root / "README.md"
        if readme.is_file():
            try:
                from huggingface_hub import DatasetCard

                card = DatasetCard.load(readme)
                info["dataset_card"] = card.data.to_dict()
                info["dataset_card_text"] = card.text
            except Exception as err:  # a malformed card must not stop the export
                logger.warning("cannot parse the dataset card %s: %s", readme, err)
        return info


def corpus_fingerprint(root: Path) -> str:
    """A hash of the corpus files (relative path, size, modification time) and of its card: the files its
    manifest lists when it has one (not a user's files beside it, nor a build in progress), else every one."""
    from animal_reid.manifest import Manifest

    manifest = Manifest.read(root)
    paths = sorted(root / rel for rel in manifest.files) if manifest is not None else sorted(root.rglob("*"))
    h = hashlib.sha256()
    for path in paths:
        if path.is_file() and (path.suffix == ".parquet" or path.name == "README.md"):
            st = path.stat()
            h.update(f"{path.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_corpus(data_args: DataArguments, seed: int) -> Corpus:
    """Load train/validation/test of ``data_args.corpus`` with images left encoded.

    ``datasets`` names its Arrow cache of a local folder after the folder's base name and file patterns, not
    their contents, so a corpus rebuilt in place (or another folder of the same name) would be read back
    stale. The cache used here lives in a directory named after `corpus_fingerprint`, so it cannot be.
    """
    import datasets

    root = Path(data_args.corpus)
    cache_dir = Path(datasets.config.HF_DATASETS_CACHE) / "animal_reid_corpora" / corpus_fingerprint(root)
    dd = datasets.load_dataset(str(root), data_args.corpus_config, cache_dir=str(cache_dir))
    missing = [s for s in SPLITS if s not in dd]
    if missing:
        raise ValueError(
            f"corpus {root} config {data_args.corpus_config!r} lacks split(s) {missing}; has {list(dd)}"
        )
    splits: dict[str, Any] = {}
    for split in SPLITS:
        ds = dd[split].cast_column("image", datasets.Image(decode=False))
        if data_args.species:
            wanted = set(data_args.species)
            present = set(ds["species"])
            unknown = wanted - set().union(*(set(dd[s]["species"]) for s in SPLITS))
            if unknown:
                raise ValueError(f"species {sorted(unknown)} not in corpus {root}; it has {sorted(present)}")
            ds = ds.select([i for i, s in enumerate(ds["species"]) if s in wanted])
        cap = (
            data_args.max_images_per_identity if split == "train" else data_args.max_eval_images_per_identity
        )
        if cap is not None:
            ds = ds.select(cap_per_identity(list(ds["identity"]), cap, seed))
        if split == "train" and data_args.max_train_images_per_species is not None:
            cap_sp = data_args.max_train_images_per_species
            ds = ds.select(cap_per_species(list(ds["identity"]), list(ds["species"]), cap_sp, seed))
        if len(ds) == 0:
            raise ValueError(
                f"split {split!r} of {root} is empty after filtering (species={data_args.species})"
            )
        splits[split] = ds
    if data_args.train_on_validation:
        # refit: the validation images join training (validation keeps its rows, for the record only)
        splits["train"] = datasets.concatenate_datasets([splits["train"], splits["validation"]])
    train_ids = list(splits["train"]["identity"])
    label_of = {ident: i for i, ident in enumerate(sorted(set(train_ids)))}
    counts = Counter(train_ids)
    train_counts = [counts[ident] for ident in sorted(label_of, key=label_of.get)]
    logger.info(
        "corpus %s/%s: %s images; %d training identities%s",
        root,
        data_args.corpus_config,
        {s: len(d) for s, d in splits.items()},
        len(label_of),
        " (refit: train includes validation)" if data_args.train_on_validation else "",
    )
    return Corpus(
        splits=splits,
        root=root,
        config_name=data_args.corpus_config,
        label_of=label_of,
        train_counts=train_counts,
        refit=data_args.train_on_validation,
    )


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """Seed of one sample's augmentation: a function of the run seed, the epoch and its place in the epoch."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class SeededBatches(Sampler[list[tuple[int, int]]]):
    """Wraps a batch sampler so every index travels with the seed of its augmentation.

    Positions count global batches (``rank + j * num_replicas``), so the seeds are the same whichever
    process or worker handles a sample.
    """

    def __init__(self, batch_sampler, seed: int) -> None:
        self.batch_sampler = batch_sampler
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        bs = self.batch_sampler
        rank, replicas = getattr(bs, "rank", 0), getattr(bs, "num_replicas", 1)
        for j, batch in enumerate(bs):
            g = rank + j * replicas
            yield [(idx, sample_seed(self.seed, bs.epoch, g * 100_000 + p)) for p, idx in enumerate(batch)]


class ReIDImageDataset(Dataset):
    """One corpus split as resized, not yet normalised, uint8 image tensors.

    ``dataset[i]`` or ``dataset[(i, seed)]`` gives ``{"pixel_values", "labels", "index"}``. ``pixel_values``
    is the uint8 ``[3, H, W]`` tensor of ``processor.preprocess_uint8`` (crop to the box rotated by theta
    when ``use_boxes``, resize); with a seed and an ``augment``, it is then augmented with draws from
    ``torch.Generator().manual_seed(seed)`` (still uint8). The model input is
    ``processor.normalize_uint8(batch)``, on the model's device: for an un-augmented image exactly
    ``processor.preprocess_one(...)``. ``labels`` is the train class index (-1 for identities unknown to the
    training head, as in validation and test); ``index`` is the row of the split.
    """

    def __init__(
        self,
        hf_split,
        processor,
        label_of: dict[str, int] | None = None,
        augment: ReIDAugment | None = None,
        use_boxes: bool = True,
    ) -> None:
        self.ds = hf_split
        self.processor = processor
        self.label_of = label_of or {}
        self.augment = augment
        self.use_boxes = use_boxes
        columns = set(hf_split.column_names)
        needed = {"image", "identity"}
        if not needed <= columns:
            raise ValueError(
                f"corpus split lacks column(s) {sorted(needed - columns)}; has {sorted(columns)}"
            )
        self._has_box = "bbox" in columns
        self._has_theta = "theta" in columns
        self.cache: torch.Tensor | None = None  # uint8 [N, 3, H, W] of preprocess_uint8, see cache_images
        # the label column alone, so a cached sample reads no row (a row read copies its image bytes)
        self._identities: list[str] = list(hf_split["identity"])

    def decoded(self, index: int) -> torch.Tensor:
        """Row ``index`` decoded, cropped and resized (uint8 ``[3, H, W]``), from the cache when there is one."""
        if self.cache is not None:
            return self.cache[index]
        row = self.ds[int(index)]
        box = row.get("bbox") if (self.use_boxes and self._has_box) else None
        theta = float(row.get("theta") or 0.0) if (self.use_boxes and self._has_theta) else 0.0
        try:
            return self.processor.preprocess_uint8(row["image"], box, theta)
        except ValueError as err:
            raise ValueError(f"image {row.get('image_id', index)!r} of the corpus: {err}") from err

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        pixel_values = self.decoded(int(index))
        if self.augment is not None and seed is not None:
            pixel_values = self.augment(pixel_values, torch.Generator().manual_seed(int(seed)))
        return {
            "pixel_values": pixel_values,
            "labels": self.label_of.get(self._identities[int(index)], -1),
            "index": int(index),
        }


class _Decode(Dataset):
    def __init__(self, ds: ReIDImageDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.ds.decoded(i)


def cache_images(datasets: Sequence[ReIDImageDataset], num_workers: int, max_bytes: float) -> dict[str, Any]:
    """Decode every image of ``datasets`` once into shared-memory uint8 tensors (``dataset.cache``).

    Epochs and evaluations then index the cache instead of decoding, cropping and resizing again; training
    augmentation still runs per sample on the cached image. DataLoader workers share the tensors (shared
    memory) instead of copying them. Skipped, with the reason returned, when the cache would exceed
    ``max_bytes`` in total. Returns ``{"cached": bool, "bytes", "images", "seconds", "reason"}``.
    """
    from torch.utils.data import DataLoader

    todo = [d for d in datasets if d.cache is None]
    shapes = []
    for d in todo:
        h, w = d.processor.size["height"], d.processor.size["width"]
        shapes.append((len(d), 3, h, w))
    total = float(sum(math.prod(sh) for sh in shapes))
    report: dict[str, Any] = {"cached": False, "bytes": total, "images": sum(len(d) for d in todo)}
    if total > max_bytes:
        report["reason"] = f"needs {total / 2**30:.2f} GiB, more than the {max_bytes / 2**30:.2f} GiB allowed"
        return report
    t0 = time.perf_counter()
    for d, shape in zip(todo, shapes, strict=True):
        cache = torch.empty(shape, dtype=torch.uint8).share_memory_()
        loader = DataLoader(_Decode(d), batch_size=64, num_workers=num_workers, shuffle=False)
        pos = 0
        for batch in loader:
            cache[pos : pos + len(batch)] = batch
            pos += len(batch)
        d.cache = cache
    report.update(cached=True, seconds=time.perf_counter() - t0)
    return report


def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """``pixel_values`` uint8 ``[B, 3, H, W]``, ``labels`` and ``index`` long ``[B]``."""
    return {
        "pixel_values": torch.stack([b["pixel_values"] for b in batch]),
        "labels": torch.tensor([b["labels"] for b in batch], dtype=torch.long),
        "index": torch.tensor([b["index"] for b in batch], dtype=torch.long),
    }


def split_metadata(hf_split) -> dict[str, list]:
    """The label columns of a split (identity, species, encounter, ...) as lists, without decoding images."""
    cols = [c for c in METADATA_COLUMNS if c in hf_split.column_names]
    return {c: list(hf_split[c]) for c in cols}


def dataloader_kwargs(
    num_workers: int,
    *,
    seed: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = True,
    prefetch_factor: int | None = None,
) -> dict[str, Any]:
    """DataLoader options for a `ReIDImageDataset`.

    * With workers, they are persistent by default: started once, not at every epoch or evaluation. That is
      safe for the seeded training loader because its batch sampler (`SeededBatches`) runs in the main
      process, where ``set_epoch`` reaches it before each ``iter(loader)``; the workers only decode and
      augment the ``(index, seed)`` pairs they are sent, with per-sample generators.
    * ``generator``: the loader's own (seeded with ``seed``), so creating its iterator (once with persistent
      workers, at every ``iter`` without) never draws from the global torch RNG. A run resumed at an
      epoch then sees the same global RNG stream as an uninterrupted one.
    * ``pin_memory``: pass true only when batches go to a CUDA device.
    * ``prefetch_factor``: batches each worker keeps ready (torch's default, 2, when None); needs workers.
    """
    kwargs: dict[str, Any] = {
        "num_workers": num_workers,
        "collate_fn": collate,
        "pin_memory": pin_memory,
        "generator": torch.Generator().manual_seed(seed),
    }
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return kwargs


def release_workers(*loaders) -> None:
    """Stop the persistent workers of these DataLoaders (or Accelerate-prepared ones) now.

    Otherwise they live as long as the loader object, which reference cycles can keep until a garbage
    collection. A loader released here starts new workers if it is iterated again.
    """
    for loader in loaders:
        base = getattr(loader, "base_dataloader", loader)
        iterator = getattr(base, "_iterator", None)
        if iterator is None:
            continue
        base._iterator = None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
