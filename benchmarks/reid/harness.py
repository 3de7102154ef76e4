"""The harness of the real-photo benchmarks: `Bench` trains runs (`train_accelerate.main`, the peer recipe, or
several as subprocesses at once), reuses finished ones, and embeds and scores corpus splits under a model;
`Deadline` is the time budget no new run starts after."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animal_reid.fastmalloc import fast_malloc_env
from benchmarks.reid.config import REPO, BenchConfig, peer_precision

logger = logging.getLogger("reid_real")  # the whole benchmark logs under the script's name


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
            "max_train_images_per_species": c.max_train_images_per_species,
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
        opts.update(c.train_overrides)
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
                "--precision", peer_precision(c), "--splits", *splits]  # fmt: skip

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
        from benchmarks.reid.peer import train as train_peer

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
        res = train_peer(
            str(corpus), str(run_dir), images, seed=c.seed, batch=batch, size=c.image_size, backbone=c.backbone,
            init_weights=c.init_weights, precision=peer_precision(c), splits=splits,
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
                max_train_images_per_species=c.max_train_images_per_species if capped else None,
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

    def register(self, which: str, model, processor) -> None:
        """Make an in-memory ``(model, processor)`` embeddable as ``which`` (an ablation's variant of an export)."""
        self._cache[("model", which)] = (model.to(self.device).eval(), processor)

    def leave_one_out(
        self, which: str, corpus: Path, species: list[str] | None = None, split: str = "test"
    ) -> dict[str, Any]:
        """The paper's protocol on the (capped) test split (or ``split``): every image queries the others of its
        species."""
        from animal_reid.metrics import evaluate_reid

        emb, meta = self.embed(which, corpus, split, species)
        return evaluate_reid(emb, meta["identity"], meta.get("encounter"), meta["species"], topk=(1, 5, 10))
