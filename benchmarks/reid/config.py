"""Configuration of the real-photo benchmarks (benchmarks/reid_real.py): the `BenchConfig` budget, its YAML loader,
the order the tables run in, the published MegaDescriptor figures and the labels derived from a config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# MegaDescriptor (Čermák et al., WACV 2024), top-1 % on the closed-set splits (../shared/data/README.md); humpback:
# HumpbackWhaleID, the full Kaggle training set at 384 px (issue 34; benchmarks/configs/bench_closed224_humpback.yaml)
PUBLISHED_MEGADESCRIPTOR = {
    "MegaDescriptor-T-224": {"lion": 14.8, "nyala": 9.3},
    "MegaDescriptor-S-224": {"lion": 16.1, "nyala": 15.0},
    "MegaDescriptor-B-224": {"lion": 13.5, "nyala": 18.5},
    "MegaDescriptor-L-224": {"lion": 20.6, "nyala": 21.7},
    "MegaDescriptor-L-384": {"lion": 25.2, "nyala": 36.4, "humpback": 77.8},  # humpback: full Kaggle set
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
    # at most this many training images per species (train_accelerate's option, a seeded choice of whole
    # identities); also applied to the counts that size each run's share of the batches
    max_train_images_per_species: int | None = None
    # more train_accelerate options for every run, name -> value (e.g. {augment: strong, dynamic_margins: true}):
    # one arm of an ablation is one config with its own --out (benchmarks/ablate_zeroshot.py --arms)
    train_overrides: dict[str, Any] = field(default_factory=dict)
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


def peer_precision(cfg: BenchConfig) -> str:
    """The peer arm trains in the precision every other arm gets (fp32 unless ``mixed_precision: bf16``)."""
    return "bf16" if cfg.mixed_precision == "bf16" else "fp32"


def floor_label(cfg: BenchConfig) -> str:
    """Name of the no-re-ID-training baseline: the backbone's starting weights alone (GeM-pooled features)."""
    start = "ImageNet" if cfg.init_weights == "imagenet" else f"{cfg.init_weights} (untrained)"
    return f"{start} features, no re-ID training"
