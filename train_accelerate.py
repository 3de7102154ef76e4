#!/usr/bin/env python
"""Train the multispecies re-ID model with Accelerate: corpus in, exported feature extractor + model card out.

One CPU, one GPU or many; the loop is the same (``prepare``, ``accumulate``, ``gather_for_metrics``)::

    python train_accelerate.py configs/train_default.yaml               # the embedded default (CPU, minutes)
    python train_accelerate.py configs/train_default.yaml --epochs 3    # YAML, then command-line overrides
    python train_accelerate.py configs/train_default.yaml --resume      # continue a killed run
    accelerate launch --num_processes 4 train_accelerate.py configs/train_paper_gpu.yaml     # multi-GPU DDP
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 train_accelerate.py ...              # 2-process CPU

The run directory (``output_dir``) receives ``config.yaml`` (the resolved configuration), ``metrics.jsonl``
(one line per epoch: loss, learning rates, images/s, validation metrics), ``loss.png`` / ``val_metrics.png``,
``train.log``, ``checkpoints/checkpoint_<n>`` (``accelerator.save_state`` after every epoch), ``best/epoch_<n>/``
(the weights of the best validation epoch), ``results.json`` and ``export/`` (feature extractor, processor and
README.md model card, ready for ``AutoModel.from_pretrained(dir, trust_remote_code=True)``).
See docs/training.md.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.logging import get_logger
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from animal_reid.metrics import evaluate_reid
from animal_reid.training.augment import ReIDAugment
from animal_reid.training.config import TrainConfig, parse_config, save_config
from animal_reid.training.data import (
    ReIDImageDataset,
    SeededBatches,
    cache_images,
    dataloader_kwargs,
    ensure_corpus,
    load_corpus,
    release_workers,
    split_metadata,
)
from animal_reid.training.ema import WeightEMA
from animal_reid.training.interpolate import (
    choose_alpha,
    interpolate_state,
    load_snapshot,
    save_snapshot,
    snapshot,
)
from animal_reid.training.model_card import render_model_card
from animal_reid.training.plots import plot_history
from animal_reid.training.sampler import PKBatchSampler, RandomBatchSampler
from animal_reid.training.schedule import build_scheduler
from modeling import AnimalReIDConfig, AnimalReIDForMetricLearning, AnimalReIDImageProcessor, AnimalReIDModel

logger = get_logger(__name__)

REPORTED_METRICS = ("top1", "top5", "mAP")


class TrainingState:
    """Progress that is not in the model, optimiser or scheduler; saved with every checkpoint."""

    def __init__(self) -> None:
        self.epochs_done = 0
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, Any]] = []
        self.baseline: dict[str, Any] | None = None  # the starting model on validation and test

    def state_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "epochs_done": self.epochs_done,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done = int(state["epochs_done"])
        self.best_score = state["best_score"]
        self.best_epoch = state["best_epoch"]
        self.history = list(state["history"])
        self.baseline = state.get("baseline")


# --------------------------------------------------------------------------- model


def head_options(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    m = config.model
    return {
        "num_classes": num_classes,
        "subcenters": m.subcenters,
        "scale": m.scale,
        "margin_mode": "dynamic" if m.dynamic_margins else "fixed",
        "margin_rad": m.margin_max,
        "margin_min_rad": m.margin_min,
        "margin_max_rad": m.margin_max,
    }


def build_model(
    config: TrainConfig, num_classes: int
) -> tuple[AnimalReIDForMetricLearning, AnimalReIDImageProcessor]:
    """The training model and its processor: from scratch/ImageNet, or from an exported feature extractor. Its
    ``test_time_flip`` is on only with ``--test_time_flip on`` ('auto' decides after training)."""
    model, processor = _build_model(config, num_classes)
    model.config.test_time_flip = config.train.test_time_flip == "on"
    return model, processor


def _build_model(
    config: TrainConfig, num_classes: int
) -> tuple[AnimalReIDForMetricLearning, AnimalReIDImageProcessor]:
    m = config.model
    head = head_options(config, num_classes)
    if m.init_from:
        fe = AnimalReIDModel.from_pretrained(m.init_from)
        fe_cfg = fe.config.to_dict()
        for key in (
            "head",
            "architectures",
            "auto_map",
            "model_type",
            "transformers_version",
            "_name_or_path",
        ):
            fe_cfg.pop(key, None)
        model = AnimalReIDForMetricLearning(AnimalReIDConfig(**fe_cfg, head=head))
        result = model.load_state_dict(fe.state_dict(), strict=False)
        unexpected = list(result.unexpected_keys)
        not_head = [k for k in result.missing_keys if not k.startswith("head.")]
        if unexpected or not_head:
            raise ValueError(
                f"{m.init_from}: expected a feature extractor whose weights cover everything but the head; "
                f"missing {not_head[:5]}, unexpected {unexpected[:5]}"
            )
        try:
            processor = AnimalReIDImageProcessor.from_pretrained(m.init_from)
        except OSError:
            processor = AnimalReIDImageProcessor.from_model_config(model.config)
        ignored = {
            k: getattr(m, k)
            for k, v in (("backbone", fe.config.backbone), ("embedding_dim", fe.config.embedding_dim))
            if getattr(m, k) != v
        }
        if [m.image_size, m.image_size] != list(fe.config.image_size):
            ignored["image_size"] = m.image_size
        if ignored:
            logger.warning(
                "fine-tuning keeps the architecture and input size of %s; ignoring %s",
                m.init_from,
                ignored,
                main_process_only=True,
            )
        del fe
        return model, processor

    from animal_reid.weights import input_normalization

    mean, std = input_normalization(m.backbone, m.init_weights, m.normalization)
    model_cfg = AnimalReIDConfig(
        backbone=m.backbone,
        embedding_dim=m.embedding_dim,
        image_size=m.image_size,
        pooling=m.pooling,
        neck_bn=m.neck_bn,
        image_mean=mean,
        image_std=std,
        head=head,
    )
    model = AnimalReIDForMetricLearning(model_cfg)
    if m.init_weights == "imagenet":
        from animal_reid.weights import load_imagenet_backbone

        load_imagenet_backbone(model)
    elif m.init_weights != "none":
        from animal_reid.weights import load_backbone_file

        load_backbone_file(model, m.init_weights)
    return model, AnimalReIDImageProcessor.from_model_config(model.config, jpeg_draft=m.jpeg_draft)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the default: what won on validation, BENCHMARKS.md) or AdamW, over `parameter_groups`."""
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(parameter_groups(model, config), momentum=t.momentum)
    return torch.optim.AdamW(parameter_groups(model, config))


