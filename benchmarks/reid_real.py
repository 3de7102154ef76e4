#!/usr/bin/env python
"""The paper's claims measured on real photos (issue 6, tables 1-5), CPU or GPU, under one budget config.

    python benchmarks/reid_real.py --config configs/bench_cpu.yaml                 # 2 CPU cores, reduced
    python benchmarks/reid_real.py --config configs/bench_gpu.yaml --corpora .gpu/corpora   # packed subset
    python benchmarks/reid_real.py --config configs/bench_smoke.yaml --out /tmp/smoke     # synthetic, seconds

Tables (each a set of ``train_accelerate.main`` runs plus evaluations of their exported feature extractors):

1. MegaDescriptor's closed-set LionData / NyalaData splits: test images query train + validation (= the
   benchmark's training set), 1-NN cosine top-1, same-encounter matches *kept* as MegaDescriptor does
   (a stricter figure with them excluded is reported too). Ours (sub-center ArcFace k=3, dynamic margins) vs
   MegaDescriptor's loss (plain ArcFace, k=1, m=0.5 rad, s=64) with the same backbone, data and budget, vs
   ImageNet features alone, vs the published MegaDescriptor table.
2. Multispecies vs species-specific on the identity-disjoint ("open") split: one model on all species against
   one model per species; same epochs (each species-specific model gets ``batches_per_epoch`` scaled by its
   share of the training images, so the total number of steps equals the multispecies model's); per-species
   top-1 and mAP with the paper's leave-one-out protocol on test identities.
3. Zero-shot: a model trained without species X, evaluated on X's test identities; against ImageNet features,
   the species-specific and the multispecies model of table 2.
4. Fine-tuning on a new species with few training identities: from the table-3 model that never saw it vs
   from ImageNet weights, same recipe and budget.
5. Open set: the multispecies model on test identities (never trained on): per species, a fraction of the
   identities is unknown (all their images are queries) and each known identity gives one query; the
   new-individual threshold is calibrated on the validation identities the same way, BAKS / BAUS / AUROC on test.

Every run directory and result lands under ``--out``; ``results.json`` and ``results.md`` are rewritten after
each table, so a run stopped by its time budget keeps what it finished. Runs whose ``results.json`` exists are
reused (delete the run directory to redo one). See docs/benchmarks_real.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):  # the package, and peer_arcface beside this file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from animal_reid.fastmalloc import fast_malloc_env  # noqa: E402 - after the path set-up above

logger = logging.getLogger("reid_real")

# MegaDescriptor (Čermák et al., WACV 2024), top-1 % on the closed-set splits (../shared/data/README.md).
PUBLISHED_MEGADESCRIPTOR = {
    "MegaDescriptor-T-224": {"lion": 14.8, "nyala": 9.3},
    "MegaDescriptor-S-224": {"lion": 16.1, "nyala": 15.0},
    "MegaDescriptor-B-224": {"lion": 13.5, "nyala": 18.5},
    "MegaDescriptor-L-224": {"lion": 20.6, "nyala": 21.7},
    "MegaDescriptor-L-384": {"lion": 25.2, "nyala": 36.4},
}
TABLE_ORDER = (1, 2, 5, 3, 4)  # 5 reuses table 2's model; 4 reuses table 3's


@dataclass
class BenchConfig:
    """Budget and data of one benchmark run (YAML keys are these field names)."""

    # data: corpora are built from ../shared/data (or $REID_DATA_ROOT) then compacted (resized JPEGs)
    open_sources: list[str] = field(default_factory=lambda: ["real"])
    closed_sources: list[str] = field(default_factory=lambda: ["liondata", "nyaladata"])
    build_args: list[str] = field(default_factory=list)  # extra `data_scripts.build` arguments
    cap_per_identity: int | None = 12  # at build time (open corpus)
    max_identities: dict[str, int] = field(default_factory=dict)  # per species, seeded choice
    pack_size: int = 128  # longest side of the compacted JPEGs
    pack_max_images_per_identity: int | None = None  # open corpus, every split (keeps a GPU pack small)
    pack_quality: int = 90
    # model and training (shared by every run). train_config: the recipe YAML every run starts from; the fields
    # below override it where set (None: the recipe's value).
    train_config: str | None = None
    backbone: str = "efficientnet_lite0"
    init_weights: str = "imagenet"
    image_size: int = 96
    normalization: str | None = None  # 'imagenet' or 'weights' (train_accelerate's); also the floor's
    embedding_dim: int | None = None
    scale: float | None = None
    margin_min: float | None = None
    margin_max: float | None = None
    identities_per_batch: int | None = None
    images_per_identity: int | None = None
    max_images_per_identity: int | None = 8
    max_eval_images_per_identity: int | None = 8
    lr_backbone: float | None = None
    lr_head: float | None = None
    warmup_epochs: float | None = None
    mixed_precision: str = "no"
    num_workers: int = 2
    eval_batch_size: int = 128
    seed: int = 42
    # table 1 (closed set, uncapped data: the benchmark's exact database)
    closed_epochs: int = 4
    closed_batches_per_epoch: int | None = 40  # None: one pass over the training images per epoch
    closed_eval_protocol: str = "query_gallery"  # per-epoch validation of table-1 runs (picks the best epoch)
    closed_parallel_runs: int = 1  # train table 1's arms at once, each on cores // n threads (CPU)
    # more arms of our pipeline for table 1: name -> training overrides (e.g. {gem: {pooling: gem}}); reported
    # beside "ours" with their validation scores, which is what picks between them (never test)
    closed_variants: dict[str, dict] = field(default_factory=dict)
    closed_plain_arcface: bool = True  # the "ours with a plain ArcFace head" arm
    # refit arms: ours and the peer again on train + validation (train_on_validation), with ours's schedule and
    # image count; the schedule is the one the non-refit run's validation curve supports (reported beside it)
    closed_refit: bool = False
    # a multispecies start (the paper's fine-tuning claim on the closed set): first a run on the open corpus's
    # species that the closed corpus lacks (a shared species would be the same animals, test images included),
    # trained like table 3's runs (`epochs` x its share of `batches_per_epoch`); then ours fine-tuned from it on the
    # closed corpus with ours's schedule (arm `multi`, and `multi_refit` with closed_refit)
    closed_pretrain: bool = False
    # training overrides of the `multi` arms only (e.g. {lr_backbone: 3.0e-3}); the start keeps the recipe's
    closed_finetune: dict = field(default_factory=dict)
    # train and score only these table-1 arms (ours, arcface, <variant>, peer, ours_refit, peer_refit, multi,
    # multi_refit); None: all that the fields above ask for. For adding arms beside runs measured earlier.
    closed_arms: list[str] | None = None
    # arms also scored with test-time flip (each image and its mirror image averaged): a copy of the arm's export
    # with `test_time_flip: true`, the same weights, no training; its validation (queries against train) is
    # reported beside the arm's own so the choice can be made there
    closed_flip_tta: list[str] = field(default_factory=list)
    # tables 2-4: train their runs (multispecies, per species, without a species) this many at a time before the
    # tables read them, each on cores // n threads (CPU); 1 trains them one after another inside the tables
    parallel_runs: int = 1
    megadescriptor_scale: float = 64.0
    megadescriptor_margin: float = 0.5
    # table 2 / 3 / 5
    epochs: int = 3
    batches_per_epoch: int = 60  # the multispecies model's; others get the same epochs
    zero_shot_species: list[str] = field(default_factory=lambda: ["lion", "nyala"])
    openset_unknown_fraction: float = 0.3
    # table 4
    finetune_species: str = "nyala"
    finetune_identities: int = 20
    finetune_epochs: int = 4
    finetune_batches_per_epoch: int = 15
    finetune_freeze_backbone_epochs: int = 1
    finetune_lr_backbone: float = 1.0e-4
    # when set, each start fine-tunes once per learning rate (backbone and head) and validation picks one per start
    finetune_lr_grid: list[float] = field(default_factory=list)
    # runtime
    tables: list[int] = field(default_factory=lambda: list(TABLE_ORDER))
    time_budget_s: float | None = None  # stop starting new runs after this many seconds
    min_run_s: float = 0.0  # do not start a training run with less time left than this

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tables) - set(TABLE_ORDER))
        if unknown:
            raise ValueError(f"tables must be among {sorted(TABLE_ORDER)}, got {unknown}")
        if not 0 < self.openset_unknown_fraction < 1:
            raise ValueError(
                f"openset_unknown_fraction must be in (0, 1), got {self.openset_unknown_fraction}"
            )
        if self.finetune_identities < 2:
            raise ValueError(f"finetune_identities must be >= 2, got {self.finetune_identities}")


def load_bench_config(path: str | Path | None, overrides: list[str] | None = None) -> BenchConfig:
    """Read a YAML file of `BenchConfig` fields, then ``key=value`` overrides (values parsed as YAML)."""
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of BenchConfig fields, got {type(values).__name__}")
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        values[key.strip()] = yaml.safe_load(raw)
    names = {f.name for f in dataclasses.fields(BenchConfig)}
    bad = sorted(set(values) - names)
    if bad:
        raise ValueError(f"unknown benchmark option(s) {bad}; expected names among {sorted(names)}")
    return BenchConfig(**values)


# ------------------------------------------------------------------------------------------------ corpora


def _stable_rank(seed: int, key: str) -> int:
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not (src / "README.md").is_file():
        raise FileNotFoundError(
            f"{src}: expected a built corpus (README.md and data/<config>/<split>-*.parquet)"
        )
    tmp = dst.with_name(dst.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "data").mkdir(parents=True)
    files = sorted((src / "data").glob("*/*.parquet"))
    by_species: dict[str, list[Path]] = {}
    for f in files:
        by_species.setdefault(f.parent.name, []).append(f)
    if species:
        missing = sorted(set(species) - set(by_species))
        if missing:
            raise ValueError(f"species {missing} not in corpus {src}; it has {sorted(by_species)}")
        by_species = {k: v for k, v in by_species.items() if k in species}
    report: dict[str, Any] = {"source": str(src), "size": size, "quality": quality, "species": {}}
    for sp, sp_files in sorted(by_species.items()):
        tables = {f: pq.read_table(f) for f in sp_files}
        keep_ids = None
        if max_identities and sp in max_identities:
            ids = sorted({i for t in tables.values() for i in t.column("identity").to_pylist()})
            ids.sort(key=lambda i: _stable_rank(seed, i))
            keep_ids = set(ids[: max_identities[sp]])
        counts = {}
        for f, table in tables.items():
            split = f.name.split("-")[0]
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
            table = table.filter(pa.array(keep))
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
            (tmp / "data" / sp).mkdir(exist_ok=True)
            pq.write_table(
                table.replace_schema_metadata(tables[f].schema.metadata), tmp / "data" / sp / f.name
            )
            counts[split] = {
                "images": table.num_rows,
                "identities": len(set(table.column("identity").to_pylist())),
            }
        report["species"][sp] = counts
    _write_card(src, tmp, sorted(by_species))
    for extra in ("build_report.json",):
        if (src / extra).is_file():
            shutil.copy2(src / extra, tmp / extra)
    (tmp / "compact_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return report


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


# ------------------------------------------------------------------------------------------------ runs


class Deadline:
    """Hard wall-clock budget: training runs are not started once it is spent."""

    def __init__(self, budget_s: float | None, min_run_s: float = 0.0) -> None:
        self.t0 = time.time()
        self.budget_s = budget_s
        self.min_run_s = min_run_s

    def left(self) -> float:
        return float("inf") if self.budget_s is None else self.budget_s - (time.time() - self.t0)

    def allows_run(self) -> bool:
        return self.left() > self.min_run_s


class OutOfTime(RuntimeError):
    pass


@dataclass
class Bench:
    cfg: BenchConfig
    work: Path
    corpora: dict[str, Path]
    deadline: Deadline
    run_times: dict[str, float] = field(default_factory=dict)  # runs trained by this call
    used_runs: dict[str, float | None] = field(
        default_factory=dict
    )  # every run used, with its training wall time
    _cache: dict[tuple, Any] = field(default_factory=dict)

    # ---- training

    def train_argv(self, name: str, corpus: Path, **over: Any) -> list[str]:
        c = self.cfg
        opts: dict[str, Any] = {
            "corpus": corpus,
            "corpus_config": "all",
            "output_dir": self.work / "runs" / name,
            "backbone": c.backbone,
            "init_weights": c.init_weights,
            "image_size": c.image_size,
            "normalization": c.normalization,
            "embedding_dim": c.embedding_dim,
            "scale": c.scale,
            "margin_min": c.margin_min,
            "margin_max": c.margin_max,
            "epochs": c.epochs,
            "batches_per_epoch": c.batches_per_epoch,
            "identities_per_batch": c.identities_per_batch,
            "images_per_identity": c.images_per_identity,
            "max_images_per_identity": c.max_images_per_identity,
            "max_eval_images_per_identity": c.max_eval_images_per_identity,
            "lr_backbone": c.lr_backbone,
            "lr_head": c.lr_head,
            "warmup_epochs": c.warmup_epochs,
            "mixed_precision": c.mixed_precision,
            "num_workers": c.num_workers,
            "eval_batch_size": c.eval_batch_size,
            "seed": c.seed,
            "save_total_limit": 1,
            "log_every": 1000,
        }
        opts.update(over)
        argv: list[str] = [c.train_config] if c.train_config else []
        for k, v in opts.items():
            if v is None:
                continue
            if isinstance(v, (list, tuple)):
                argv += [f"--{k}", *map(str, v)]
            else:
                argv += [f"--{k}", str(v)]
        return argv

    def train(self, name: str, corpus: Path, **over: Any) -> dict[str, Any]:
        """One `train_accelerate.main` run (reused when its results.json exists); results.json's dict."""
        import train_accelerate

        run_dir = self.work / "runs" / name
        done = run_dir / "results.json"
        if done.is_file():
            logger.info("reusing %s", run_dir)
            res = json.loads(done.read_text(encoding="utf-8"))
            self.used_runs[name] = res.get("bench_wall_s")
            return res
        if not self.deadline.allows_run():
            raise OutOfTime(f"{name}: {self.deadline.left():.0f} s left of the time budget")
        if run_dir.exists():
            shutil.rmtree(run_dir)  # an unfinished run
        argv = self.train_argv(name, corpus, **over)
        logger.info("train %s: train_accelerate.py %s", name, " ".join(argv))
        t0 = time.time()
        res = train_accelerate.main(argv)
        self.run_times[name] = time.time() - t0
        logger.info("train %s: %.0f s, test top-1 %s", name, self.run_times[name], res["test"]["top1"])
        res["argv"] = argv
        res["bench_wall_s"] = self.run_times[name]
        self.used_runs[name] = self.run_times[name]
        done.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        return res

    def train_parallel(
        self,
        corpus: Path,
        specs: dict[str, dict],
        peers: list[tuple[str, int, int, tuple[str, ...]]] | None = None,
        at_once: int | None = None,
    ) -> None:
        """Train several runs as subprocesses, ``at_once`` at a time (all when None) on ``cores // at_once``
        threads each, in the order given; a new one starts as soon as one finishes (finished runs are skipped).

        ``peers``: ``(name, images, batch, splits)`` of peer-recipe runs. `train` / `peer` then find their
        ``results.json`` and reuse them; each gets ``bench_wall_s``.
        """
        jobs: dict[str, list[str]] = {}
        for name, over in specs.items():
            if not (self.work / "runs" / name / "results.json").is_file():
                jobs[name] = [str(REPO / "train_accelerate.py"), *self.train_argv(name, corpus, **over)]
        for name, images, batch, splits in peers or []:
            if not (self.work / "runs" / name / "results.json").is_file():
                jobs[name] = self._peer_argv(name, corpus, images, batch, splits)
        if not jobs:
            return
        if not self.deadline.allows_run():
            raise OutOfTime(f"{sorted(jobs)}: {self.deadline.left():.0f} s left of the time budget")
        width = min(len(jobs), at_once or len(jobs))
        threads = str(max(1, (os.cpu_count() or 1) // width))
        waiting, running = list(jobs.items()), {}
        try:
            while waiting or running:
                while waiting and len(running) < width:
                    name, argv = waiting.pop(0)
                    running[name] = self._start_run(name, argv, threads)
                name = self._wait_any(running)
                proc, log, argv, started = running.pop(name)
                log.close()
                self._finish_run(
                    name, proc.returncode, argv, started, len(jobs) if at_once is None else width
                )
        finally:
            for (
                proc,
                log,
                *_,
            ) in running.values():  # a failed run (or Ctrl-C) stops the others, which restart later
                proc.kill()
                proc.wait()
                log.close()

    def _peer_argv(
        self, name: str, corpus: Path, images: int, batch: int, splits: tuple[str, ...]
    ) -> list[str]:
        c = self.cfg
        return [str(REPO / "benchmarks" / "peer_arcface.py"), "--corpus", str(corpus), "--out",
                str(self.work / "runs" / name), "--images", str(images), "--batch", str(batch), "--seed", str(c.seed),
                "--size", str(c.image_size), "--backbone", c.backbone, "--init_weights", c.init_weights,
                "--precision", _peer_precision(c), "--splits", *splits]  # fmt: skip

    def _start_run(self, name: str, argv: list[str], threads: str) -> tuple:
        run_dir = self.work / "runs" / name
        if run_dir.exists():
            shutil.rmtree(run_dir)  # an unfinished run
        run_dir.mkdir(parents=True)
        flag = "--threads" if argv[0].endswith("peer_arcface.py") else "--cpu_threads"
        log = open(self.work / "runs" / f"{name}.log", "w", encoding="utf-8")
        proc = subprocess.Popen(
            [sys.executable, *argv, flag, threads], stdout=log, stderr=log, env=fast_malloc_env()
        )
        logger.info("train %s (parallel, %s threads): %s", name, threads, " ".join(argv))
        return proc, log, argv, time.time()

    @staticmethod
    def _wait_any(running: dict[str, tuple]) -> str:
        while True:
            for name, (proc, *_rest) in running.items():
                if proc.poll() is not None:
                    return name
            time.sleep(2.0)

    def _finish_run(self, name: str, rc: int, argv: list[str], started: float, parallel: int) -> None:
        done = self.work / "runs" / name / "results.json"
        if rc != 0 or not done.is_file():
            raise RuntimeError(f"{name} failed (exit {rc}); see {self.work / 'runs' / (name + '.log')}")
        res = json.loads(done.read_text(encoding="utf-8"))
        res.update(argv=argv[1:], bench_wall_s=time.time() - started, parallel_runs=parallel)
        res.setdefault("train_images_seen", res.get("train_images"))
        self.run_times[name] = res["bench_wall_s"]
        done.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")

    def peer(
        self, name: str, corpus: Path, images: int, batch: int = 64, splits: tuple[str, ...] = ("train",)
    ) -> dict[str, Any]:
        """The peer recipe (benchmarks/peer_arcface.py) on ``images`` training images; reused like `train`."""
        import peer_arcface

        run_dir = self.work / "runs" / name
        done = run_dir / "results.json"
        if done.is_file():
            res = json.loads(done.read_text(encoding="utf-8"))
            res.setdefault("train_images_seen", res.get("train_images"))
            self.used_runs[name] = res.get("bench_wall_s")
            return res
        if not self.deadline.allows_run():
            raise OutOfTime(f"{name}: {self.deadline.left():.0f} s left of the time budget")
        c = self.cfg
        t0 = time.time()
        res = peer_arcface.train(
            str(corpus), str(run_dir), images, seed=c.seed, batch=batch, size=c.image_size, backbone=c.backbone,
            init_weights=c.init_weights, precision=_peer_precision(c), splits=splits,
        )  # fmt: skip
        res["bench_wall_s"] = self.run_times[name] = self.used_runs[name] = time.time() - t0
        res["train_images_seen"] = res["train_images"]
        done.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        return res

    # ---- embeddings

    @property
    def device(self) -> str:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def extractor(self, which: str):
        """``(model, processor)``: ``"imagenet"`` (backbone features, no re-ID training) or an export dir."""
        from modeling import AnimalReIDConfig, AnimalReIDImageProcessor, AnimalReIDModel

        key = ("model", which)
        if key not in self._cache:
            if which == "imagenet":
                c = self.cfg
                from animal_reid.weights import input_normalization

                mean, std = input_normalization(c.backbone, c.init_weights, c.normalization or "imagenet")
                model = AnimalReIDModel(
                    AnimalReIDConfig(
                        backbone=c.backbone,
                        embedding_dim=0,
                        image_size=c.image_size,
                        image_mean=mean,
                        image_std=std,
                    )
                )
                if c.init_weights == "imagenet":
                    from animal_reid.weights import load_imagenet_backbone

                    load_imagenet_backbone(model)
                elif c.init_weights != "none":
                    from animal_reid.weights import load_backbone_file

                    load_backbone_file(model, c.init_weights)
                processor = AnimalReIDImageProcessor.from_model_config(model.config)
            else:
                model = AnimalReIDModel.from_pretrained(which)
                processor = AnimalReIDImageProcessor.from_pretrained(which)
            self._cache[key] = (model.to(self.device).eval(), processor)
        return self._cache[key]

    def split(self, corpus: Path, split: str, species: list[str] | None = None, capped: bool = True):
        """A corpus split filtered and capped exactly as `train_accelerate` does (same seed)."""
        from animal_reid.training.config import DataArguments
        from animal_reid.training.data import load_corpus

        key = ("split", str(corpus), tuple(species or ()), capped)
        if key not in self._cache:
            c = self.cfg
            args = DataArguments(
                corpus=str(corpus),
                corpus_config="all",
                species=species,
                max_images_per_identity=c.max_images_per_identity if capped else None,
                max_eval_images_per_identity=c.max_eval_images_per_identity if capped else None,
                num_workers=c.num_workers,
            )
            self._cache[key] = load_corpus(args, seed=c.seed).splits
        return self._cache[key][split]

    def embed(
        self, which: str, corpus: Path, split: str, species: list[str] | None = None, capped: bool = True
    ):
        """``(embeddings [N, D], metadata dict of lists)`` of a split under a model."""
        import torch
        from torch.utils.data import DataLoader

        from animal_reid.training.data import ReIDImageDataset, dataloader_kwargs, split_metadata

        key = ("emb", which, str(corpus), split, tuple(species or ()), capped)
        if key in self._cache:
            return self._cache[key]
        model, processor = self.extractor(which)
        ds = self.split(corpus, split, species, capped)
        # one pass: workers need not outlive it; batches are uint8, normalised on the device
        loader = DataLoader(
            ReIDImageDataset(ds, processor),
            batch_size=self.cfg.eval_batch_size,
            **dataloader_kwargs(
                self.cfg.num_workers,
                pin_memory=torch.device(self.device).type == "cuda",
                persistent_workers=False,
            ),
        )
        dtype = torch.bfloat16 if self.cfg.mixed_precision == "bf16" else None
        out = []
        with torch.inference_mode():
            for batch in loader:
                x = processor.normalize_uint8(batch["pixel_values"].to(self.device, non_blocking=True))
                with torch.autocast(self.device, dtype=dtype or torch.float32, enabled=dtype is not None):
                    out.append(model(pixel_values=x).embeddings.float().cpu())
        result = (torch.cat(out).numpy(), split_metadata(ds))
        self._cache[key] = result
        return result

    def leave_one_out(self, which: str, corpus: Path, species: list[str] | None = None) -> dict[str, Any]:
        """The paper's protocol on the (capped) test split: every image queries the others of its species."""
        from animal_reid.metrics import evaluate_reid

        emb, meta = self.embed(which, corpus, "test", species)
        return evaluate_reid(emb, meta["identity"], meta.get("encounter"), meta["species"], topk=(1, 5, 10))


# ------------------------------------------------------------------------------------------------ tables


def _peer_precision(cfg: BenchConfig) -> str:
    """The peer arm trains in the precision every other arm gets (fp32 unless ``mixed_precision: bf16``)."""
    return "bf16" if cfg.mixed_precision == "bf16" else "fp32"


def floor_label(cfg: BenchConfig) -> str:
    """Name of the no-re-ID-training baseline: the backbone's starting weights alone (GeM-pooled features)."""
    start = "ImageNet" if cfg.init_weights == "imagenet" else f"{cfg.init_weights} (untrained)"
    return f"{start} features, no re-ID training"


def _pick(res: dict[str, Any], species: str) -> dict[str, float | None]:
    ps = res.get("per_species", {}).get(species, {})
    return {"top1": ps.get("top1"), "mAP": ps.get("mAP"), "n_queries": ps.get("n_queries")}


def _train_counts(bench: Bench, corpus: Path) -> Counter:
    return Counter(bench.split(corpus, "train")["species"])


def table1(bench: Bench) -> dict[str, Any]:
    """Closed set (MegaDescriptor's protocol): ours vs plain ArcFace vs ImageNet features vs published."""
    c, corpus = bench.cfg, bench.corpora["closed"]
    specs, peers, start = _table1_arms(bench, corpus)
    missing = [a for a in c.closed_flip_tta if f"t1_{a}" not in {*specs, *(p[0] for p in peers)}]
    if missing:
        raise ValueError(f"closed_flip_tta {missing}: not arms this config trains ({sorted(specs)})")
    if c.closed_parallel_runs > 1:
        bench.train_parallel(corpus, specs, peers=peers, at_once=c.closed_parallel_runs)
    runs = {name: bench.train(name, corpus, **over) for name, over in specs.items()}
    runs |= {name: bench.peer(name, corpus, images, batch, splits) for name, images, batch, splits in peers}
    flips = {f"ours, {a}, + test-time flip (same weights)": runs[f"t1_{a}"] for a in c.closed_flip_tta}
    runs = _table1_labelled(c, runs)
    models = {floor_label(c): "imagenet"} | {k: v["export_dir"] for k, v in runs.items()}
    models |= {label: str(flip_export(Path(run["export_dir"]))) for label, run in flips.items()}
    rows, curves = _closed_rows(bench, corpus, models)
    # a refit trained on the validation images (and labels), so it has no validation to report
    flip_val = {
        label: _closed_validation(bench, corpus, models[label])
        for label, run in flips.items()
        if "--train_on_validation" not in (run.get("argv") or [])
    }
    species = sorted(next(iter(rows.values()))["megadescriptor"])
    return {
        "protocol": "test images query train+validation (= MegaDescriptor's training set), 1-NN cosine; "
        "'megadescriptor' keeps same-encounter gallery images as MegaDescriptor does, 'strict' drops them",
        "species": species,
        "rows": rows,
        "published": PUBLISHED_MEGADESCRIPTOR,
        "runs": {k: _run_summary(v) for k, v in runs.items()},
        "multispecies_start": _run_summary(start) if start else None,
        "test_time_flip_validation": flip_val,
        "_curves": curves,
    }


def flip_export(export: Path) -> Path:
    """A copy of ``export`` beside it (``<export>_test_time_flip``) whose config has ``test_time_flip: true``."""
    import shutil
    import tempfile

    dst = export.parent / f"{export.name}_test_time_flip"
    if (dst / "config.json").is_file():
        return dst
    tmp = Path(tempfile.mkdtemp(prefix=".flip-", dir=export.parent))
    try:
        shutil.copytree(export, tmp, dirs_exist_ok=True)
        cfg = json.loads((tmp / "config.json").read_text())
        (tmp / "config.json").write_text(json.dumps({**cfg, "test_time_flip": True}, indent=2))
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _closed_validation(bench: Bench, corpus: Path, which: str) -> dict[str, Any]:
    """Per species ``{top1, mAP}``: validation images query the train split (the runs' `query_gallery`)."""
    from animal_reid.metrics import evaluate_reid

    q, qm = bench.embed(which, corpus, "validation", capped=False)
    g, gm = bench.embed(which, corpus, "train", capped=False)
    r = evaluate_reid(q, qm["identity"], None, qm["species"], gallery_embeddings=g, gallery_labels=gm["identity"],
                      gallery_species=gm["species"], topk=(1,))  # fmt: skip
    return {sp: {"top1": m["top1"], "mAP": m["mAP"]} for sp, m in r["per_species"].items()}


def _table1_arms(bench: Bench, corpus: Path) -> tuple[dict[str, dict], list[tuple], dict[str, Any] | None]:
    """Table 1's runs, limited to ``closed_arms``: training overrides of our arms, the peer runs ``(name, images,
    batch, splits)``, and the multispecies start's results (trained here when an arm needs it, else None)."""
    c = bench.cfg
    common = {
        "eval_protocol": c.closed_eval_protocol,
        "epochs": c.closed_epochs,
        "batches_per_epoch": c.closed_batches_per_epoch,
        "max_images_per_identity": None,  # the benchmark's exact database
        "max_eval_images_per_identity": None,
    }
    arcface = {"subcenters": 1, "dynamic_margins": False, "margin_max": c.megadescriptor_margin,
               "margin_min": c.megadescriptor_margin, "scale": c.megadescriptor_scale, "head_init": "normal"}  # fmt: skip
    images, batch = _closed_images(bench, corpus, common)
    refit = {"train_on_validation": True, "batches_per_epoch": images // batch // common["epochs"]}
    specs = {"t1_ours": common} | ({"t1_arcface": {**common, **arcface}} if c.closed_plain_arcface else {})
    specs |= {f"t1_{name}": {**common, **over} for name, over in c.closed_variants.items()}
    peers = [("t1_peer", images, batch, ("train",))]
    if c.closed_refit:  # the same schedule and image count, drawn from train + validation
        specs["t1_ours_refit"] = {**common, **refit}
        peers.append(("t1_peer_refit", images, batch, ("train", "validation")))
    keep = None if c.closed_arms is None else {f"t1_{a}" for a in c.closed_arms}
    _check_arms(c, keep, set(specs) | {name for name, *_ in peers})
    start = None
    if c.closed_pretrain and (keep is None or keep & {"t1_multi", "t1_multi_refit"}):
        start = _closed_pretrain(bench)
        specs["t1_multi"] = {**common, **c.closed_finetune, "init_from": start["export_dir"]}
        if c.closed_refit:
            specs["t1_multi_refit"] = {**specs["t1_multi"], **refit}
    if keep is not None:
        specs = {k: v for k, v in specs.items() if k in keep}
        peers = [p for p in peers if p[0] in keep]
    return specs, peers, start


def _check_arms(c: BenchConfig, keep: set[str] | None, names: set[str]) -> None:
    """``closed_arms`` must name arms this config has (a typo would otherwise train and score nothing)."""
    if c.closed_pretrain:
        names = names | {"t1_multi"} | ({"t1_multi_refit"} if c.closed_refit else set())
    unknown = sorted(keep - names) if keep else []
    if unknown:
        has = sorted(n[3:] for n in names)
        raise ValueError(f"closed_arms {[u[3:] for u in unknown]}: not arms of this config, which has {has}")


def _table1_labelled(c: BenchConfig, runs: dict[str, dict]) -> dict[str, dict]:
    """Table 1's runs keyed by their row label, in row order."""
    tuned = _overrides(c.closed_finetune)
    labels = {
        "t1_ours": f"ours ({_recipe_label(runs['t1_ours'])})" if "t1_ours" in runs else "",
        "t1_arcface": f"ours with a plain ArcFace head (k=1, m={c.megadescriptor_margin}, "
        f"s={c.megadescriptor_scale:g}, N(0, 0.01) init)",
    }
    labels |= {f"t1_{name}": f"ours, {name}{_overrides(over)}" for name, over in c.closed_variants.items()}
    labels |= {
        "t1_peer": "peer recipe (plain-ArcFace script, issue 12)",
        "t1_multi": f"ours, fine-tuned from the multispecies start{tuned}",
        "t1_ours_refit": "ours, refit on train + validation (the same schedule, last epoch)",
        "t1_peer_refit": "peer recipe, refit on train + validation",
        "t1_multi_refit": f"ours from the multispecies start{tuned}, refit on train + validation",
    }
    return {label: runs[name] for name, label in labels.items() if name in runs}


def _overrides(over: dict[str, Any]) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in over.items())})" if over else ""


