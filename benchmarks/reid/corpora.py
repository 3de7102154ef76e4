"""Corpora of the real-photo benchmarks: a corpus built by `data_scripts.build`, then compacted (every image
re-encoded as a small JPEG, optionally fewer identities, images or species) into the copy the runs train on."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.reid.config import REPO, BenchConfig

logger = logging.getLogger("reid_real")  # the whole benchmark logs under the script's name


def _stable_rank(seed: int, key: str) -> int:
    """A seeded, platform-independent sort key of ``key`` (the seeded choices of identities and images)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")


def build_source_corpus(
    out: Path, sources: list[str], policy: str, extra: list[str], cap: int | None
) -> Path:
    """`python -m data_scripts.build` into ``out`` unless it is already there."""
    if (out / "README.md").is_file():
        return out
    cmd = [sys.executable, "-m", "data_scripts.build", "--sources", *sources, "--split", policy]
    cmd += ["--out", str(out), "--no-progress", *extra]
    if cap is not None:
        cmd += ["--cap-per-identity", str(cap)]
    logger.info("building corpus: %s", " ".join(cmd))
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(
            f"corpus build failed (exit {res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}"
        )
    return out


def _shrink(data: bytes, bbox, size: int, quality: int) -> tuple[bytes, list[float] | None]:
    """Re-encode one image as RGB JPEG with its longest side at most ``size`` (EXIF orientation applied).

    An RGB JPEG without rotation that already fits is returned unchanged."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        orientation = im.getexif().get(0x0112, 1)
        if im.format == "JPEG" and im.mode == "RGB" and orientation == 1 and max(im.size) <= size:
            # already small enough: keep the bytes (no second JPEG generation, e.g. when subsetting a pack)
            return data, None if bbox is None else [float(v) for v in bbox]
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        f = min(1.0, size / max(w, h))
        if f < 1.0:
            im = im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
    box = None if bbox is None else [float(v) * f for v in bbox]
    return buf.getvalue(), box


def compact_corpus(
    src: Path,
    dst: Path,
    size: int,
    quality: int = 90,
    max_identities: dict[str, int] | None = None,
    species: list[str] | None = None,
    max_train_identities: int | None = None,
    max_images_per_identity: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Copy a built corpus with every image re-encoded at ``size`` px (longest side), same layout and schema.

    ``max_identities`` keeps a seeded choice of at most N identities per species (over all splits);
    ``species`` keeps only those species' shards; ``max_train_identities`` keeps at most N identities in the
    train split (validation and test untouched) — the "new species with few identities" of table 4;
    ``max_images_per_identity`` keeps a seeded choice of at most N images per identity in every split.
    Boxes are scaled with the image. Returns counts written (also saved as ``compact_report.json``).
    """
    if not (src / "README.md").is_file():
        raise FileNotFoundError(
            f"{src}: expected a built corpus (README.md and data/<config>/<split>-*.parquet)"
        )
    tmp = dst.with_name(dst.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "data").mkdir(parents=True)
    by_species = _species_shards(src, species)
    report: dict[str, Any] = {"source": str(src), "size": size, "quality": quality, "species": {}}
    for sp, sp_files in sorted(by_species.items()):
        report["species"][sp] = _compact_species(
            sp,
            sp_files,
            tmp / "data" / sp,
            size,
            quality,
            max_identities=max_identities,
            max_train_identities=max_train_identities,
            max_images_per_identity=max_images_per_identity,
            seed=seed,
        )
    _publish(src, tmp, dst, sorted(by_species), report)
    return report


def _species_shards(src: Path, species: list[str] | None) -> dict[str, list[Path]]:
    """The corpus's parquet shards per species (its config folders), limited to ``species`` when given."""
    files = sorted((src / "data").glob("*/*.parquet"))
    by_species: dict[str, list[Path]] = {}
    for f in files:
        by_species.setdefault(f.parent.name, []).append(f)
    if species:
        missing = sorted(set(species) - set(by_species))
        if missing:
            raise ValueError(f"species {missing} not in corpus {src}; it has {sorted(by_species)}")
        by_species = {k: v for k, v in by_species.items() if k in species}
    return by_species