def parameter_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Groups: backbone vs the rest (pooling, neck, head), each split into decayed / not decayed."""
    t = config.train
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        part = "backbone" if name.startswith("backbone.") else "head"
        decay = p.ndim >= 2  # matrices and kernels; not biases, norms, GeM p or margins
        groups.setdefault((part, decay), []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "lr": t.lr_backbone if part == "backbone" else t.lr_head,
                "weight_decay": t.weight_decay if decay else 0.0,
                "name": f"{part}{'' if decay else '_no_decay'}",
            }
        )
    return out


def build_augment(tc, processor) -> ReIDAugment | None:
    if tc.augment == "none":
        return None
    make = ReIDAugment.light if tc.augment == "light" else ReIDAugment
    return make(processor.image_mean, processor.image_std, hflip=tc.hflip)


def build_sampler(tc, train_meta: dict[str, list], label_of: dict[str, int], accelerator: Accelerator):
    """Random batches of P*K images (default) or identity-balanced P x K batches, sharded over processes."""
    shard = {"num_replicas": accelerator.num_processes, "rank": accelerator.process_index}
    if tc.sampler == "random":
        return RandomBatchSampler(
            len(train_meta["identity"]), tc.batch_size, tc.seed, tc.batches_per_epoch, **shard
        )
    return PKBatchSampler(
        [label_of[i] for i in train_meta["identity"]],
        tc.identities_per_batch,
        tc.images_per_identity,
        seed=tc.seed,
        batches_per_epoch=tc.batches_per_epoch,
        species=train_meta["species"],
        one_species_per_batch=tc.one_species_per_batch,
        **shard,
    )


def set_backbone_frozen(model: torch.nn.Module, frozen: bool) -> None:
    """Head-only warm-up: no gradient into the backbone and its BatchNorm layers in eval mode.

    Eval mode keeps the running statistics of the pretrained backbone (a train-mode BatchNorm updates them
    on every forward pass even when its weights get no gradient). Call after ``model.train()``.
    """
    backbone = model.backbone
    for p in backbone.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        backbone.eval()


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def embed(accelerator: Accelerator, model, processor, loader, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and dataset row indices of a prepared loader, gathered from every process.

    The loader yields uint8 images (`ReIDImageDataset`); ``processor.normalize_uint8`` finishes them on the
    device, exactly as ``processor.preprocess_one`` would have.
    """
    model.eval()
    embs, idxs = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
        pixel_values = processor.normalize_uint8(batch["pixel_values"].to(accelerator.device))
        with accelerator.autocast():
            out = model(pixel_values=pixel_values)
        emb, idx = accelerator.gather_for_metrics((out.embeddings.float().contiguous(), batch["index"]))
        embs.append(emb.cpu())
        idxs.append(idx.cpu())
    return torch.cat(embs).numpy(), torch.cat(idxs).numpy()


def evaluate(
    accelerator: Accelerator,
    model,
    processor,
    loader,
    meta: dict[str, list],
    desc: str,
    gallery: tuple[np.ndarray, dict[str, list]] | None = None,
) -> dict[str, Any]:
    """Re-ID metrics of one split (per species and averaged), with ``animal_reid.metrics.evaluate_reid``."""
    emb, idx = embed(accelerator, model, processor, loader, desc)
    order = np.argsort(idx, kind="stable")
    emb, idx = emb[order], idx[order]
    labels = [meta["identity"][i] for i in idx]
    species = [meta["species"][i] for i in idx]
    encounters = [meta["encounter"][i] for i in idx] if "encounter" in meta else None
    kwargs: dict[str, Any] = {}
    if gallery is not None:
        g_emb, g_meta = gallery
        kwargs = {
            "gallery_embeddings": g_emb,
            "gallery_labels": g_meta["identity"],
            "gallery_encounters": g_meta.get("encounter"),
            "gallery_species": g_meta["species"],
        }
    return evaluate_reid(emb, labels, encounters, species, topk=(1, 5, 10), **kwargs)


class Evaluator:
    """Validation and test scores of the model under the run's protocol, and the train split's embeddings.

    ``leave_one_out``: every evaluation image queries the others of its split. ``query_gallery``: validation
    images query the train images; test images query train + validation (closed set, MegaDescriptor's).
    ``refit`` (``train_on_validation``): the train split holds the validation images, so validation is not
    scored (an empty result) and test queries the train split alone, the same gallery without duplicates.
    """

    def __init__(
        self,
        accelerator,
        processor,
        loaders: dict[str, DataLoader],
        metas: dict[str, dict],
        protocol,
        refit: bool = False,
    ):
        self.accelerator, self.processor = accelerator, processor
        self.loaders, self.metas, self.protocol, self.refit = loaders, metas, protocol, refit

    def embeddings(self, model, split: str) -> tuple[np.ndarray, dict[str, list]]:
        """``(embeddings, metadata)`` of a split in row order (un-augmented, eval mode)."""
        emb, idx = embed(self.accelerator, model, self.processor, self.loaders[split], split)
        order = np.argsort(idx, kind="stable")
        return emb[order], {k: [v[i] for i in idx[order]] for k, v in self.metas[split].items()}

    def validation(self, model, train: tuple | None = None) -> dict[str, Any]:
        if self.refit:
            return {}
        gallery = None
        if self.protocol == "query_gallery":
            gallery = train or self.embeddings(model, "train")
        return self._score(model, "validation", gallery)

    def test(self, model, train: tuple | None = None) -> dict[str, Any]:
        gallery = None
        if self.protocol == "query_gallery":
            gallery = train or self.embeddings(model, "train")
            if not self.refit:  # a refit's train split already holds the validation images
                (g_emb, g_meta), (v_emb, v_meta) = gallery, self.embeddings(model, "validation")
                gallery = (np.concatenate([g_emb, v_emb]), {k: g_meta[k] + v_meta[k] for k in g_meta})
        return self._score(model, "test", gallery)

    def _score(self, model, split: str, gallery) -> dict[str, Any]:
        return evaluate(
            self.accelerator, model, self.processor, self.loaders[split], self.metas[split], split, gallery
        )


