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

The run directory follows the output policy (``animal_reid.training.run_folder``): locked for the whole run, every
file listed in its manifest as it is written; a non-empty folder not written by a run is refused, a previous run
needs ``--resume`` (continue) or ``--overwrite`` (replace only its files).

This file is the run's flow only (``main`` -> ``run`` -> the named steps of ``_run``); the parts it is made of
(model, optimiser, evaluation, start/interpolation/flip choices, checkpointed state, export) live in the
``animal_reid.training`` package.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animal_reid.extras import exit_without_extra
from animal_reid.manifest import OutputError

# before accelerate and datasets are imported: a missing extra is one line, not a traceback
exit_without_extra("animal-reid-train", "train")

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.logging import get_logger
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from animal_reid.training.augment import build_augment
from animal_reid.training.config import TrainConfig, config_summary, parse_config, save_config
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
from animal_reid.training.evaluation import (
    EvalSets,
    Evaluator,
    format_metric,
    resolve_protocol,
    summary_metrics,
)
from animal_reid.training.export import push_export, save_export, write_model_card
from animal_reid.training.model import (
    build_model,
    build_optimizer,
    set_backbone_frozen,
)
from animal_reid.training.plots import plot_history
from animal_reid.training.run_folder import RunFolder, open_run_folder
from animal_reid.training.sampler import build_sampler
from animal_reid.training.schedule import build_scheduler
from animal_reid.training.selection import (
    beats_baseline,
    choose_test_time_flip,
    interpolate_backbone,
    interpolate_best,
    keep_start_weights,
    log_against_start,
    start_model,
)
from animal_reid.training.state import TrainingState
from modeling import AnimalReIDForMetricLearning, AnimalReIDImageProcessor

