#!/usr/bin/env python
"""Training throughput (issue 5, #2): ``train_accelerate.py``'s loop against the model's plain forward/backward.

For each precision (fp32, bf16), in separate processes so each peak memory is its own:

* ``loop``  – ``train_accelerate.main`` on a config (default: the CPU benchmark ``configs/train_cpu_real6.yaml``)
              for short epochs: corpus decoding, preprocessing, augmentation, P×K sampler, Accelerate
              ``accumulate``/autocast, clipping, AdamW, scheduler. Images/s is the loop's own figure
              (``metrics.jsonl``: training images over the epoch's training time, evaluation excluded) for
              the last epoch (``--loop-epochs``, default 2), once the persistent workers are up.
* ``plain`` – the same model (``animal_reid.training.model.build_model``, same head size) and optimiser
              stepping on a random uint8 batch of the same shape already in memory on the device, normalised
              there by ``processor.normalize_uint8`` as the loop's batches are: the limit for this model here.

Peak memory is ``ru_maxrss`` of the measuring process (its DataLoader workers reported apart) on the CPU and
``torch.cuda.max_memory_allocated`` on a GPU. Ratios are printed: loop / plain per precision, bf16 / fp32 per mode.

    python benchmarks/bench_train.py                                   # CPU, configs/train_cpu_real6.yaml
    python benchmarks/bench_train.py --corpus runs/bench_real/corpora/open_src --batches 6
    python benchmarks/bench_train.py --device cuda --corpus .gpu/bench/corpora/open --batches 60 \\
        --set image_size=224 identities_per_batch=16 num_workers=12
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import report

REPO = Path(__file__).resolve().parents[1]

PRECISIONS = {"fp32": "no", "bf16": "bf16"}


def _maxrss_mib(who: int) -> float:
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(who).ru_maxrss / 1024.0


def _overrides(sets: list[str]) -> list[str]:
    argv = []
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        argv += [f"--{k}", *v.split()]
    return argv


def worker_loop(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import train_accelerate

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        argv = [args.config, "--output_dir", str(Path(tmp) / "run"), "--epochs", str(args.loop_epochs)]
        argv += ["--batches_per_epoch", str(args.batches), "--mixed_precision", PRECISIONS[args.precision]]
        argv += ["--max_eval_images_per_identity", "2", "--save_total_limit", "1", "--log_every", "1000"]
        argv += ["--freeze_backbone_epochs", "0"]  # the whole model trains, as in the plain step
        if args.corpus:
            argv += ["--corpus", args.corpus]
        argv += _overrides(args.set)
        t0 = time.time()
        res = train_accelerate.main(argv)
        wall = time.time() - t0
        hist = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines() if x]
    # The last epoch: with several, worker start-up and the first prefetch are out of the figure (steady state).
    out = {
        "mode": "loop",
        "precision": args.precision,
        "epochs": len(hist),
        "images_per_s_by_epoch": [h["images_per_s"] for h in hist],
        "images_per_s": hist[-1]["images_per_s"],
        "train_time_s": hist[-1]["train_time_s"],
        "images": round(hist[-1]["images_per_s"] * hist[-1]["train_time_s"]),
        "run_wall_s": wall,
        "num_classes": res["num_classes"],
        "peak_rss_mib": _maxrss_mib(resource.RUSAGE_SELF),
        "peak_rss_children_mib": _maxrss_mib(resource.RUSAGE_CHILDREN),
    }
    if torch.cuda.is_available():
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def loader_capacity(args: argparse.Namespace) -> dict[str, Any]:
    """Samples/s of the training data path on one core (row, decode or cache, augmentation), cache off and on.

    What one DataLoader worker can produce: multiply by the workers (cores) to get the loader's ceiling and
    compare it with the plain step's images/s.
    """
    import torch

    from animal_reid.training.augment import ReIDAugment
    from animal_reid.training.config import parse_config
    from animal_reid.training.data import ReIDImageDataset, cache_images, load_corpus
    from animal_reid.training.model import build_model

    torch.set_num_threads(1)
    argv = [args.config] + (["--corpus", args.corpus] if args.corpus else []) + _overrides(args.set)
    config = parse_config(argv)
    corpus = load_corpus(config.data, seed=config.train.seed)
    _, processor = build_model(config, corpus.num_classes)
    augment = ReIDAugment(processor.image_mean, processor.image_std)
    ds = ReIDImageDataset(corpus.splits["train"], processor, corpus.label_of, augment, config.data.use_boxes)
    n = min(len(ds), args.loader_samples)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].tolist()
    out: dict[str, Any] = {"mode": "loader", "samples": n, "image_size": config.model.image_size}
    for label in ("decode", "cache"):
        if label == "cache":
            t0 = time.perf_counter()
            report = cache_images([ds], 0, float("inf"))
            out["cache_build_s"] = time.perf_counter() - t0
            out["cache_mib"] = report["bytes"] / 2**20
            out["cache_images"] = report["images"]
        t0 = time.perf_counter()
        for j, i in enumerate(idx):
            ds[(i, j)]
        out[f"{label}_samples_per_s"] = n / (time.perf_counter() - t0)
    return out


def worker_plain(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from animal_reid.training.config import parse_config
    from animal_reid.training.data import load_corpus
    from animal_reid.training.model import build_model, parameter_groups

    argv = [args.config] + (["--corpus", args.corpus] if args.corpus else []) + _overrides(args.set)
    config = parse_config(argv)
    corpus = load_corpus(config.data, seed=config.train.seed)
    n_classes = corpus.num_classes
    del corpus
    device = torch.device(args.device)
    torch.manual_seed(0)
    model, processor = build_model(config, n_classes)
    model.to(device).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, config))
    b, s = config.train.batch_size, config.model.image_size
    x = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, device=device)
    y = torch.randint(0, n_classes, (b,), device=device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(pixel_values=processor.normalize_uint8(x), labels=y).loss
        loss.backward()
        if config.train.max_grad_norm > 0:  # 0 turns clipping off, as in train_accelerate
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt_s = time.perf_counter() - t0
    out = {
        "mode": "plain",
        "precision": args.precision,
        "images_per_s": args.steps * b / dt_s,
        "train_time_s": dt_s,
        "images": args.steps * b,
        "num_classes": n_classes,
        "peak_rss_mib": _maxrss_mib(resource.RUSAGE_SELF),
    }
    if device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _machine(device: str) -> str:
    import torch

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    desc = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}; load average {load}), torch {torch.__version__}"
    if device == "cuda" and torch.cuda.is_available():
        desc += f", GPU {torch.cuda.get_device_name(0)}"
    return desc


def render(results: dict[str, Any]) -> str:
    rows = results["runs"]
    mem_key = "peak_cuda_mib" if results["device"] == "cuda" else "peak_rss_mib"
    lines = [
        f"# Training throughput ({results['device']})",
        "",
        f"- date: {results['date']}; machine: {results['machine']}",
        f"- command: `{results['command']}`",
        f"- config: {results['config']} (corpus {results['corpus'] or 'from the config'}; overrides "
        f"{results['set'] or 'none'}; torch threads {results.get('threads') or 'default'})",
        "",
        f"| mode | precision | images/s | images timed | peak memory (MiB, {mem_key}) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        mem = r.get(mem_key)
        extra = (
            f" (+ children {r['peak_rss_children_mib']:.0f})"
            if "peak_rss_children_mib" in r and mem_key == "peak_rss_mib"
            else ""
        )
        lines.append(
            f"| {r['mode']} | {r['precision']} | {r['images_per_s']:.1f} | {r['images']} | "
            f"{'–' if mem is None else f'{mem:.0f}'}{extra} |"
        )
    lines += ["", "| ratio | value |", "|---|---|"]
    for name, v in results["ratios"].items():
        lines.append(f"| {name} | {v:.2f} |")
    for err in results.get("errors", []):
        lines.append(f"\nfailed: {err.splitlines()[0]}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (with the hidden options of the measuring child processes)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=str(REPO / "configs" / "train_cpu_real6.yaml"))
    p.add_argument("--corpus", default=None, help="corpus directory (default: the config's)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="train_accelerate overrides")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    p.add_argument("--batches", type=int, default=8, help="batches per epoch of the loop")
    p.add_argument(
        "--loop-epochs",
        type=int,
        default=2,
        help="epochs of the loop; the last one is reported (steady state: workers up, prefetch full)",
    )
    p.add_argument("--steps", type=int, default=6, help="timed steps of the plain forward/backward")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (plain)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads in the measuring processes"
    )
    p.add_argument("--out", default=None, help="results file stem (.json and .md written)")
    p.add_argument(
        "--loader-only",
        action="store_true",
        help="only the data path's samples/s on one core, image cache off and on (no model steps)",
    )
    p.add_argument("--loader-samples", type=int, default=400)
    p.add_argument("--worker", choices=("loop", "plain"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--precision", choices=list(PRECISIONS), default="fp32", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def report_loader(args: argparse.Namespace) -> dict[str, Any]:
    """``--loader-only``: measure the data path, print it, write ``OUT.json`` when asked."""
    res = loader_capacity(args)
    print(json.dumps(res, indent=2))
    print(
        f"data path, one core: {res['decode_samples_per_s']:.0f} samples/s decoding, "
        f"{res['cache_samples_per_s']:.0f} from the cache "
        f"({res['cache_samples_per_s'] / res['decode_samples_per_s']:.2f}x); cache of "
        f"{res['cache_images']} images, {res['cache_mib']:.0f} MiB, built in {res['cache_build_s']:.1f} s"
    )
    if args.out:
        report.write_json(Path(args.out).with_suffix(".json"), res)
    return res


def run_worker(args: argparse.Namespace) -> None:
    """A measuring child process (``--worker``): one mode at one precision, printed as a ``RESULT`` line."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    fn = worker_loop if args.worker == "loop" else worker_plain
    print("RESULT " + json.dumps(fn(args)), flush=True)