@torch.no_grad()
def calibrate_neck(accelerator, model, processor, loader) -> None:
    """Set the BNNeck's running statistics to the train images' (one pass, backbone in eval mode).

    Without it the neck starts as the identity in eval mode but standardises per batch in train mode, so the
    class centers of ``head_init='mean'`` would sit in another space than the training embeddings.
    """
    neck = accelerator.unwrap_model(model).neck_bn
    model.eval()
    neck.reset_running_stats()
    neck.momentum, saved = None, neck.momentum  # cumulative average over the pass
    neck.train()
    for batch in loader:
        with accelerator.autocast():
            model(pixel_values=processor.normalize_uint8(batch["pixel_values"].to(accelerator.device)))
    neck.momentum = saved
    model.eval()


def class_centers(emb: np.ndarray, identities: list[str], label_of: dict[str, int], num_classes: int):
    """``[C, D]`` sum (so the direction of the mean) of each training class's embeddings; zero rows for none."""
    labels = torch.tensor([label_of[i] for i in identities])
    sums = torch.zeros(num_classes, emb.shape[1]).index_add_(0, labels, torch.from_numpy(emb).float())
    return sums


def init_head(model, mode: str, centers: torch.Tensor | None, seed: int) -> None:
    """Class weights of the ArcFace head: class means of the starting embeddings, N(0, 0.01) or Xavier."""
    head = model.head
    if mode == "xavier":
        torch.nn.init.xavier_uniform_(head.weight)
        return
    # its own generator: the draws do not depend on how many loaders ran before (image cache or not)
    noise = torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed))
    head.weight.data.copy_(noise * 0.01)
    if mode == "mean":
        head.set_class_centers(centers, row_norm=0.01 * head.in_features**0.5, seed=seed)


def resolve_protocol(val_identities: list[str], label_of: dict[str, int]) -> str:
    """``query_gallery`` for a closed-set split (every validation identity is trained on), else ``leave_one_out``."""
    closed = bool(val_identities) and all(i in label_of for i in val_identities)
    return "query_gallery" if closed else "leave_one_out"


def start_model(config, accelerator, model, processor, evaluator, corpus, calibrate: bool) -> dict[str, Any]:
    """Before the first step: calibrate the BNNeck, score the starting model, initialise the ArcFace head.

    Returns the baseline (``{"val": ..., "test": ...}``, the keys of ``summary_metrics``) that every trained
    epoch is compared with. Scoring test here is for the report only; nothing is chosen on it.
    """
    if calibrate:
        calibrate_neck(accelerator, model, processor, evaluator.loaders["train"])
    train = evaluator.embeddings(model, "train") if "train" in evaluator.loaders else None
    baseline = {
        "val": summary_metrics(evaluator.validation(model, train)),
        "test": summary_metrics(evaluator.test(model, train)),
    }
    centers = None
    if config.model.head_init == "mean":
        centers = class_centers(train[0], train[1]["identity"], corpus.label_of, corpus.num_classes)
    init_head(accelerator.unwrap_model(model), config.model.head_init, centers, config.train.seed)
    logger.info(
        "starting point (no training yet): val top-1 %s mAP %s; test top-1 %s mAP %s; head init %r",
        _fmt(baseline["val"]["top1"]),
        _fmt(baseline["val"]["mAP"]),
        _fmt(baseline["test"]["top1"]),
        _fmt(baseline["test"]["mAP"]),
        config.model.head_init,
        main_process_only=True,
    )
    return baseline


def keep_start_weights(
    config, accelerator, unwrapped, path: Path, fresh: bool
) -> dict[str, torch.Tensor] | None:
    """The starting weights for ``interpolate_alphas``: taken before the first step and saved beside the
    checkpoints, or read back when a run resumes (None if a resumed run never saved them)."""
    if not config.train.interpolate_alphas:
        return None
    if not fresh:
        return load_snapshot(path) if path.is_file() else None
    weights = snapshot(unwrapped)
    if accelerator.is_main_process:
        save_snapshot(weights, path)
    return weights


def interpolate_best(config, accelerator, model, evaluator, start, val_best) -> dict[str, Any] | None:
    """WiSE-FT: score ``(1 - a) * start + a * trained`` on validation for each ``a``; load the best.

    The model holds the trained (best-epoch) weights on entry and the chosen ones on return. Returns
    ``{"chosen_alpha", "val": {alpha: validation metrics}}`` or None when not asked for or not possible.
    """
    alphas, metric = config.train.interpolate_alphas, config.train.metric_for_best
    if not alphas:
        return None
    if start is None or val_best is None:
        logger.warning(
            "interpolate_alphas: no starting weights or no scored epoch; exporting the trained model"
        )
        return None
    unwrapped = accelerator.unwrap_model(model)
    trained = snapshot(unwrapped)

    def score(alpha: float) -> dict[str, Any]:
        unwrapped.load_state_dict(interpolate_state(start, trained, alpha))
        val = summary_metrics(evaluator.validation(model))
        logger.info("interpolation a=%g: val %s %s", alpha, metric, _fmt(val[metric]), main_process_only=True)
        return val

    chosen, scored = choose_alpha(score, alphas, val_best, metric)
    unwrapped.load_state_dict(interpolate_state(start, trained, chosen))
    logger.info(
        "interpolation: a=%g chosen on validation (%s %s; trained a=1: %s)",
        chosen,
        metric,
        _fmt(scored[f"{chosen:g}"][metric]),
        _fmt(val_best[metric]),
        main_process_only=True,
    )
    return {"chosen_alpha": chosen, "val": scored}


def choose_test_time_flip(config, accelerator, model, evaluator, val_best) -> dict[str, Any] | None:
    """``--test_time_flip auto``: score validation with mirror-image averaging and keep it if it beats the chosen
    weights' validation (the metric for the best epoch, then mAP). Returns the choice and both scores, or None."""
    if config.train.test_time_flip != "auto":
        return None
    if val_best is None:
        logger.warning("test_time_flip=auto: no scored validation; exporting without it")
        return None
    metric, cfg = config.train.metric_for_best, accelerator.unwrap_model(model).config
    cfg.test_time_flip = True
    val_flip = summary_metrics(evaluator.validation(model))
    rank = lambda m: (m[metric] or 0.0, m["mAP"] or 0.0)  # noqa: E731
    cfg.test_time_flip = rank(val_flip) > rank(val_best)
    logger.info(
        "test-time flip %s on validation (%s %s with it, %s without)",
        "kept" if cfg.test_time_flip else "not kept",
        metric,
        _fmt(val_flip[metric]),
        _fmt(val_best[metric]),
        main_process_only=True,
    )
    return {"chosen": cfg.test_time_flip, "val_flip": val_flip, "val_plain": val_best}