logger = get_logger(__name__)


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


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Parse ``argv`` (``[config.yaml] [--flag value ...]``), train, evaluate, export; return results.json's dict.

    Without ``argv`` (the ``animal-reid-train`` console script, which exits with what this returns) the command
    line is read, a refused ``output_dir`` is one ``error:`` line with exit status 2, and None is returned.
    """
    if argv is not None:
        return run(parse_config(argv))
    try:
        run(parse_config(None))
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return None


def run(config: TrainConfig) -> dict[str, Any]:
    t_start = time.time()
    tc = config.train
    run_dir = Path(tc.output_dir)
    ckpt_dir = run_dir / "checkpoints"

    _reset_accelerate_singletons()
    accelerator = Accelerator(
        mixed_precision=tc.mixed_precision,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        # save_total_limit is applied by RunFolder.prune_checkpoints, to the run's own checkpoints only
        project_config=ProjectConfiguration(project_dir=str(run_dir), automatic_checkpoint_naming=True),
        # A head-only warm-up leaves the backbone without gradients: DDP must look for unused parameters.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=tc.freeze_backbone_epochs > 0)],
    )
    folder = open_run_folder(config, accelerator)  # before any file is written: refusals write nothing
    try:
        resuming = tc.resume and _last_checkpoint_index(ckpt_dir) is not None
        if not resuming:
            _skip_foreign_checkpoints(accelerator, ckpt_dir)
        accelerator.wait_for_everyone()
        handler, previous_level = _setup_logging(accelerator, run_dir)
    except BaseException:
        folder.close()
        raise
    loaders: list[DataLoader] = []  # filled by _run; their persistent workers are stopped on the way out
    threads = torch.get_num_threads()  # cpu_threads changes it process-wide: put the caller's back afterwards
    try:
        return _run(config, accelerator, folder, resuming, t_start, loaders)
    finally:
        torch.set_num_threads(threads)
        release_workers(*loaders)
        accelerator.end_training()
        _restore_logging(handler, previous_level)
        folder.close()


def _skip_foreign_checkpoints(accelerator: Accelerator, ckpt_dir: Path) -> None:
    """A new run numbers its checkpoints after any ``checkpoint_<n>`` folder that is not its own (a run killed
    before listing it, or a folder of yours): accelerate would refuse to save over one."""
    last = _last_checkpoint_index(ckpt_dir)
    if last is not None:
        logger.warning(
            "%s holds checkpoint folders this run did not write (kept): its checkpoints start at checkpoint_%d",
            ckpt_dir,
            last + 1,
            main_process_only=True,
        )
        accelerator.project_configuration.iteration = last + 1


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
    folder: RunFolder
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
    folder: RunFolder,
    resuming: bool,
    t_start: float,
    loaders: list[DataLoader],
) -> dict[str, Any]:
    tc = config.train
    run_dir, ckpt_dir = folder.path, folder.path / "checkpoints"
    logger.info("%s", accelerator.state, main_process_only=True)
    if accelerator.is_main_process:
        folder.prepare("config.yaml")
        save_config(config, run_dir / "config.yaml")
        folder.record("config.yaml")
    if tc.cpu_threads is not None and accelerator.device.type == "cpu":
        torch.set_num_threads(tc.cpu_threads)
    set_seed(tc.seed)
    corpus = _load_corpus(config, accelerator)
    model, processor = _training_model(config, corpus)
    run = _prepare_run(config, accelerator, folder, corpus, model, processor, loaders)
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


def _prepare_run(config, accelerator, folder, corpus, model, processor, loaders) -> RunParts:
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
        config, accelerator, folder.path, corpus, model, processor, optimizer, scheduler, evaluator, train_loader,
        updates_per_epoch, calibrate, folder, ema=ema,
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
        run.folder.record(f"checkpoints/checkpoint_{last}")  # the state this run continues is its own
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
        _write_history(run.folder, run.state.history)
    fresh = run.state.baseline is None
    if fresh:
        run.state.baseline = start_model(
            run.config, accelerator, run.model, run.processor, run.evaluator, run.corpus, run.calibrate
        )
    start_file = run.run_dir / "start" / "model.safetensors"
    if fresh and accelerator.is_main_process:
        run.folder.prepare("start")
    run.start_weights = keep_start_weights(run.config, accelerator, run.unwrapped, start_file, fresh)
    if fresh and start_file.is_file():
        run.folder.record("start")
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
                _save_best(run, epoch + 1)
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
        format_metric(record["val"]["top1"]),
        format_metric(record["val"]["top5"]),
        format_metric(record["val"]["mAP"]),
        " (best)" if improved else "",
        main_process_only=True,
    )
    _save_checkpoint(run)
    if accelerator.is_main_process:
        _prune_best(run.folder, state.best_epoch)
        _write_history(run.folder, state.history)
        for name in ("loss.png", "val_metrics.png"):
            run.folder.prepare(name)
        run.folder.record(*plot_history(state.history, run.run_dir), "train.log")


def _save_best(run: RunParts, epoch: int) -> None:
    """The weights of a new best epoch in ``best/epoch_<n>`` (every process takes part in ``save_model``)."""
    best = _best_dir(run.run_dir, epoch)
    if run.accelerator.is_main_process:
        run.folder.prepare(best.relative_to(run.run_dir).as_posix())
    run.accelerator.save_model(run.model, best)  # written by the main process
    if run.accelerator.is_main_process:
        run.folder.record(best)


def _save_checkpoint(run: RunParts) -> None:
    """``accelerator.save_state`` into the next ``checkpoints/checkpoint_<n>``, after pruning the run's oldest."""
    accelerator = run.accelerator
    if accelerator.is_main_process:
        run.folder.prune_checkpoints(run.config.train.save_total_limit)
    accelerator.save_state()
    accelerator.wait_for_everyone()  # every process's random states are in the folder before it is listed
    if accelerator.is_main_process:
        run.folder.record(f"checkpoints/checkpoint_{accelerator.save_iteration - 1}")


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
    backbone = interpolate_backbone(config, accelerator, run.model, run.evaluator, run.start_weights)
    if backbone is not None:
        backbone["test_trained"] = summary_metrics(test)  # for the report; the alpha was fixed beforehand
        val_best, test = backbone["val"], run.evaluator.test(run.model)
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
        "backbone_interpolation": backbone,
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
    stage = run.folder.staging()  # the folder is written whole, then put in place of a previous export
    fe = save_export(run.unwrapped, run.processor, stage)
    results["wall_time_s"] = time.time() - t_start
    write_model_card(run.config, fe, corpus, results, run.state.history, stage)
    run.folder.place(stage, "export")
    run.folder.prepare("results.json")
    (run.run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    run.folder.record("results.json")
    log_against_start(results)
    logger.info(
        "test (%s): top-1 %s, top-5 %s, mAP %s; exported to %s",
        results["test_protocol"],
        format_metric(results["test"]["top1"]),
        format_metric(results["test"]["top5"]),
        format_metric(results["test"]["mAP"]),
        export_dir,
    )
    if tc.push_to_hub:
        push_export(export_dir, tc.push_to_hub, private=tc.hub_private)


def _best_dir(run_dir: Path, epoch: int) -> Path:
    return run_dir / "best" / f"epoch_{epoch}"


def _prune_best(folder: RunFolder, keep_epoch: int | None) -> None:
    """Remove the run's former best epochs (their listed files only)."""
    for d in (folder.path / "best").glob("epoch_*"):
        if keep_epoch is None or d.name != f"epoch_{keep_epoch}":
            folder.remove(f"best/{d.name}")


def _group_lr(optimizer, part: str) -> float | None:
    for g in optimizer.param_groups:
        if g.get("name", "").startswith(part):
            return float(g["lr"])
    return None


def _write_history(folder: RunFolder, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl from the state's history (so a resumed run holds each epoch exactly once)."""
    folder.prepare("metrics.jsonl")
    with open(folder.path / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for rec in history:
            fh.write(json.dumps(rec) + "\n")
    folder.record("metrics.jsonl")


if __name__ == "__main__":
    from animal_reid.fastmalloc import reexec_with_fast_malloc

    reexec_with_fast_malloc()  # jemalloc (or glibc huge pages): about 1.9x faster CPU steps, see the module
    try:
        res = main(sys.argv[1:])
    except OutputError as err:  # the output_dir refused: one line, like other usage errors
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    test_m = res["test"]
    print(
        f"best epoch {res['best_epoch']}; test top-1 {format_metric(test_m['top1'])}, top-5 {format_metric(test_m['top5'])}, "
        f"mAP {format_metric(test_m['mAP'])}; wall time {res['wall_time_s']:.0f} s; export: {res['export_dir']}"
        if res["wall_time_s"] is not None
        else "done"
    )
