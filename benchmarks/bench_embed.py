"""Embedding throughput, end to end, against the model's forward-only limit and the naive pipeline loop.

For each backbone, on the same real image files (nyala field photos from ../shared/data by default):

* ``forward``  – the model's forward pass alone on tensors already in memory (the limit on this machine), for
                 each engine ``encode`` can use: PyTorch eager (channels-last) and, on the CPU, onnxruntime
                 (one session on every core, with idle threads sleeping or spinning, and one single-threaded
                 session per core running whole batches). The limit is the fastest of them;
* ``encode``   – end to end: read and decode files, preprocess, model, L2-normalised embeddings written
                 to disk as .npy (``AnimalReIDModel.encode`` with DataLoader workers, ``engine`` as given:
                 ``auto`` = onnxruntime on the CPU, torch on a GPU);
* ``pipeline`` – what users do today: ``pipeline("image-feature-extraction")`` called image by image.

Each mode runs in the same process on the same model; ratios are printed against the limit and the pipeline.

    python benchmarks/bench_embed.py                      # Lite0 @ 224 and efficientnetv2_rw_m @ 440, CPU
    python benchmarks/bench_embed.py --engine torch       # encode with PyTorch eager only
    python benchmarks/bench_embed.py --device cuda --n-images 2048 --n-images-large 512
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import report
from benchmarks.common import DEFAULT_DATA, build, find_images
from modeling.encoding_animal_reid import onnxruntime_available, onnxruntime_engine

REPO = Path(__file__).resolve().parents[1]


def time_forward(
    model, proc, files, batch_size, device, channels_last, precision="fp32", warmup=1, engine="torch"
) -> float:
    """Images/s of the network alone on one preprocessed batch held in memory.

    ``engine``: ``torch``, ``onnxruntime`` (one session using every core, idle threads sleeping),
    ``onnxruntime-spin`` (idle threads busy-waiting, which is faster when nothing else needs the cores) or
    ``onnxruntime-streams`` (as encode runs it on the CPU: one single-threaded session per core, each thread
    running whole batches).
    """
    x = torch.stack([proc.preprocess_one(f) for f in files[:batch_size]]).to(device)
    streams = None
    if engine == "onnxruntime-streams":
        from concurrent.futures import ThreadPoolExecutor

        run = onnxruntime_engine(model, x.shape[-2], x.shape[-1]).with_threads(1)
        streams = ThreadPoolExecutor(torch.get_num_threads())
        n_batches = max(1, len(files) // batch_size)

        def one(_):
            return torch.nn.functional.normalize(run(x), dim=-1)

        def step():  # one "step" = every stream's share of the batches, so the timing loop below runs once
            return list(streams.map(one, range(n_batches)))

        def warm():
            return list(streams.map(one, range(torch.get_num_threads())))
    elif engine.startswith("onnxruntime"):
        run = onnxruntime_engine(model, x.shape[-2], x.shape[-1]).with_threads(
            torch.get_num_threads(), spinning=engine.endswith("spin")
        )

        def step():
            return torch.nn.functional.normalize(run(x), dim=-1)
    else:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def step():
            return model(pixel_values=x).embeddings.cpu()

    n_batches = max(1, len(files) // batch_size)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    try:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None),
        ):
            for _ in range(warmup):
                (warm if streams is not None else step)()
            _sync(device)
            t = time.perf_counter()
            for _ in range(1 if streams is not None else n_batches):
                step()
            _sync(device)
    finally:
        if streams is not None:
            streams.shutdown()
    return n_batches * batch_size / (time.perf_counter() - t)


def time_encode(model, files, batch_size, num_workers, out_dir, precision="fp32", engine="auto") -> float:
    kw = {"batch_size": batch_size, "num_workers": num_workers, "precision": precision, "engine": engine}
    model.encode(files[: batch_size * 2], **kw)
    _sync(next(model.parameters()).device)
    t = time.perf_counter()
    emb = model.encode(files, show_progress_bar=False, **kw)
    np.save(Path(out_dir) / "embeddings.npy", emb)
    return len(files) / (time.perf_counter() - t)


def time_pipeline(model_dir, files, device) -> float:
    from transformers import pipeline

    pipe = pipeline("image-feature-extraction", model=model_dir, trust_remote_code=True, device=device)
    pipe(files[0])
    t = time.perf_counter()
    out = [pipe(f, return_tensors=True) for f in files]
    np.save(Path(model_dir) / "naive.npy", torch.cat(out).numpy())
    return len(files) / (time.perf_counter() - t)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-images", type=int, default=256, help="images for Lite0 @ 224")
    ap.add_argument("--n-images-large", type=int, default=32, help="images for efficientnetv2_rw_m @ 440")
    ap.add_argument("--n-pipeline", type=int, default=None, help="images for the naive loop (default: same)")
    ap.add_argument(
        "--batch-size", type=int, default=None, help="default: encode's own (4 on the CPU, 32 on a GPU)"
    )
    ap.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="DataLoader workers (default: 0 on CPU = one decoding thread, 8 on GPU)",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backbones", default="efficientnet_lite0:224,efficientnetv2_rw_m:440")
    ap.add_argument(
        "--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="forward and encode"
    )
    ap.add_argument(
        "--engine", default="auto", choices=("auto", "torch", "onnxruntime"), help="encode()'s engine"
    )
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best of each is kept")
    ap.add_argument("--json-out", type=Path, default=None)
    return ap.parse_args(argv)


def best_of_rounds(
    model, proc, files, bs: int, workers: int, model_dir, device, args
) -> tuple[float, dict, float]:
    """``(forward torch, forward per onnxruntime mode, encode)`` images/s, the best of ``--repeats`` rounds.

    Repeated and interleaved, best of each: other tenants of a shared machine slow single measurements.
    """
    fwd, enc = 0.0, 0.0
    ort_modes = {"onnxruntime": 0.0, "onnxruntime-spin": 0.0, "onnxruntime-streams": 0.0}
    use_ort = device.type == "cpu" and args.precision == "fp32" and onnxruntime_available()
    for _ in range(args.repeats):
        fwd = max(fwd, time_forward(model, proc, files, bs, device, True, precision=args.precision))
        if use_ort:
            for eng in ort_modes:
                ort_modes[eng] = max(
                    ort_modes[eng], time_forward(model, proc, files, bs, device, False, engine=eng)
                )
        enc = max(enc, time_encode(model, files, bs, workers, model_dir, args.precision, args.engine))
    return fwd, ort_modes, enc


def measure_backbone(spec: str, args: argparse.Namespace, device: torch.device, workers: int) -> dict:
    """One table row: forward, end-to-end and pipeline images/s of one ``backbone:size``, and their ratios."""
    backbone, size = spec.split(":")
    size = int(size)
    n = args.n_images if "lite" in backbone else args.n_images_large
    files = find_images(args.data_root, n)
    model, proc, model_dir = build(backbone, size, device)
    bs = min(args.batch_size or (32 if device.type == "cuda" else 4), n)
    fwd, ort_modes, enc = best_of_rounds(model, proc, files, bs, workers, model_dir, device, args)
    fwd_ort = max(ort_modes.values())
    limit = max(fwd, fwd_ort)
    n_pipe = min(args.n_pipeline or n, n)
    naive = time_pipeline(model_dir, files[:n_pipe], device)
    return {
        "backbone": backbone,
        "size": size,
        "n_images": n,
        "batch_size": bs,
        "workers": workers,
        "precision": args.precision,
        "engine": args.engine,
        "forward_img_s": round(fwd, 2),
        "forward_onnxruntime_img_s": round(fwd_ort, 2) if fwd_ort else None,
        "forward_onnxruntime_modes_img_s": {k: round(v, 2) for k, v in ort_modes.items()}
        if fwd_ort
        else None,
        "repeats": args.repeats,
        "limit_img_s": round(limit, 2),
        "encode_img_s": round(enc, 2),
        "pipeline_img_s": round(naive, 2),
        "encode_vs_forward": round(enc / limit, 3),
        "encode_vs_pipeline": round(enc / naive, 2),
    }


def summary_table(rows: list[dict]) -> str:
    """The per-backbone table of forward, end-to-end and pipeline throughput."""
    columns = ["backbone", "px", "batch", "forward torch img/s", "forward onnxruntime img/s", "end-to-end img/s",
               "pipeline loop img/s", "e2e / best forward", "e2e / pipeline"]  # fmt: skip
    cells = [[r["backbone"], r["size"], r["batch_size"], r["forward_img_s"], r["forward_onnxruntime_img_s"] or "-",
              r["encode_img_s"], r["pipeline_img_s"], r["encode_vs_forward"], f"{r['encode_vs_pipeline']}x"]
             for r in rows]  # fmt: skip
    return report.markdown_table(columns, cells)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = args.num_workers if args.num_workers is not None else (8 if device.type == "cuda" else 0)
    results = {
        "date": dt.date.today().isoformat(),
        "machine": report.machine_description(),
        "torch": torch.__version__,
        "rows": [],
    }
    for spec in args.backbones.split(","):
        results["rows"].append(measure_backbone(spec, args, device, workers))
        print(json.dumps(results["rows"][-1]), flush=True)
    title = (
        f"{results['machine']}, torch {results['torch']}, {results['date']}, precision {args.precision}, "
        f"encode engine {args.engine} (pipeline: torch fp32)"
    )
    return report.finish(results, args.json_out, title, summary_table(results["rows"]))


if __name__ == "__main__":
    main()