def config_summary(config: TrainConfig) -> dict[str, Any]:
    """The recipe choices a reader of results.json needs to tell runs apart."""
    m, t = config.model, config.train
    keys_m = (
        "backbone",
        "image_size",
        "embedding_dim",
        "pooling",
        "neck_bn",
        "head_init",
        "subcenters",
        "scale",
    )
    keys_m += ("margin_min", "margin_max", "dynamic_margins")
    keys_t = (
        "optimizer",
        "lr_backbone",
        "lr_head",
        "sampler",
        "augment",
        "epochs",
        "mixed_precision",
        "ema_decay",
        "test_time_flip",
    )
    return {k: getattr(m, k) for k in keys_m} | {k: getattr(t, k) for k in keys_t}


def beats_baseline(baseline: dict[str, Any] | None, val_best: dict[str, Any] | None, key: str) -> bool | None:
    """Whether the chosen epoch's validation score beats the starting model's (None when either is missing)."""
    start = ((baseline or {}).get("val") or {}).get(key)
    best = (val_best or {}).get(key)
    if start is None or best is None:
        return None
    return bool(best > start)


def log_against_start(results: dict[str, Any]) -> None:
    """Per species, trained vs start on validation and test; a loud warning when training did not help."""
    base = results.get("baseline") or {}
    for split, trained in (("val", results.get("val_best")), ("test", results.get("test"))):
        start = base.get(split) or {}
        for sp, now in sorted(((trained or {}).get("per_species") or {}).items()):
            was = (start.get("per_species") or {}).get(sp, {})
            logger.info(
                "%s %s: top-1 %s -> %s, mAP %s -> %s (start -> trained, %s queries)",
                split,
                sp,
                _fmt(was.get("top1")),
                _fmt(now.get("top1")),
                _fmt(was.get("mAP")),
                _fmt(now.get("mAP")),
                now.get("n_queries"),
                main_process_only=True,
            )
    if results.get("beats_baseline") is False:
        logger.warning(
            "!!! TRAINING DID NOT BEAT ITS STARTING POINT: the chosen epoch's validation %s is not above the "
            "untrained model's (%s vs %s). The export is no better than its starting weights. !!!",
            results.get("metric_for_best"),
            _fmt((results.get("val_best") or {}).get(results.get("metric_for_best"))),
            _fmt((base.get("val") or {}).get(results.get("metric_for_best"))),
            main_process_only=True,
        )


def summary_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The part of an ``evaluate_reid`` result kept per epoch: averages and per-species top-1/top-5/mAP."""
    out = {k: result.get(k) for k in REPORTED_METRICS}
    out["n_queries"] = result.get("n_queries")
    out["per_species"] = {
        sp: {k: v.get(k) for k in (*REPORTED_METRICS, "n_queries")}
        for sp, v in result.get("per_species", {}).items()
    }
    return out


# --------------------------------------------------------------------------- run


def _reset_accelerate_singletons() -> None:
    """Allow `main` to run again in the same single process (tests do) with other precision settings."""
    if AcceleratorState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
        GradientState._reset_state()


def _last_checkpoint_index(ckpt_dir: Path) -> int | None:
    found = [
        int(m.group(1))
        for p in ckpt_dir.glob("checkpoint_*")
        if (m := re.fullmatch(r"checkpoint_(\d+)", p.name))
    ]
    return max(found) if found else None


def _setup_logging(accelerator: Accelerator, run_dir: Path) -> tuple[logging.Handler | None, int]:
    """INFO logs to stderr and (main process) to ``run_dir/train.log``; returns what `_restore_logging` undoes."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    root = logging.getLogger()
    previous_level = root.level
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "httpcore", "urllib3", "PIL", "matplotlib", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handler = None
    if accelerator.is_main_process:
        handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    return handler, previous_level


def _restore_logging(handler: logging.Handler | None, previous_level: int) -> None:
    root = logging.getLogger()
    root.setLevel(previous_level)
    if handler is not None:
        root.removeHandler(handler)
        handler.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (``[config.yaml] [--flag value ...]``), train, evaluate, export; return results.json's dict."""
    return run(parse_config(argv))


def run(config: TrainConfig) -> dict[str, Any]:
    t_start = time.time()
    tc = config.train
    run_dir = Path(tc.output_dir)
    ckpt_dir = run_dir / "checkpoints"

    _reset_accelerate_singletons()
    accelerator = Accelerator(
        mixed_precision=tc.mixed_precision,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        project_config=ProjectConfiguration(
            project_dir=str(run_dir), automatic_checkpoint_naming=True, total_limit=tc.save_total_limit
        ),
        # A head-only warm-up leaves the backbone without gradients: DDP must look for unused parameters.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=tc.freeze_backbone_epochs > 0)],
    )
    resuming = tc.resume and _last_checkpoint_index(ckpt_dir) is not None
    if not tc.resume and _last_checkpoint_index(ckpt_dir) is not None:
        raise FileExistsError(
            f"{run_dir} already holds checkpoints; pass --resume to continue that run or choose another output_dir"
        )
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    handler, previous_level = _setup_logging(accelerator, run_dir)
    loaders: list[DataLoader] = []  # filled by _run; their persistent workers are stopped on the way out
    threads = torch.get_num_threads()  # cpu_threads changes it process-wide: put the caller's back afterwards
    try:
        return _run(config, accelerator, run_dir, ckpt_dir, resuming, t_start, loaders)
    finally:
        torch.set_num_threads(threads)
        release_workers(*loaders)
        accelerator.end_training()
        _restore_logging(handler, previous_level)


class EvalSets:
    """Un-augmented datasets and loaders of the corpus splits, for scoring; ``train`` shares the training cache."""

    def __init__(self, config: TrainConfig, corpus, processor, train_ds: ReIDImageDataset, pin: bool) -> None:
        self.config, self.corpus, self.processor, self.train_ds, self.pin = (
            config,
            corpus,
            processor,
            train_ds,
            pin,
        )
        self.sets: dict[str, ReIDImageDataset] = {}

    def dataset(self, split: str) -> ReIDImageDataset:
        if split not in self.sets:
            ds = ReIDImageDataset(
                self.corpus.splits[split],
                self.processor,
                self.corpus.label_of,
                None,
                self.config.data.use_boxes,
            )
            if split == "train" and self.train_ds.cache is not None:
                ds.cache = self.train_ds.cache  # same rows, same preprocessing
            self.sets[split] = ds
        return self.sets[split]

    def loader(self, split: str) -> DataLoader:
        # Evaluation workers live only while an evaluation runs, and none are started when the images are cached
        # (a batch is then an index into shared memory). Persistent ones sat idle between evaluations, each
        # holding its copy of the trainer's heap (about 3 GB at 224 px): two 224-px runs at once ran out of 24 GB.
        ds = self.dataset(split)
        workers = 0 if ds.cache is not None else self.config.data.num_workers
        return DataLoader(
            ds,
            batch_size=self.config.train.eval_batch_size,
            shuffle=False,
            **dataloader_kwargs(workers, pin_memory=self.pin, persistent_workers=False),
        )