def child_env(args: argparse.Namespace, cache: str) -> dict[str, str]:
    """The measuring children's environment: a private datasets cache, and only the GPU ``--device`` allows."""
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": cache,
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif not env["CUDA_VISIBLE_DEVICES"]:
        env.pop("CUDA_VISIBLE_DEVICES")
    return env


def child_command(args: argparse.Namespace, mode: str, precision: str) -> list[str]:
    """This script again, as the ``--worker`` measuring ``mode`` at ``precision`` with this run's settings."""
    cmd = [sys.executable, __file__, "--worker", mode, "--precision", precision, "--config", args.config]
    cmd += ["--device", args.device, "--batches", str(args.batches), "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup), "--loop-epochs", str(args.loop_epochs)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.corpus:
        cmd += ["--corpus", args.corpus]
    if args.set:
        cmd += ["--set", *args.set]
    return cmd


def measure_modes(args: argparse.Namespace, argv: list[str] | None) -> dict:
    """Each precision's plain and loop modes, each in its own process; the summary after every one."""
    if args.device == "cuda":
        os.environ.pop("ACCELERATE_USE_CPU", None)
    else:
        os.environ["ACCELERATE_USE_CPU"] = "true"  # the loop stays on the CPU even where a GPU is visible
    runs: list[dict] = []
    errors: list[str] = []
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_cache_") as cache:
        env = child_env(args, cache)
        for precision in args.precisions:
            for mode in ("plain", "loop"):
                print(f"[bench_train] {mode} {precision} ...", file=sys.stderr, flush=True)
                proc = subprocess.run(
                    child_command(args, mode, precision), cwd=REPO, env=env, capture_output=True, text=True
                )
                found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not found:
                    # keep measuring the other modes; the failure is part of the results
                    errors.append(f"{mode} {precision}: exit {proc.returncode}: {proc.stderr[-1500:]}")
                    print(f"[bench_train] {errors[-1]}", file=sys.stderr, flush=True)
                else:
                    runs.append(json.loads(found[-1][len("RESULT ") :]))
                results = summarize(
                    args, argv, runs, errors
                )  # written after every mode: a timeout keeps them
    return results


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    report.require_extra("train")
    if args.loader_only:
        return report_loader(args)
    if args.worker:
        run_worker(args)
        return None
    results = measure_modes(args, argv)
    print(render(results))
    return results


def summarize(args: argparse.Namespace, argv: list[str] | None, runs: list[dict], errors: list[str]) -> dict:
    """Results dict with the ratios the finished modes allow; written to ``args.out`` (.json, .md) if set."""
    by = {(r["mode"], r["precision"]): r["images_per_s"] for r in runs}
    ratios = {}
    for prec in args.precisions:
        if ("loop", prec) in by and ("plain", prec) in by:
            ratios[f"loop / plain ({prec})"] = by[("loop", prec)] / by[("plain", prec)]
    for mode in ("loop", "plain"):
        if (mode, "bf16") in by and (mode, "fp32") in by:
            ratios[f"bf16 / fp32 ({mode})"] = by[(mode, "bf16")] / by[(mode, "fp32")]
    results = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(args.device),
        "device": args.device,
        "command": "python benchmarks/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": args.config,
        "corpus": args.corpus,
        "set": args.set,
        "threads": args.threads,
        "runs": runs,
        "ratios": ratios,
        "errors": errors,
    }
    if args.out:
        report.write_results(Path(args.out).with_suffix(".json"), results, render(results), newline=True)
    return results


if __name__ == "__main__":
    main()
