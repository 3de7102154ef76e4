"""Scoring a model during training: embeddings of the corpus splits, re-ID metrics under the run's protocol.

`EvalSets` holds the un-augmented datasets and loaders of the splits; `Evaluator` scores validation and test
(leave-one-out, or query against a gallery); `summary_metrics` is the part of a result kept per epoch and in
results.json; `resolve_protocol` tells a closed-set split from an open one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from animal_reid.metrics import evaluate_reid
from animal_reid.training.config import TrainConfig
from animal_reid.training.data import ReIDImageDataset, dataloader_kwargs

REPORTED_METRICS = ("top1", "top5", "mAP")


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


def resolve_protocol(val_identities: list[str], label_of: dict[str, int]) -> str:
    """``query_gallery`` for a closed-set split (every validation identity is trained on), else ``leave_one_out``."""
    closed = bool(val_identities) and all(i in label_of for i in val_identities)
    return "query_gallery" if closed else "leave_one_out"


def summary_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The part of an ``evaluate_reid`` result kept per epoch: averages and per-species top-1/top-5/mAP."""
    out = {k: result.get(k) for k in REPORTED_METRICS}
    out["n_queries"] = result.get("n_queries")
    out["per_species"] = {
        sp: {k: v.get(k) for k in (*REPORTED_METRICS, "n_queries")}
        for sp, v in result.get("per_species", {}).items()
    }
    return out


def format_metric(x: float | None) -> str:
    """A metric for the logs: four decimals, or ``n/a`` when missing or NaN."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"