@dataclass
class RunParts:
    """Everything one training run builds before its first step, shared by the steps of `_run`."""

    config: TrainConfig
    accelerator: Accelerator
    run_dir: Path
    corpus: Any
    model: Any  # as prepared by accelerate (DDP-wrapped with several processes)
    processor: AnimalReIDImageProcessor
    optimizer: torch.optim.Optimizer
    scheduler: Any
    evaluator: Evaluator
    train_loader: DataLoader
    updates_per_epoch: int
    calibrate: bool
    state: TrainingState = field(default_factory=TrainingState)
    ema: WeightEMA | None = None
    start_weights: dict[str, torch.Tensor] | None = None

    @property
    def unwrapped(self) -> AnimalReIDForMetricLearning:
        return self.accelerator.unwrap_model(self.model)

    @property
    def batches_this_epoch(self) -> int:
        return self.updates_per_epoch * self.config.train.gradient_accumulation_steps

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.config.train.channels_last else torch.contiguous_format

    @contextmanager
    def scored_weights(self) -> Iterator[None]:
        """The weights that are scored, kept and exported: the moving average with ``ema_decay``, else the live ones."""
        if self.ema is None:
            yield
        else:
            with self.ema.applied(self.unwrapped):
                yield


def _run(
    config: TrainConfig,
    accelerator: Accelerator,
    run_dir: Path,
    ckpt_dir: Path,
    resuming: bool,
    t_start: float,
    loaders: list[DataLoader],
) -> dict[str, Any]:
    tc = config.train
    logger.info("%s", accelerator.state, main_process_only=True)
    if accelerator.is_main_process:
        save_config(config, run_dir / "config.yaml")
    if tc.cpu_threads is not None and accelerator.device.type == "cpu":
        torch.set_num_threads(tc.cpu_threads)
    set_seed(tc.seed)
    corpus = _load_corpus(config, accelerator)
    model, processor = _training_model(config, corpus)
    run = _prepare_run(config, accelerator, run_dir, corpus, model, processor, loaders)
    _resume_or_start(run, ckpt_dir, resuming)
    for epoch in range(run.state.epochs_done, tc.epochs):
        fit = _fit_epoch(run, epoch)
        _close_epoch(run, epoch, fit)
    accelerator.wait_for_everyone()
    _load_best(run)
    results = _final_results(run)
    if accelerator.is_main_process:
        _export(run, results, t_start)
    accelerator.wait_for_everyone()
    return results


def _load_corpus(config: TrainConfig, accelerator: Accelerator):
    """Build the corpus if it is missing (main process), then load it in every process."""
    if accelerator.is_main_process:
        ensure_corpus(config.data, is_main_process=True)
    accelerator.wait_for_everyone()
    with accelerator.main_process_first():
        return load_corpus(config.data, seed=config.train.seed)


def _training_model(
    config: TrainConfig, corpus
) -> tuple[AnimalReIDForMetricLearning, AnimalReIDImageProcessor]:
    model, processor = build_model(config, corpus.num_classes)
    margins = model.set_margins_from_counts(corpus.train_counts)
    logger.info(
        "%d identities; margins %.3f-%.3f rad (%s); %.1fM parameters",
        corpus.num_classes,
        float(margins.min()),
        float(margins.max()),
        model.config.head["margin_mode"],
        sum(p.numel() for p in model.parameters()) / 1e6,
        main_process_only=True,
    )
    return model, processor


def _train_loader(
    config: TrainConfig, accelerator: Accelerator, corpus, processor, train_meta: dict[str, list]
):
    """``(dataset, sampler, loader)`` of the augmented training images."""
    tc, dc = config.train, config.data
    train_ds = ReIDImageDataset(
        corpus.splits["train"], processor, corpus.label_of, build_augment(tc, processor), dc.use_boxes
    )
    sampler = build_sampler(tc, train_meta, corpus.label_of, accelerator)
    # The sampler shards whole P x K batches across processes itself, so this loader is NOT passed to
    # accelerator.prepare (which would shard it again); batches are moved to the device in `_fit_epoch`. Workers
    # decode and augment into uint8 batches and stay alive across epochs (dataloader_kwargs); the sampler
    # runs here, in the main process, so set_epoch reaches it.
    loader = DataLoader(
        train_ds,
        batch_sampler=SeededBatches(sampler, tc.seed),
        # 4 uint8 batches ready per worker: half the shared memory of the former 2 float32 ones.
        **dataloader_kwargs(
            dc.num_workers, seed=tc.seed, pin_memory=accelerator.device.type == "cuda", prefetch_factor=4
        ),
    )
    return train_ds, sampler, loader


def _cache_decoded(config: TrainConfig, datasets: list[ReIDImageDataset]) -> None:
    """``cache_images``: decode every image once into shared memory, when asked and when it fits."""
    dc = config.data
    if not dc.cache_images:
        return
    report = cache_images(datasets, dc.num_workers, dc.cache_max_gb * 2**30)
    if report["cached"]:
        logger.info(
            "image cache: %d images, %.2f GiB, decoded in %.1f s",
            report["images"],
            report["bytes"] / 2**30,
            report["seconds"],
            main_process_only=True,
        )
    else:
        logger.warning("image cache skipped: %s", report["reason"], main_process_only=True)