def _closed_pretrain(bench: Bench) -> dict[str, Any]:
    """The multispecies start of table 1's `multi` arms: the open corpus without the closed corpus's species."""
    c = bench.cfg
    closed = set(bench.split(bench.corpora["closed"], "train", capped=False)["species"])
    counts = _train_counts(bench, bench.corpora["open"])
    over = _without_spec(c, counts, *closed)
    if not over["species"]:
        raise ValueError(
            f"closed_pretrain: the open corpus has no species beyond the closed corpus's {sorted(closed)}"
        )
    over |= {"eval_protocol": "leave_one_out", "eval_every": 2, "warmup_epochs": 0.1 * c.epochs}
    return bench.train("t1_pretrain", bench.corpora["open"], **over)


def _closed_rows(bench: Bench, corpus: Path, models: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each model's test queries against train + validation, with and without same-encounter gallery images."""
    from animal_reid.metrics import evaluate_reid

    rows: dict[str, Any] = {}
    curves = {}
    for label, which in models.items():
        q, qm = bench.embed(which, corpus, "test", capped=False)
        g1, gm1 = bench.embed(which, corpus, "train", capped=False)
        g2, gm2 = bench.embed(which, corpus, "validation", capped=False)
        g = np.concatenate([g1, g2])
        gm = {k: gm1[k] + gm2[k] for k in gm1}
        per: dict[str, Any] = {}
        for protocol, enc in (("megadescriptor", False), ("strict", True)):
            r = evaluate_reid(
                q,
                qm["identity"],
                qm["encounter"] if enc else None,
                qm["species"],
                gallery_embeddings=g,
                gallery_labels=gm["identity"],
                gallery_encounters=gm["encounter"] if enc else None,
                gallery_species=gm["species"],
                topk=(1, 5),
            )
            per[protocol] = {sp: _pick(r, sp) for sp in r["per_species"]}
            if protocol == "megadescriptor":
                curves[label] = r
        rows[label] = per
    return rows, curves


def _closed_images(bench: Bench, corpus: Path, common: dict[str, Any]) -> tuple[int, int]:
    """``(training images, batch size)`` of a table-1 run: epochs x batches per epoch x batch (default: one pass)."""
    from animal_reid.training.config import parse_config

    cfg = parse_config(bench.train_argv("t1_ours", corpus, **common)).train
    rows = len(bench.split(corpus, "train", capped=False))
    batches = cfg.batches_per_epoch or max(1, rows // cfg.batch_size)
    return cfg.epochs * batches * cfg.batch_size, cfg.batch_size


def _recipe_label(res: dict[str, Any]) -> str:
    """Short description of a run's head and optimiser from its resolved config (``config_summary``)."""
    h = res.get("config_summary") or {}
    if not h:
        return "our recipe"
    head = f"sub-center ArcFace k={h['subcenters']}" if h["subcenters"] > 1 else "ArcFace"
    margins = (
        f"dynamic margins {h['margin_min']:g}-{h['margin_max']:g}"
        if h["dynamic_margins"]
        else f"m={h['margin_max']:g}"
    )
    return (
        f"{head}, {margins}, s={h['scale']:g}, {h['pooling']}, head init {h['head_init']}, {h['optimizer']}"
    )


def _run_summary(res: dict[str, Any]) -> dict[str, Any]:
    return {
        "best_epoch": res.get("best_epoch"),
        "epochs": res.get("epochs"),
        "train_images_per_s": res.get("train_images_per_s"),
        "wall_time_s": res.get("bench_wall_s") or res.get("wall_time_s") or res.get("wall_s"),
        "train_images_seen": res.get("train_images_seen"),
        "val_best": {
            sp: m.get("top1") for sp, m in ((res.get("val_best") or {}).get("per_species") or {}).items()
        },
        "export_dir": res.get("export_dir"),
        "argv": " ".join(res.get("argv", [])),
    }


def _scaled_batches(total: int, part: int, whole: int) -> int:
    return max(1, round(total * part / whole))


def _only_spec(c: BenchConfig, counts: Counter, sp: str) -> dict[str, Any]:
    """Training overrides of the species-specific run of table 2: same epochs, its share of the batches."""
    return {
        "species": [sp],
        "batches_per_epoch": _scaled_batches(c.batches_per_epoch, counts[sp], sum(counts.values())),
    }


def _without_spec(c: BenchConfig, counts: Counter, *left_out: str) -> dict[str, Any]:
    """Training overrides of the run without ``left_out`` (tables 3 and 4; table 1's multispecies start): the
    other species, their share of batches."""
    whole = sum(counts.values())
    return {
        "species": sorted(set(counts) - set(left_out)),
        "batches_per_epoch": _scaled_batches(
            c.batches_per_epoch, whole - sum(counts[s] for s in left_out), whole
        ),
    }


def open_run_specs(bench: Bench) -> dict[str, dict[str, Any]]:
    """Every open-corpus run tables 2-4 read, with its overrides, longest first (what `parallel_runs` trains)."""
    c = bench.cfg
    counts = _train_counts(bench, bench.corpora["open"])
    specs: dict[str, dict[str, Any]] = {}
    if {2, 5} & set(c.tables):
        specs["t2_multi"] = {}
    left_out = (c.zero_shot_species if 3 in c.tables else []) + (
        [c.finetune_species] if 4 in c.tables else []
    )
    for sp in dict.fromkeys(left_out):
        if sp not in counts:
            raise ValueError(f"species {sp!r} not in the open corpus; it has {sorted(counts)}")
        specs[f"t3_without_{sp}"] = _without_spec(c, counts, sp)
    if 2 in c.tables:
        for sp in sorted(counts, key=lambda k: -counts[k]):
            specs[f"t2_only_{sp}"] = _only_spec(c, counts, sp)
    return specs


def table2(bench: Bench) -> dict[str, Any]:
    """One multispecies model vs one model per species, same epochs (so the same total steps)."""
    c, corpus = bench.cfg, bench.corpora["open"]
    counts = _train_counts(bench, corpus)
    multi = bench.train("t2_multi", corpus)
    multi_eval = bench.leave_one_out(multi["export_dir"], corpus)
    floor = bench.leave_one_out("imagenet", corpus)
    rows: dict[str, Any] = {}
    specific_runs = {}
    for sp in sorted(counts):
        spec = _only_spec(c, counts, sp)
        b = spec["batches_per_epoch"]
        try:
            res = bench.train(f"t2_only_{sp}", corpus, **spec)
        except OutOfTime as err:
            logger.warning("table 2: %s", err)
            res = None
        specific_runs[sp] = res
        spec = _pick(res["test"], sp) if res else {"top1": None, "mAP": None}
        rows[sp] = {
            "train_images": counts[sp],
            "specific_batches_per_epoch": b,
            "multispecies": _pick(multi_eval, sp),
            "species_specific": spec,
            "imagenet": _pick(floor, sp),
        }
    gains = {
        m: [
            r["multispecies"][m] - r["species_specific"][m]
            for r in rows.values()
            if r["multispecies"][m] is not None and r["species_specific"][m] is not None
        ]
        for m in ("top1", "mAP")
    }
    return {
        "protocol": "leave-one-out within species on test identities (never trained on), same-encounter excluded",
        "budget": f"same epochs: multispecies {c.epochs} x {c.batches_per_epoch} batches; species-specific "
        f"{c.epochs} x round({c.batches_per_epoch} x species share of train images)",
        "rows": rows,
        "mean_gain": {m: (float(np.mean(v)) if v else None) for m, v in gains.items()},
        "n_species_compared": len(gains["top1"]),
        "runs": {"multispecies": _run_summary(multi)}
        | {f"only_{k}": _run_summary(v) for k, v in specific_runs.items() if v},
        "_multi_eval": multi_eval,
    }


def table3(bench: Bench, t2: dict[str, Any] | None) -> dict[str, Any]:
    """Zero-shot: train without species X, evaluate on X."""
    c, corpus = bench.cfg, bench.corpora["open"]
    counts = _train_counts(bench, corpus)
    floor = bench.leave_one_out("imagenet", corpus)
    rows = {}
    runs = {}
    for sp in c.zero_shot_species:
        if sp not in counts:
            raise ValueError(f"zero_shot_species {sp!r} not in the open corpus; it has {sorted(counts)}")
        row: dict[str, Any] = {"imagenet": _pick(floor, sp)}
        try:
            res = bench.train(f"t3_without_{sp}", corpus, **_without_spec(c, counts, sp))
            runs[sp] = res
            row["zero_shot"] = _pick(bench.leave_one_out(res["export_dir"], corpus, [sp]), sp)
        except OutOfTime as err:
            logger.warning("table 3: %s", err)
            row["zero_shot"] = {"top1": None, "mAP": None}
        if t2 is not None:
            row["species_specific"] = t2["rows"][sp]["species_specific"]
            row["multispecies"] = t2["rows"][sp]["multispecies"]
        rows[sp] = row
    return {
        "protocol": "leave-one-out within species on the held-out species' test identities",
        "rows": rows,
        "runs": {f"without_{k}": _run_summary(v) for k, v in runs.items()},
    }


def table4(bench: Bench) -> dict[str, Any]:
    """Fine-tune on a new species with few identities: from a model that never saw it vs from ImageNet."""
    c, src = bench.cfg, bench.corpora["open"]
    sp = c.finetune_species
    few = bench.work / "corpora" / f"few_{sp}_{c.finetune_identities}"
    if not (few / "README.md").is_file():
        compact_corpus(
            src,
            few,
            c.pack_size,
            c.pack_quality,
            species=[sp],
            max_train_identities=c.finetune_identities,
            seed=c.seed,
        )
    base = bench.train(f"t3_without_{sp}", src, **_without_spec(c, _train_counts(bench, src), sp))
    common = {
        "epochs": c.finetune_epochs,
        "batches_per_epoch": c.finetune_batches_per_epoch,
        "freeze_backbone_epochs": c.finetune_freeze_backbone_epochs,
        "lr_backbone": c.finetune_lr_backbone,
        "warmup_epochs": 0.0,
    }
    runs, grid = {}, {}
    for label, name, start in (
        ("from multispecies (never saw it)", f"t4_{sp}_from_multi", {"init_from": base["export_dir"]}),
        ("from ImageNet", f"t4_{sp}_from_imagenet", {}),
    ):
        runs[label], grid[label] = _finetune(bench, name, few, sp, **start, **common)
    rows = {k: _pick(v["test"], sp) for k, v in runs.items()}
    rows["zero-shot multispecies (no fine-tuning)"] = _pick(bench.leave_one_out(base["export_dir"], few), sp)
    rows[floor_label(c)] = _pick(bench.leave_one_out("imagenet", few), sp)
    tr = bench.split(few, "train")
    return {
        "species": sp,
        "train_identities": len(set(tr["identity"])),
        "train_images": len(tr),
        "budget": f"{c.finetune_epochs} epochs x {c.finetune_batches_per_epoch} batches, first "
        f"{c.finetune_freeze_backbone_epochs} head-only (backbone frozen, BatchNorm kept), "
        + (
            f"lr (backbone and head) chosen per start on validation among {c.finetune_lr_grid}"
            if c.finetune_lr_grid
            else f"lr_backbone {c.finetune_lr_backbone}"
        ),
        "rows": rows,
        "runs": {k: _run_summary(v) for k, v in runs.items()},
        "lr_grid": grid,
    }


def _finetune(bench: Bench, name: str, corpus: Path, sp: str, **over: Any) -> tuple[dict[str, Any], dict]:
    """One fine-tuning run, or (``finetune_lr_grid``) one per learning rate with the best on validation (top-1,
    then mAP, of ``sp``) returned; the grid's validation and test figures are returned beside it."""
    lrs = bench.cfg.finetune_lr_grid
    if not lrs:
        return bench.train(name, corpus, **over), {}
    tried = {
        lr: bench.train(f"{name}_lr{lr:g}", corpus, **{**over, "lr_backbone": lr, "lr_head": lr})
        for lr in lrs
    }

    def val(res: dict[str, Any]) -> tuple[float, float]:
        m = ((res.get("val_best") or {}).get("per_species") or {}).get(sp) or {}
        return (m.get("top1") or 0.0, m.get("mAP") or 0.0)

    best = max(lrs, key=lambda lr: val(tried[lr]))  # the first of equals: the grid's order breaks ties
    table = {
        f"{lr:g}": {
            "validation": dict(zip(("top1", "mAP"), val(r), strict=True)),
            "test": _pick(r["test"], sp),
        }
        | {"chosen": lr == best}
        for lr, r in tried.items()
    }
    return tried[best], table


def open_set_queries(emb, meta, unknown_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Per species: some identities unknown (all images query), one query per known identity, the rest gallery.

    Same-encounter gallery images are masked out of a known query's candidates; a known query left with no
    image of its identity is dropped. Returns arrays over queries: best_score, best_label, true, unknown, species;
    and ``gallery``, the rows of ``emb`` that form the gallery.
    """
    from animal_reid.openset import open_set_split, same_encounter

    ident = np.asarray(meta["identity"], dtype=object)
    enc = np.asarray(meta.get("encounter") or [None] * len(ident), dtype=object)
    spec = np.asarray(meta["species"], dtype=object)
    out: dict[str, list] = {k: [] for k in ("best_score", "best_label", "true", "unknown", "species")}
    dropped, gallery_rows = 0, []
    for sp in sorted(set(spec.tolist())):
        idx = np.flatnonzero(spec == sp)
        if len(set(ident[idx].tolist())) < 3:
            continue
        gal, qry, unk = open_set_split(ident[idx], unknown_fraction, queries_per_known=1, seed=seed)
        gi, qi = idx[gal], idx[qry]
        gallery_rows += gi.tolist()
        sims = emb[qi] @ emb[gi].T
        same_enc = same_encounter(enc[qi], enc[gi])
        sims[same_enc] = -np.inf
        for row, q in enumerate(qi):
            u = bool(unk[qry][row])
            if not u and not np.any((ident[gi] == ident[q]) & ~same_enc[row]):
                dropped += 1
                continue
            j = int(np.argmax(sims[row]))
            if not np.isfinite(sims[row, j]):
                dropped += 1
                continue
            out["best_score"].append(float(sims[row, j]))
            out["best_label"].append(ident[gi][j])
            out["true"].append(ident[q])
            out["unknown"].append(u)
            out["species"].append(sp)
    arrays = {
        k: np.asarray(v, dtype=object if k in ("best_label", "true", "species") else None)
        for k, v in out.items()
    }
    arrays["dropped"] = np.asarray(dropped)
    arrays["gallery"] = np.asarray(gallery_rows, dtype=np.int64)
    return arrays


def _calibrations(emb: np.ndarray, meta: dict, q: dict[str, np.ndarray], fitted) -> dict[str, Any]:
    """The two ways to set new-individual thresholds for one split: ``fitted`` (validation queries, fixed) and
    ``gallery`` (queries simulated from this split's own labelled gallery; no query of this split is used)."""
    from animal_reid.openset import OpenSetThreshold

    g = q["gallery"]
    enc = meta.get("encounter")
    return {
        "validation queries": fitted,
        "gallery": OpenSetThreshold.fit_gallery(
            emb[g],
            np.asarray(meta["identity"], dtype=object)[g],
            np.asarray(meta["species"], dtype=object)[g],
            None if enc is None else np.asarray(enc, dtype=object)[g],
        ),
    }


def _open_set_score(thr, q: dict[str, np.ndarray]) -> dict[str, Any]:
    from animal_reid.openset import open_set_report

    pred = thr.predict(q["best_score"], q["best_label"], q["species"])
    return open_set_report(q["true"], pred, q["best_score"], q["unknown"], q["species"])


def _open_set_row(bench: Bench, which: str) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
    """One model's open-set row: both calibrations scored on validation, the better one reported on test."""
    from animal_reid.openset import OpenSetThreshold

    c, corpus = bench.cfg, bench.corpora["open"]
    v_emb, v_meta = bench.embed(which, corpus, "validation")
    t_emb, t_meta = bench.embed(which, corpus, "test")
    val = open_set_queries(v_emb, v_meta, c.openset_unknown_fraction, c.seed)
    test = open_set_queries(t_emb, t_meta, c.openset_unknown_fraction, c.seed + 1)
    fitted = OpenSetThreshold.fit(
        val["best_score"], val["best_label"], val["true"], val["unknown"], val["species"]
    )
    on_val = _calibrations(v_emb, v_meta, val, fitted)
    on_test = _calibrations(t_emb, t_meta, test, fitted)
    val_gm = {k: _open_set_score(thr, val)["geometric_mean"] or 0.0 for k, thr in on_val.items()}
    chosen = max(val_gm, key=lambda k: (val_gm[k], k == "validation queries"))  # a tie keeps the fitted one
    scored = {k: _open_set_score(thr, test) for k, thr in on_test.items()}
    rep = scored[chosen]
    rep["threshold"] = on_test[chosen].to_dict()
    rep["calibration"] = {
        "chosen": chosen,
        "validation_geometric_mean": val_gm,
        "test_geometric_mean": {k: v["geometric_mean"] for k, v in scored.items()},
    }
    rep["n_queries"] = {"validation": len(val["true"]), "test": len(test["true"])}
    rep["dropped_queries"] = {"validation": int(val["dropped"]), "test": int(test["dropped"])}
    return rep, test, on_test[chosen]


def table5(bench: Bench) -> dict[str, Any]:
    """Open set on identities held out of training: calibrate (chosen on validation), report on test."""
    c, corpus = bench.cfg, bench.corpora["open"]
    multi = bench.train("t2_multi", corpus)
    out: dict[str, Any] = {"rows": {}, "_scores": {}}
    for label, which in (("multispecies", multi["export_dir"]), (floor_label(c), "imagenet")):
        rep, test, thr = _open_set_row(bench, which)
        out["rows"][label] = rep
        out["_scores"][label] = (test, thr.global_threshold)
    out["protocol"] = (
        f"per species, {c.openset_unknown_fraction:.0%} of the test identities unknown (all their images query), "
        "one query per known identity, rest gallery. Two calibrations, the one with the higher sqrt(BAKS·BAUS) on "
        "validation identities (split the same way) is reported: thresholds fitted on the validation queries "
        "(per species where >= 20 known and unknown, else global), or fitted per species on queries simulated "
        "from the labelled gallery itself (each gallery image as a known and as an unknown query; "
        "`OpenSetThreshold.fit_gallery`, `identify --threshold gallery`)"
    )
    return out


# ------------------------------------------------------------------------------------------------ reporting


def _f(x: float | None, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "–"
    return f"{x * 100:.1f}" if pct else f"{x:.3f}"


def _top1_map(m: dict[str, Any] | None) -> str:
    m = m or {}
    return f"{_f(m.get('top1'))} / {_f(m.get('mAP'))}"


def render_markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"# Real-photo benchmarks ({meta['config_name']})",
        "",
        f"- date: {meta['date']}; machine: {meta['machine']}; wall time of this call: {meta['wall_time_s']:.0f} s; "
        f"training runs used: {meta.get('training_runs', '?')}, {meta.get('training_runs_wall_s', 0):.0f} s of training "
        "wall time in all (runs reused from earlier calls included)",
        f"- command: `{meta['command']}`",
        f"- budget: {meta['budget']}",
        "",
    ]
    t = results["tables"]
    if "1" in t:
        r = t["1"]
        lines += [
            "## 1. Closed set, MegaDescriptor splits (top-1 %, test queries train+val)",
            "",
            r.get("protocol", ""),
            "",
        ]
        if "error" in r:
            lines += [f"not run: {r['error']}", ""]
        else:
            sps = r["species"]
            lines += [
                "| model | " + " | ".join(f"{s} top-1 | {s} mAP | {s} top-1 strict" for s in sps) + " |"
            ]
            lines += ["|---" * (1 + 3 * len(sps)) + "|"]
            for label, per in r["rows"].items():
                cells = []
                for s in sps:
                    md = per["megadescriptor"][s]
                    cells += [_f(md["top1"]), _f(md["mAP"]), _f(per["strict"][s]["top1"])]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            for name, vals in r["published"].items():
                cells = []
                for s in sps:
                    cells += [f"{vals[s]:.1f} (published)" if s in vals else "–", "–", "–"]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            first = next(iter(r["rows"].values()))["megadescriptor"]
            per_point = ", ".join(
                f"{s}: {first[s]['n_queries']} test queries, 1 query = {100 / first[s]['n_queries']:.2f} points"
                for s in sps
                if first[s].get("n_queries")
            )
            lines += ["", per_point, ""]
            for label, run in r.get("runs", {}).items():
                val = ", ".join(f"{sp} {_f(v)}" for sp, v in (run.get("val_best") or {}).items()) or "n/a"
                lines.append(
                    f"- {label}: {run.get('train_images_seen')} training images, "
                    f"{(run.get('wall_time_s') or 0) / 60:.0f} min; validation top-1 of its chosen epoch: {val}"
                )
            for label, per in (r.get("test_time_flip_validation") or {}).items():
                val = ", ".join(f"{sp} {_f(m['top1'])} / {_f(m['mAP'])}" for sp, m in per.items())
                lines.append(f"- {label}: validation top-1 / mAP (against train): {val}")
            if r.get("multispecies_start"):
                run = r["multispecies_start"]
                val = ", ".join(f"{sp} {_f(v)}" for sp, v in (run.get("val_best") or {}).items())
                lines.append(
                    f"- the multispecies start (never saw {', '.join(sps)}): {run.get('train_images_seen')} training "
                    f"images, {(run.get('wall_time_s') or 0) / 60:.0f} min; validation top-1 (leave-one-out) of "
                    f"its chosen epoch: {val}"
                )
            lines.append("")
    if "2" in t:
        r = t["2"]
        lines += [
            "## 2. Multispecies vs species-specific (test identities, leave-one-out)",
            "",
            r.get("budget", ""),
            "",
        ]
        if "error" in r:
            lines += [f"not run: {r['error']}", ""]
        else:
            lines += [
                "| species | train images | multi top-1 | specific top-1 | ImageNet top-1 | multi mAP | specific mAP "
                "| ImageNet mAP |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for sp, row in r["rows"].items():
                m, s, f = row["multispecies"], row["species_specific"], row.get("imagenet", {})
                lines.append(
                    f"| {sp} | {row['train_images']} | {_f(m['top1'])} | {_f(s['top1'])} | {_f(f.get('top1'))} | "
                    f"{_f(m['mAP'])} | {_f(s['mAP'])} | {_f(f.get('mAP'))} |"
                )
            g = r["mean_gain"]
            lines += [
                "",
                f"Mean gain of the multispecies model: top-1 {_f(g['top1'])} points, mAP {_f(g['mAP'])} points "
                f"over {r['n_species_compared']} species.",
                "",
            ]
    if "3" in t:
        r = t["3"]
        lines += ["## 3. Zero-shot on a species left out of training (top-1 / mAP %)", ""]
        if "error" in r:
            lines += [f"not run: {r['error']}", ""]
        else:
            lines += [
                "| held-out species | ImageNet features | zero-shot (trained without it) | species-specific | multispecies (saw it) |",
                "|---|---|---|---|---|",
            ]
            for sp, row in r["rows"].items():
                cells = [
                    _top1_map(row.get(k))
                    for k in ("imagenet", "zero_shot", "species_specific", "multispecies")
                ]
                lines.append(f"| {sp} | " + " | ".join(cells) + " |")
            lines.append("")
    if "4" in t:
        r = t["4"]
        lines += ["## 4. Fine-tuning on a new species with few identities (top-1 / mAP %)", ""]
        if "error" in r:
            lines += [f"not run: {r['error']}", ""]
        else:
            lines += [
                f"species {r['species']}: {r['train_identities']} training identities, {r['train_images']} images; {r['budget']}",
                "",
            ]
            lines += ["| start | top-1 | mAP |", "|---|---|---|"]
            for label, m in r["rows"].items():
                lines.append(f"| {label} | {_f(m['top1'])} | {_f(m['mAP'])} |")
            lines += ["", *_lr_grid_lines(r.get("lr_grid") or {})]
    if "5" in t:
        r = t["5"]
        lines += [
            "## 5. Open set: new-individual decision on identities held out of training",
            "",
            r.get("protocol", ""),
            "",
        ]
        if "error" in r:
            lines += [f"not run: {r['error']}", ""]
        else:
            lines += [
                "| model | calibration (chosen on validation) | BAKS | BAUS | sqrt(BAKS·BAUS) | AUROC | "
                "test queries (known+unknown) | global threshold |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for label, rep in r["rows"].items():
                cal = rep.get("calibration", {})
                val = ", ".join(f"{k} {_f(v)}" for k, v in cal.get("validation_geometric_mean", {}).items())
                lines.append(
                    f"| {label} | {cal.get('chosen', 'validation queries')}{f' (validation: {val})' if val else ''} | "
                    f"{_f(rep.get('BAKS'))} | {_f(rep.get('BAUS'))} | {_f(rep.get('geometric_mean'))} | "
                    f"{_f(rep.get('AUROC'), pct=False)} | {rep['n_queries']['test']} | {rep['threshold']['global_threshold']:.3f} |"
                )
            lines.append("")
    if results.get("skipped"):
        lines += ["## Not run", ""] + [f"- {s}" for s in results["skipped"]] + [""]
    return "\n".join(lines)


def _lr_grid_lines(grid: dict[str, dict]) -> list[str]:
    """Table 4's learning-rate grid: each start's validation and test figures per rate, the chosen one marked."""
    if not any(grid.values()):
        return []
    lines = [
        "Learning rate chosen per start on validation (top-1, then mAP):",
        "",
        "| start | lr | validation top-1 / mAP | test top-1 / mAP |",
        "|---|---|---|---|",
    ]
    for start, rates in grid.items():
        for lr, g in rates.items():
            mark = " (chosen)" if g["chosen"] else ""
            lines.append(f"| {start} | {lr}{mark} | {_top1_map(g['validation'])} | {_top1_map(g['test'])} |")
    return [*lines, ""]


def _plots(results: dict[str, Any], tables: dict[str, Any], plot_dir: Path, tag: str) -> list[str]:
    from animal_reid import plots

    made = []
    try:
        if "1" in tables and "_curves" in tables["1"]:
            per = {
                label: {"per_species": {s: v for s, v in rows["megadescriptor"].items()}}
                for label, rows in tables["1"]["rows"].items()
            }
            made.append(
                str(
                    plots.plot_per_species(
                        per,
                        plot_dir / f"{tag}_table1_closed_top1.png",
                        metrics=("top1",),
                        title="Closed set top-1 (MegaDescriptor splits)",
                    )
                )
            )
        if "1" in tables and tables["1"].get("_curves"):
            made.append(
                str(
                    plots.plot_cmc(
                        tables["1"]["_curves"],
                        plot_dir / f"{tag}_table1_cmc.png",
                        title="CMC, closed set (test queries train+val), species averaged",
                    )
                )
            )
        if "2" in tables and "_multi_eval" in tables["2"]:
            made.append(
                str(
                    plots.plot_cmc(
                        tables["2"]["_multi_eval"],
                        plot_dir / f"{tag}_table2_cmc_multispecies.png",
                        title="CMC, multispecies model, test identities",
                    )
                )
            )
            per = {
                "multispecies": {
                    "per_species": {s: r["multispecies"] for s, r in tables["2"]["rows"].items()}
                },
                "species-specific": {
                    "per_species": {s: r["species_specific"] for s, r in tables["2"]["rows"].items()}
                },
            }
            made.append(
                str(
                    plots.plot_per_species(
                        per,
                        plot_dir / f"{tag}_table2_per_species.png",
                        metrics=("top1",),
                        title="Multispecies vs species-specific top-1",
                    )
                )
            )
        if "5" in tables and "_scores" in tables["5"]:
            test, thr = tables["5"]["_scores"]["multispecies"]
            u = test["unknown"].astype(bool)
            made.append(
                str(
                    plots.plot_score_histograms(
                        test["best_score"][~u].astype(float),
                        test["best_score"][u].astype(float),
                        plot_dir / f"{tag}_table5_openset_scores.png",
                        threshold=thr,
                        title="Best-match cosine: known vs new individuals (test)",
                        labels=("known individual", "new individual"),
                    )
                )
            )
    except Exception as err:  # a plot must not lose the figures
        logger.warning("plotting failed: %s", err)
    return made


def machine() -> str:
    import torch

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    desc = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}; load average {load} at start)"
    if torch.cuda.is_available():
        desc += f", GPU {torch.cuda.get_device_name(0)}"
    return desc + f", torch {torch.__version__}"


def use_private_datasets_cache(work: Path) -> Path:
    """Point `datasets` at a fresh cache under ``work``; returns what `restore_datasets_cache` puts back.

    `datasets.load_dataset(dir, config)` names its Arrow cache after the directory's base name, the config and
    the data-file patterns, not the files' contents: a corpus rebuilt at the same path (or another corpus
    folder with the same name, e.g. two ``open/``) is read back stale from ``~/.cache``. Each benchmark run
    therefore starts from an empty cache of its own.
    """
    cache = work / "hf_datasets_cache"
    if cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True)
    import datasets

    previous = (os.environ.get("HF_DATASETS_CACHE"), datasets.config.HF_DATASETS_CACHE)
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    datasets.config.HF_DATASETS_CACHE = cache
    return previous


def restore_datasets_cache(previous) -> None:
    import datasets

    env, conf = previous
    if env is None:
        os.environ.pop("HF_DATASETS_CACHE", None)
    else:
        os.environ["HF_DATASETS_CACHE"] = env
    datasets.config.HF_DATASETS_CACHE = conf


def run_benchmarks(
    cfg: BenchConfig,
    work: Path,
    corpora_dir: Path | None,
    results_path: Path,
    command: str,
    config_name: str,
    plot_dir: Path | None = None,
) -> dict[str, Any]:
    t0 = time.time()
    work.mkdir(parents=True, exist_ok=True)
    previous_cache = use_private_datasets_cache(work)
    try:
        return _run_benchmarks(cfg, work, corpora_dir, results_path, command, config_name, plot_dir, t0)
    finally:
        restore_datasets_cache(previous_cache)


def _run_benchmarks(
    cfg: BenchConfig,
    work: Path,
    corpora_dir: Path | None,
    results_path: Path,
    command: str,
    config_name: str,
    plot_dir: Path | None,
    t0: float,
) -> dict[str, Any]:
    deadline = Deadline(cfg.time_budget_s, cfg.min_run_s)
    if corpora_dir is not None:
        corpora = {k: corpora_dir / k for k in ("open", "closed")}
        for p in corpora.values():
            if not (p / "README.md").is_file():
                raise FileNotFoundError(
                    f"--corpora {corpora_dir}: expected a compacted corpus at {p} (README.md + data/)"
                )
    else:
        needed = ({"closed"} if 1 in cfg.tables else set()) | (
            {"open"} if set(cfg.tables) - {1} or (1 in cfg.tables and cfg.closed_pretrain) else set()
        )
        corpora = prepare_corpora(cfg, work, only=needed)
    bench = Bench(cfg=cfg, work=work, corpora=corpora, deadline=deadline)
    results: dict[str, Any] = {
        "meta": {
            "config_name": config_name,
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "command": command,
            "config": dataclasses.asdict(cfg),
            "budget": f"{cfg.backbone} ({cfg.init_weights}) at {cfg.image_size} px from {cfg.pack_size} px JPEGs; "
            f"P×K {cfg.identities_per_batch}×{cfg.images_per_identity}; open corpus capped at {cfg.cap_per_identity} "
            f"images/identity at build, {cfg.max_images_per_identity} train / {cfg.max_eval_images_per_identity} eval "
            f"per identity at load; identities kept {cfg.max_identities or 'all'}; precision {cfg.mixed_precision}",
            "wall_time_s": 0.0,
        },
        "tables": {},
        "skipped": [],
    }
    full: dict[str, Any] = {}
    plot_dir = plot_dir or results_path.parent
    plot_dir.mkdir(parents=True, exist_ok=True)
    tag = results_path.stem
    if cfg.parallel_runs > 1 and set(cfg.tables) - {1}:
        specs = open_run_specs(bench)
        try:
            bench.train_parallel(corpora["open"], specs, at_once=cfg.parallel_runs)
            logger.info("open-corpus runs trained, %d at a time: %s", cfg.parallel_runs, sorted(specs))
        except OutOfTime as err:  # the tables then train what time allows, one after another
            logger.warning("open-corpus runs not trained in parallel: %s", err)
    for num in [n for n in TABLE_ORDER if n in cfg.tables]:
        t_table = time.time()
        try:
            if num == 1:
                r = table1(bench)
            elif num == 2:
                r = table2(bench)
            elif num == 3:
                r = table3(bench, full.get("2"))
            elif num == 4:
                r = table4(bench)
            else:
                r = table5(bench)
        except OutOfTime as err:
            logger.warning("table %d not run: %s", num, err)
            results["skipped"].append(f"table {num}: {err}")
            continue
        except (ValueError, RuntimeError, FileNotFoundError) as err:
            # One table's failure (say, too few validation identities to calibrate) must not lose the others.
            logger.exception("table %d failed", num)
            results["skipped"].append(f"table {num}: failed: {type(err).__name__}: {err}")
            continue
        r["wall_time_s"] = time.time() - t_table
        full[str(num)] = r
        results["tables"][str(num)] = {k: v for k, v in r.items() if not k.startswith("_")}
        results["meta"]["wall_time_s"] = time.time() - t0
        results["run_times_s"] = bench.run_times
        results["meta"]["training_runs_wall_s"] = sum(v or 0.0 for v in bench.used_runs.values())
        results["meta"]["training_runs"] = len(bench.used_runs)
        _write(results, results_path)
        logger.info("table %d done in %.0f s", num, r["wall_time_s"])
    results["plots"] = _plots(results, full, plot_dir, tag)
    results["meta"]["wall_time_s"] = time.time() - t0
    _write(results, results_path)
    return results


def _write(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(
        json.dumps(results, indent=2, default=_json_default) + "\n", encoding="utf-8"
    )
    path.with_suffix(".md").write_text(render_markdown(results) + "\n", encoding="utf-8")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=str(REPO / "configs" / "bench_cpu.yaml"), help="BenchConfig YAML")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config fields (YAML values)"
    )
    p.add_argument("--out", default="runs/bench_real", help="work directory (corpora, runs)")
    p.add_argument(
        "--corpora", default=None, help="already compacted corpora (open/, closed/), e.g. a GPU pack"
    )
    p.add_argument(
        "--results", default=None, help="results file stem (.json/.md written; default <out>/results)"
    )
    p.add_argument("--plots", default=None, help="folder for the plots (default: beside --results)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads of the main process (1 is several times faster on a shared 2-core box)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cfg = load_bench_config(args.config, args.set)
    out = Path(args.out)
    results_path = Path(args.results) if args.results else out / "results"
    command = "python benchmarks/reid_real.py " + " ".join(argv if argv is not None else sys.argv[1:])
    res = run_benchmarks(
        cfg,
        out,
        Path(args.corpora) if args.corpora else None,
        results_path,
        command,
        Path(args.config).stem,
        Path(args.plots) if args.plots else None,
    )
    print(render_markdown(res))
    return res


if __name__ == "__main__":
    from animal_reid.fastmalloc import reexec_with_fast_malloc

    # runs trained in this process (closed_parallel_runs / parallel_runs 1) get the allocator that
    # train_accelerate.py and the parallel runs get: jemalloc, else glibc huge pages (BENCHMARKS.md §2c)
    reexec_with_fast_malloc()
    main()