def _compact_species(
    sp: str,
    sp_files: list[Path],
    out_dir: Path,
    size: int,
    quality: int,
    max_identities: dict[str, int] | None,
    max_train_identities: int | None,
    max_images_per_identity: int | None,
    seed: int,
) -> dict[str, dict[str, int]]:
    """Write one species' shards, filtered and re-encoded, into ``out_dir``; per split, the counts written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = {f: pq.read_table(f) for f in sp_files}
    keep_ids = None
    if max_identities and sp in max_identities:
        ids = sorted({i for t in tables.values() for i in t.column("identity").to_pylist()})
        ids.sort(key=lambda i: _stable_rank(seed, i))
        keep_ids = set(ids[: max_identities[sp]])
    counts = {}
    for f, table in tables.items():
        split = f.name.split("-")[0]
        keep = _rows_kept(table, split, keep_ids, max_train_identities, max_images_per_identity, seed)
        table = _reencoded(table.filter(pa.array(keep)), size, quality)
        out_dir.mkdir(exist_ok=True)
        pq.write_table(table.replace_schema_metadata(tables[f].schema.metadata), out_dir / f.name)
        counts[split] = {
            "images": table.num_rows,
            "identities": len(set(table.column("identity").to_pylist())),
        }
    return counts


def _rows_kept(
    table,
    split: str,
    keep_ids: set[str] | None,
    max_train_identities: int | None,
    max_images_per_identity: int | None,
    seed: int,
) -> list[bool]:
    """Which rows of a shard stay: identities kept, the few training identities, the images per identity."""
    ident = table.column("identity").to_pylist()
    keep = [keep_ids is None or i in keep_ids for i in ident]
    if split == "train" and max_train_identities is not None:
        train_ids = sorted({i for i, k in zip(ident, keep, strict=True) if k})
        train_ids.sort(key=lambda i: _stable_rank(seed, "few:" + i))
        chosen = set(train_ids[:max_train_identities])
        keep = [k and i in chosen for i, k in zip(ident, keep, strict=True)]
    if max_images_per_identity is not None:
        seen: Counter = Counter()
        ids_ = table.column("image_id").to_pylist()
        for i in sorted(range(len(ident)), key=lambda r: _stable_rank(seed, "img:" + ids_[r])):
            if keep[i]:
                seen[ident[i]] += 1
                keep[i] = seen[ident[i]] <= max_images_per_identity
    return keep


def _reencoded(table, size: int, quality: int):
    """The shard with its images re-encoded at ``size`` px and its boxes (if any) scaled with them."""
    import pyarrow as pa

    images = table.column("image").to_pylist()
    boxes = table.column("bbox").to_pylist() if "bbox" in table.column_names else [None] * len(images)
    new_images, new_boxes = [], []
    for img, box in zip(images, boxes, strict=True):
        data, nb = _shrink(img["bytes"], box, size, quality)
        new_images.append({"bytes": data, "path": img.get("path")})
        new_boxes.append(nb)
    table = table.set_column(
        table.column_names.index("image"),
        "image",
        pa.array(new_images, type=table.schema.field("image").type),
    )
    if "bbox" in table.column_names:
        table = table.set_column(
            table.column_names.index("bbox"),
            "bbox",
            pa.array(new_boxes, type=table.schema.field("bbox").type),
        )
    return table


def _publish(src: Path, tmp: Path, dst: Path, species: list[str], report: dict[str, Any]) -> None:
    """Finish the compacted copy in ``tmp`` (card, build report, compact report) and move it to ``dst``."""
    _write_card(src, tmp, species)
    for extra in ("build_report.json",):
        if (src / extra).is_file():
            shutil.copy2(src / extra, tmp / extra)
    (tmp / "compact_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)


def _write_card(src: Path, dst: Path, species: list[str]) -> None:
    """The source's dataset card with its ``configs:`` reduced to the species kept (and ``all``)."""
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(src / "README.md")
    configs = card.data.to_dict().get("configs") or []
    kept = []
    for c in configs:
        if c["config_name"] != "all" and c["config_name"] not in species:
            continue
        files = [d for d in c["data_files"] if any((dst / "data").glob(d["path"].removeprefix("data/")))]
        if files:
            kept.append({**c, "data_files": files})
    card.data.configs = kept
    card.save(dst / "README.md")


def prepare_corpora(
    cfg: BenchConfig, work: Path, pack_dir: Path | None = None, only: set[str] | None = None
) -> dict[str, Path]:
    """Build (if missing) the open and closed corpora under ``work/corpora``, compacted into ``pack_dir``
    (default: the same folder); ``only`` limits it to some of them (table 1 needs only "closed")."""
    base = work / "corpora"
    out = {}
    for name, sources, policy, cap, max_ids, max_img in (
        (
            "open",
            cfg.open_sources,
            "open",
            cfg.cap_per_identity,
            cfg.max_identities,
            cfg.pack_max_images_per_identity,
        ),
        ("closed", cfg.closed_sources, "closed", None, None, None),
    ):
        dst = (pack_dir or base) / name
        if only is not None and name not in only:
            continue
        if not (dst / "README.md").is_file():
            src = build_source_corpus(base / f"{name}_src", sources, policy, cfg.build_args, cap)
            t0 = time.time()
            compact_corpus(
                src,
                dst,
                cfg.pack_size,
                cfg.pack_quality,
                max_identities=max_ids,
                max_images_per_identity=max_img,
                seed=cfg.seed,
            )
            logger.info("compacted %s -> %s in %.0f s", src, dst, time.time() - t0)
        out[name] = dst
    return out