def _schedule(config: TrainConfig, accelerator: Accelerator, optimizer, sampler) -> tuple[Any, int]:
    """``(scheduler, optimiser updates per epoch)``, the warm-up + cosine curve counted in optimiser steps."""
    tc = config.train
    updates_per_epoch = len(sampler) // tc.gradient_accumulation_steps
    if updates_per_epoch < 1:
        raise ValueError(
            f"{len(sampler)} batches per process per epoch is fewer than gradient_accumulation_steps="
            f"{tc.gradient_accumulation_steps}; raise batches_per_epoch"
        )
    # A prepared scheduler steps once per process at each optimiser step (accelerate's convention when
    # batches are not split), so the curve is laid out over updates of all processes together.
    sched_steps_per_epoch = updates_per_epoch * accelerator.num_processes
    total_steps = sched_steps_per_epoch * tc.epochs
    warmup_steps = min(total_steps, round(tc.warmup_epochs * sched_steps_per_epoch))
    return build_scheduler(optimizer, warmup_steps, total_steps, tc.min_lr_ratio), updates_per_epoch


def _prepare_run(config, accelerator, run_dir, corpus, model, processor, loaders) -> RunParts:
    """Data, optimiser, schedule and evaluator of a run, prepared by accelerate; loaders are added to ``loaders``."""
    tc = config.train
    metas = {s: split_metadata(corpus.splits[s]) for s in ("train", "validation", "test")}
    train_ds, sampler, train_loader = _train_loader(config, accelerator, corpus, processor, metas["train"])
    loaders.append(train_loader)
    sets = EvalSets(config, corpus, processor, train_ds, pin=accelerator.device.type == "cuda")
    # a refit trains on the validation images, so the train cache already holds them
    scored_splits = ("test",) if corpus.refit else ("validation", "test")
    _cache_decoded(config, [train_ds] + [sets.dataset(s) for s in scored_splits if s in corpus.splits])
    if tc.eval_protocol == "auto":  # a refit has trained on validation: test tells closed from open then
        held_out = metas["test" if corpus.refit else "validation"]["identity"]
        tc.eval_protocol = resolve_protocol(held_out, corpus.label_of)
        logger.info("eval_protocol auto: %s", tc.eval_protocol, main_process_only=True)

    optimizer = build_optimizer(model, config)
    scheduler, updates_per_epoch = _schedule(config, accelerator, optimizer, sampler)
    calibrate = model.neck_bn is not None and not config.model.init_from  # see calibrate_neck
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model, optimizer, scheduler, val_loader, test_loader = accelerator.prepare(
        model, optimizer, scheduler, sets.loader("validation"), sets.loader("test")
    )
    eval_loaders = {"validation": val_loader, "test": test_loader}
    if tc.eval_protocol == "query_gallery" or config.model.head_init == "mean" or calibrate:
        eval_loaders["train"] = accelerator.prepare(sets.loader("train"))
    loaders += list(eval_loaders.values())
    evaluator = Evaluator(accelerator, processor, eval_loaders, metas, tc.eval_protocol, corpus.refit)
    ema = WeightEMA(tc.ema_decay) if tc.ema_decay > 0 else None
    return RunParts(
        config, accelerator, run_dir, corpus, model, processor, optimizer, scheduler, evaluator, train_loader,
        updates_per_epoch, calibrate, ema=ema,
    )  # fmt: skip


def _resume_or_start(run: RunParts, ckpt_dir: Path, resuming: bool) -> None:
    """Load the last checkpoint, or score the starting model and initialise the head; keep the start weights."""
    accelerator, tc = run.accelerator, run.config.train
    accelerator.register_for_checkpointing(run.state)
    if run.ema is not None:
        accelerator.register_for_checkpointing(run.ema)
    if resuming:
        accelerator.load_state()  # the latest checkpoints/checkpoint_<n>
        last = _last_checkpoint_index(ckpt_dir)
        # accelerate names the next save checkpoint_<iteration>; it starts at 0 in a new process (HF_NOTES).
        accelerator.project_configuration.iteration = last + 1
        logger.info(
            "resumed from checkpoint_%d after epoch %d", last, run.state.epochs_done, main_process_only=True
        )
    elif tc.resume:
        logger.info(
            "--resume given but %s holds no checkpoint: starting a new run", ckpt_dir, main_process_only=True
        )
    if accelerator.is_main_process:
        _write_history(run.run_dir, run.state.history)
    fresh = run.state.baseline is None
    if fresh:
        run.state.baseline = start_model(
            run.config, accelerator, run.model, run.processor, run.evaluator, run.corpus, run.calibrate
        )
    start_file = run.run_dir / "start" / "model.safetensors"
    run.start_weights = keep_start_weights(run.config, accelerator, run.unwrapped, start_file, fresh)
    logger.info(
        "training %d epochs x %d batches/process (%d processes, P=%d x K=%d, accumulation %d): %d optimiser steps%s",
        tc.epochs,
        run.batches_this_epoch,
        accelerator.num_processes,
        tc.identities_per_batch,
        tc.images_per_identity,
        tc.gradient_accumulation_steps,
        run.updates_per_epoch * tc.epochs,
        f"; weight EMA, decay {tc.ema_decay:g}" if run.ema is not None else "",
        main_process_only=True,
    )


def _fit_epoch(run: RunParts, epoch: int) -> dict[str, Any]:
    """One pass of optimiser steps; returns the epoch's mean loss, images/s, time and whether it was head-only."""
    accelerator, tc = run.accelerator, run.config.train
    # Every epoch is a function of (seed, epoch): the batches, the augmentations and the torch RNG,
    # so a run resumed at an epoch boundary continues exactly as an uninterrupted one.
    set_seed(tc.seed + epoch, device_specific=True)
    run.train_loader.batch_sampler.set_epoch(epoch)
    run.model.train()
    frozen = epoch < tc.freeze_backbone_epochs
    set_backbone_frozen(run.unwrapped, frozen)
    if frozen:
        logger.info(
            "epoch %d: head-only warm-up (backbone frozen, BatchNorm statistics kept)",
            epoch + 1,
            main_process_only=True,
        )
    t0 = time.time()
    losses, n_images = _steps(run, epoch)
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize(accelerator.device)  # the epoch's queued GPU work belongs to its time
    train_time = time.time() - t0
    # Mean loss and image count over all processes.
    loss_sum = torch.stack(losses).double().sum() if losses else torch.zeros((), dtype=torch.float64)
    counts = [loss_sum.to(accelerator.device)]
    counts += [
        torch.tensor(float(n), dtype=torch.float64, device=accelerator.device)
        for n in (len(losses), n_images)
    ]
    totals = accelerator.reduce(torch.stack(counts), reduction="sum")
    return {
        "train_loss": float(totals[0] / totals[1]),
        "images_per_s": float(totals[2]) / train_time,
        "train_time_s": train_time,
        "backbone_frozen": frozen,
    }


