"""How a run's trained weights are judged against where they started, and which weights are exported.

`start_model` scores the untrained model (the baseline every epoch is compared with) and initialises the head;
`keep_start_weights` keeps its weights for `interpolate_best` (WiSE-FT, the mixing weight chosen on validation);
`choose_test_time_flip` decides ``--test_time_flip auto`` on validation; `beats_baseline` and `log_against_start`
report whether training helped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger

from animal_reid.training.evaluation import format_metric, summary_metrics
from animal_reid.training.interpolate import (
    choose_alpha,
    interpolate_state,
    load_snapshot,
    save_snapshot,
    snapshot,
)
from animal_reid.training.model import calibrate_neck, class_centers, init_head

logger = get_logger(__name__)


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
        format_metric(baseline["val"]["top1"]),
        format_metric(baseline["val"]["mAP"]),
        format_metric(baseline["test"]["top1"]),
        format_metric(baseline["test"]["mAP"]),
        config.model.head_init,
        main_process_only=True,
    )
    return baseline


def keep_start_weights(
    config, accelerator, unwrapped, path: Path, fresh: bool
) -> dict[str, torch.Tensor] | None:
    """The starting weights for ``interpolate_alphas`` or ``backbone_alpha``: taken before the first step and saved
    beside the checkpoints, or read back when a run resumes (None if a resumed run never saved them)."""
    if not config.train.interpolate_alphas and config.train.backbone_alpha == 1.0:
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
        logger.info(
            "interpolation a=%g: val %s %s", alpha, metric, format_metric(val[metric]), main_process_only=True
        )
        return val

    chosen, scored = choose_alpha(score, alphas, val_best, metric)
    unwrapped.load_state_dict(interpolate_state(start, trained, chosen))
    logger.info(
        "interpolation: a=%g chosen on validation (%s %s; trained a=1: %s)",
        chosen,
        metric,
        format_metric(scored[f"{chosen:g}"][metric]),
        format_metric(val_best[metric]),
        main_process_only=True,
    )
    return {"chosen_alpha": chosen, "val": scored}


def interpolate_backbone(config, accelerator, model, evaluator, start) -> dict[str, Any] | None:
    """``backbone_alpha``: the backbone's weights moved to ``(1 - a) * start + a * trained`` (the neck and head as
    trained), with ``a`` fixed in the config (chosen on held-out species elsewhere, nothing chosen here). Returns
    ``{"backbone_alpha", "val"}`` (validation after the move) or None when not asked for or not possible."""
    alpha = config.train.backbone_alpha
    if alpha == 1.0:
        return None
    if start is None:
        logger.warning("backbone_alpha: no starting weights saved; exporting the trained backbone")
        return None
    unwrapped = accelerator.unwrap_model(model)
    trained = snapshot(unwrapped)
    backbone_start = {k: v for k, v in start.items() if k.startswith("backbone.")}
    unwrapped.load_state_dict(interpolate_state({**trained, **backbone_start}, trained, alpha))
    val = summary_metrics(evaluator.validation(model))
    logger.info(
        "backbone interpolation a=%g (fixed): val %s %s",
        alpha,
        config.train.metric_for_best,
        format_metric(val[config.train.metric_for_best]),
        main_process_only=True,
    )
    return {"backbone_alpha": alpha, "val": val}


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
        format_metric(val_flip[metric]),
        format_metric(val_best[metric]),
        main_process_only=True,
    )
    return {"chosen": cfg.test_time_flip, "val_flip": val_flip, "val_plain": val_best}


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
                format_metric(was.get("top1")),
                format_metric(now.get("top1")),
                format_metric(was.get("mAP")),
                format_metric(now.get("mAP")),
                now.get("n_queries"),
                main_process_only=True,
            )
    if results.get("beats_baseline") is False:
        logger.warning(
            "!!! TRAINING DID NOT BEAT ITS STARTING POINT: the chosen epoch's validation %s is not above the "
            "untrained model's (%s vs %s). The export is no better than its starting weights. !!!",
            results.get("metric_for_best"),
            format_metric((results.get("val_best") or {}).get(results.get("metric_for_best"))),
            format_metric((base.get("val") or {}).get(results.get("metric_for_best"))),
            main_process_only=True,
        )