def _steps(run: RunParts, epoch: int) -> tuple[list[torch.Tensor], int]:
    """The epoch's batches: forward, backward, optimiser and EMA steps; the detached losses and the image count.

    Detached losses stay on the device: reading one back every step would make the host wait for the GPU each
    step, so the next batch's copy and kernel launches could not overlap the current step. They are read back
    at logging steps and at the end of the epoch.
    """
    accelerator, tc, model = run.accelerator, run.config.train, run.model
    losses: list[torch.Tensor] = []
    n_images = 0
    total = run.batches_this_epoch
    bar = tqdm(
        total=total,
        desc=f"epoch {epoch + 1}/{tc.epochs}",
        disable=not accelerator.is_local_main_process,
        leave=False,
    )
    for step, batch in enumerate(run.train_loader):
        if step >= total:
            break
        # uint8 from the workers (pinned on CUDA), normalised on the device.
        pixel_values = run.processor.normalize_uint8(
            batch["pixel_values"].to(accelerator.device, non_blocking=True)
        ).contiguous(memory_format=run.memory_format)
        labels = batch["labels"].to(accelerator.device, non_blocking=True)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss = model(pixel_values=pixel_values, labels=labels).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and tc.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
        if run.ema is not None and accelerator.sync_gradients:
            run.ema.update(run.unwrapped)
        losses.append(loss.detach().float())
        n_images += pixel_values.shape[0]
        bar.update(1)
        if accelerator.sync_gradients and (step + 1) // tc.gradient_accumulation_steps % tc.log_every == 0:
            recent = float(torch.stack(losses[-tc.log_every * tc.gradient_accumulation_steps :]).mean())
            bar.set_postfix(loss=f"{recent:.3f}")
            lr = run.scheduler.get_last_lr()[0]
            logger.info(
                "epoch %d step %d/%d loss %.4f lr %.2e",
                epoch + 1,
                step + 1,
                total,
                recent,
                lr,
                main_process_only=True,
            )
    bar.close()
    return losses, n_images


def _close_epoch(run: RunParts, epoch: int, fit: dict[str, Any]) -> None:
    """Score validation (on the epochs due), keep the best weights, log, checkpoint and write the history."""
    accelerator, tc, state = run.accelerator, run.config.train, run.state
    t_eval = time.time()
    scored = not run.corpus.refit and ((epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs)
    val, improved = summary_metrics({}), False
    if scored:  # the moving average is swapped in only to be scored and kept
        with run.scored_weights():
            val = summary_metrics(run.evaluator.validation(run.model))
            score = val[tc.metric_for_best]
            improved = score is not None and (state.best_score is None or score > state.best_score)
            if improved:
                state.best_score, state.best_epoch = float(score), epoch + 1
                # One folder per best epoch, pruned only after the checkpoint that names it is saved: a run killed
                # in between resumes with a state whose best epoch still has its weights on disk.
                accelerator.save_model(run.model, _best_dir(run.run_dir, epoch + 1))
    record = {
        "epoch": epoch + 1,
        "step": (epoch + 1) * run.updates_per_epoch,
        "train_loss": fit["train_loss"],
    }
    record |= {
        "lr_backbone": _group_lr(run.optimizer, "backbone"),
        "lr_head": _group_lr(run.optimizer, "head"),
    }
    record |= {k: fit[k] for k in ("images_per_s", "train_time_s")}
    record |= {"eval_time_s": time.time() - t_eval, "backbone_frozen": fit["backbone_frozen"]}
    record["val"] = val
    record["best_epoch"] = state.best_epoch
    state.history.append(record)
    state.epochs_done = epoch + 1
    logger.info(
        "epoch %d: loss %.4f, %.1f images/s, val top-1 %s top-5 %s mAP %s%s",
        epoch + 1,
        record["train_loss"],
        record["images_per_s"],
        _fmt(record["val"]["top1"]),
        _fmt(record["val"]["top5"]),
        _fmt(record["val"]["mAP"]),
        " (best)" if improved else "",
        main_process_only=True,
    )
    accelerator.save_state()
    if accelerator.is_main_process:
        _prune_best(run.run_dir, state.best_epoch)
        _write_history(run.run_dir, state.history)
        plot_history(state.history, run.run_dir)


def _load_best(run: RunParts) -> None:
    """Put the best validation epoch's weights into the model (or, with none scored, the last epoch's)."""
    state = run.state
    if state.best_epoch is None:
        if run.corpus.refit:
            logger.info("refit (train_on_validation): exporting the last epoch", main_process_only=True)
        else:
            logger.warning(
                "no validation query had a true match in any epoch (with a closed-set split, the matches of the "
                "validation images are in train: use eval_protocol=query_gallery); exporting the last epoch",
                main_process_only=True,
            )
        if run.ema is not None and run.ema.shadow:
            run.unwrapped.load_state_dict(run.ema.shadow)
        return
    from safetensors.torch import load_file

    best_file = _best_dir(run.run_dir, state.best_epoch) / "model.safetensors"
    if not best_file.is_file():
        raise FileNotFoundError(
            f"the weights of the best epoch ({state.best_epoch}) are missing: {best_file}"
        )
    run.unwrapped.load_state_dict(load_file(str(best_file)))
    logger.info(
        "loaded the best epoch (%d, val %s %.4f)",
        state.best_epoch,
        run.config.train.metric_for_best,
        state.best_score,
        main_process_only=True,
    )


def _final_results(run: RunParts) -> dict[str, Any]:
    """results.json's dict: the start, the chosen epoch on validation, test, the interpolation and the budget."""
    config, tc, state, accelerator = run.config, run.config.train, run.state, run.accelerator
    val_best = state.history[state.best_epoch - 1]["val"] if state.best_epoch else None
    test = run.evaluator.test(run.model)
    interpolation = interpolate_best(
        config, accelerator, run.model, run.evaluator, run.start_weights, val_best
    )
    if interpolation is not None:
        val_best = interpolation["val"][f"{interpolation['chosen_alpha']:g}"]
        # the trained model's test figures, for the report only (alpha was chosen on validation)
        interpolation["test_trained"] = summary_metrics(test)
        if interpolation["chosen_alpha"] != 1.0:
            test = run.evaluator.test(run.model)
    flip = choose_test_time_flip(config, accelerator, run.model, run.evaluator, val_best)
    if flip is not None and flip["chosen"]:
        flip["test_plain"] = summary_metrics(test)  # for the report only (the flip was chosen on validation)
        val_best, test = flip["val_flip"], run.evaluator.test(run.model)
    speeds = [h["images_per_s"] for h in state.history]
    return {
        "best_epoch": state.best_epoch,
        "metric_for_best": tc.metric_for_best,
        "baseline": state.baseline,
        "val_best": val_best,
        "test": summary_metrics(test),
        "beats_baseline": beats_baseline(state.baseline, val_best, tc.metric_for_best),
        "interpolation": interpolation,
        "test_time_flip": flip,
        "test_protocol": test.get("protocol"),
        "epochs": tc.epochs,
        "train_images_seen": tc.epochs * run.batches_this_epoch * tc.batch_size * accelerator.num_processes,
        "config_summary": config_summary(config),
        "num_classes": run.corpus.num_classes,
        "num_processes": accelerator.num_processes,
        "mixed_precision": tc.mixed_precision,
        "train_images_per_s": float(np.mean(speeds)) if speeds else None,
        "wall_time_s": None,
        "export_dir": str(run.run_dir / "export"),
    }


def _export(run: RunParts, results: dict[str, Any], t_start: float) -> None:
    """Main process: the feature extractor, processor, handler and model card; results.json; the Hub push."""
    tc, corpus = run.config.train, run.corpus
    export_dir = run.run_dir / "export"
    fe = run.unwrapped.export_feature_extractor()
    fe.save_pretrained(export_dir, safe_serialization=True)
    run.processor.save_pretrained(export_dir)
    from animal_reid.serve.handler import write_handler  # stdlib only: no service dependencies

    write_handler(export_dir)  # Inference Endpoints custom handler (docs/serve.md)
    results["wall_time_s"] = time.time() - t_start
    card = render_model_card(
        widget=write_widget_examples(corpus, export_dir, tc.push_to_hub) if not tc.widget_images else None,
        config=run.config,
        model_config=fe.config,
        results=results,
        history=run.state.history,
        corpus_info=corpus.card_info(),
        train_counts={"images": len(corpus.splits["train"]), "identities": corpus.num_classes},
        num_parameters=sum(p.numel() for p in fe.parameters()),
    )
    card.save(export_dir / "README.md")
    (run.run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    log_against_start(results)
    logger.info(
        "test (%s): top-1 %s, top-5 %s, mAP %s; exported to %s",
        results["test_protocol"],
        _fmt(results["test"]["top1"]),
        _fmt(results["test"]["top5"]),
        _fmt(results["test"]["mAP"]),
        export_dir,
    )
    if tc.push_to_hub:
        push_export(export_dir, tc.push_to_hub, private=tc.hub_private)


def write_widget_examples(
    corpus, export_dir: Path, repo_id: str | None, per_species: int = 1
) -> list[dict] | None:
    """Widget examples for the card: test images copied into ``export/examples``, **only for synthetic corpora**.

    Real photos are never copied (most sources forbid redistribution); pass ``widget_images`` URLs instead.
    """
    test = corpus.splits["test"]
    sources = set(test["source"]) if "source" in test.column_names else set()
    if sources != {"synthetic"}:
        return None
    from huggingface_hub import constants

    examples = export_dir / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    base = f"{constants.ENDPOINT}/{repo_id}/resolve/main/" if repo_id else ""
    widget, seen = [], {}
    for i, species in enumerate(test["species"]):
        if seen.get(species, 0) >= per_species:
            continue
        seen[species] = seen.get(species, 0) + 1
        image = test[i]["image"]
        data = image.get("bytes") or Path(image["path"]).read_bytes()
        name = f"{species}_{seen[species]}.jpg"
        (examples / name).write_bytes(data)
        widget.append({"src": f"{base}examples/{name}", "example_title": f"{species} (synthetic)"})
    return widget


def push_export(export_dir: Path, repo_id: str, private: bool = False) -> str:
    """Push the exported model, its processor, then the model card (``push_to_hub`` writes its own README)."""
    from huggingface_hub import HfApi, ModelCard

    model = AnimalReIDModel.from_pretrained(export_dir)
    processor = AnimalReIDImageProcessor.from_pretrained(export_dir)
    model.push_to_hub(repo_id, private=private, commit_message="Upload AnimalReID feature extractor")
    processor.push_to_hub(repo_id, commit_message="Upload image processor")
    api = HfApi()
    if (export_dir / "examples").is_dir():
        api.upload_folder(
            folder_path=str(export_dir),
            repo_id=repo_id,
            allow_patterns=["examples/*"],
            commit_message="Upload widget examples",
        )
    extras = [n for n in ("handler.py", "requirements.txt") if (export_dir / n).is_file()]
    if extras:
        api.upload_folder(
            folder_path=str(export_dir),
            repo_id=repo_id,
            allow_patterns=extras,
            commit_message="Upload the Inference Endpoints handler",
        )
    card = ModelCard.load(export_dir / "README.md")
    card.push_to_hub(repo_id, commit_message="Upload model card generated by the training run")
    url = api.repo_info(repo_id).id
    logging.getLogger(__name__).info("pushed %s to the Hub as %s", export_dir, url)
    return url


def _best_dir(run_dir: Path, epoch: int) -> Path:
    return run_dir / "best" / f"epoch_{epoch}"


def _prune_best(run_dir: Path, keep_epoch: int | None) -> None:
    import shutil

    for d in (run_dir / "best").glob("epoch_*"):
        if keep_epoch is None or d.name != f"epoch_{keep_epoch}":
            shutil.rmtree(d, ignore_errors=True)


def _group_lr(optimizer, part: str) -> float | None:
    for g in optimizer.param_groups:
        if g.get("name", "").startswith(part):
            return float(g["lr"])
    return None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl from the state's history (so a resumed run holds each epoch exactly once)."""
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for rec in history:
            fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    from animal_reid.fastmalloc import reexec_with_fast_malloc

    reexec_with_fast_malloc()  # jemalloc (or glibc huge pages): about 1.9x faster CPU steps, see the module
    res = main(sys.argv[1:])
    test_m = res["test"]
    print(
        f"best epoch {res['best_epoch']}; test top-1 {_fmt(test_m['top1'])}, top-5 {_fmt(test_m['top5'])}, "
        f"mAP {_fmt(test_m['mAP'])}; wall time {res['wall_time_s']:.0f} s; export: {res['export_dir']}"
        if res["wall_time_s"] is not None
        else "done"
    )
