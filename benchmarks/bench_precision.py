"""Does bf16 inference keep the rankings? Top-1 on MegaDescriptor's closed-set Lion and Nyala splits, fp32 vs bf16.

Embeds the split's images with one model (by default ImageNet EfficientNet-Lite0 features, no re-ID training;
or ``--model DIR`` for an exported re-ID model) in fp32 and in bf16 autocast, then scores test-vs-train 1-NN
top-1 (MegaDescriptor's protocol) with ``animal_reid.metrics``. Prints both, the top-1 change, the fraction of
queries whose nearest neighbour changed, the embedding cosine between precisions, and the speed-up. Both run
with ``engine="torch"``; on the CPU the onnxruntime engine (``encode``'s CPU default, fp32) is scored too.

    python benchmarks/bench_precision.py                         # ImageNet Lite0 @ 224, CPU
    python benchmarks/bench_precision.py --model runs/real6/export --device cuda
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import torch

from animal_reid.metrics import evaluate_reid
from benchmarks import report
from benchmarks.common import DEFAULT_DATA, SPLITS, imagenet_lite0, load_split
from modeling import AnimalReIDImageProcessor, AnimalReIDModel
from modeling.encoding_animal_reid import onnxruntime_available

REPO = Path(__file__).resolve().parents[1]


def load_model(
    args: argparse.Namespace, device: torch.device
) -> tuple[AnimalReIDModel, AnimalReIDImageProcessor, str]:
    """``(model on the device, processor, description)``: ``--model``, or ImageNet Lite0 features."""
    if args.model:
        # This repository's classes, not the code saved beside the weights (which may predate encode's engines).
        model = AnimalReIDModel.from_pretrained(args.model)
        proc, desc = AnimalReIDImageProcessor.from_pretrained(args.model), f"re-ID model {args.model}"
    else:
        model, proc, desc = imagenet_lite0(args.size)
    return model.eval().to(device), proc, desc


def embed_and_score(model, proc, paths, ids, q, g, args, device: torch.device) -> dict[str, dict]:
    """Per precision (``fp32``, ``bf16``, and ``ort`` on the CPU): embeddings, top-1/5, mAP, seconds, 1-NN."""
    res = {}
    variants = [("fp32", "torch"), ("bf16", "torch")]
    if device.type == "cpu" and onnxruntime_available():
        variants.append(("fp32", "onnxruntime"))  # what encode() runs by default on the CPU
    for precision, engine in variants:
        t = time.perf_counter()
        emb = model.encode(
            paths,
            batch_size=args.batch_size,
            processor=proc,
            precision=precision,
            num_workers=args.num_workers,
            engine=engine,
        )
        if engine == "onnxruntime":
            precision = "ort"
        secs = time.perf_counter() - t
        r = evaluate_reid(emb[q], ids[q], gallery_embeddings=emb[g], gallery_labels=ids[g], topk=(1, 5))
        nn = (emb[q] @ emb[g].T).argmax(1)
        res[precision] = {
            "emb": emb,
            "top1": r["top1"],
            "top5": r["top5"],
            "mAP": r["mAP"],
            "secs": secs,
            "nn": nn,
        }
    return res


def compare_split(model, proc, name: str, args, device: torch.device) -> dict:
    """One table row: a split's figures in fp32 and bf16 (and onnxruntime), and what changed between them."""
    paths, ids, split = load_split(args.data_root, name)
    q, g = split == "test", split == "train"
    res = embed_and_score(model, proc, paths, ids, q, g, args, device)
    cos = float(np.mean(np.sum(res["fp32"]["emb"] * res["bf16"]["emb"], axis=1)))
    row = {
        "dataset": name,
        "n_query": int(q.sum()),
        "n_database": int(g.sum()),
        "top1_fp32": round(100 * res["fp32"]["top1"], 2),
        "top1_bf16": round(100 * res["bf16"]["top1"], 2),
        "mAP_fp32": round(100 * res["fp32"]["mAP"], 2),
        "mAP_bf16": round(100 * res["bf16"]["mAP"], 2),
        "nn_changed_pct": round(100 * float(np.mean(res["fp32"]["nn"] != res["bf16"]["nn"])), 2),
        "mean_cosine_fp32_bf16": round(cos, 5),
        "speedup_bf16": round(res["fp32"]["secs"] / res["bf16"]["secs"], 2),
    }
    if "ort" in res:
        row.update(
            top1_onnxruntime=round(100 * res["ort"]["top1"], 2),
            nn_changed_onnxruntime_pct=round(100 * float(np.mean(res["fp32"]["nn"] != res["ort"]["nn"])), 2),
            speedup_onnxruntime=round(res["fp32"]["secs"] / res["ort"]["secs"], 2),
        )
    return row


def summary_tables(rows: list[dict]) -> list[str]:
    """The fp32 / bf16 table, and the torch / onnxruntime one when onnxruntime was scored."""
    columns = ["dataset", "queries", "top-1 fp32", "top-1 bf16", "mAP fp32", "mAP bf16", "1-NN changed",
               "cos(fp32, bf16)", "bf16 speed-up"]  # fmt: skip
    cells = [[r["dataset"], r["n_query"], r["top1_fp32"], r["top1_bf16"], r["mAP_fp32"], r["mAP_bf16"],
              f"{r['nn_changed_pct']}%", r["mean_cosine_fp32_bf16"], f"{r['speedup_bf16']}x"] for r in rows]  # fmt: skip
    tables = [report.markdown_table(columns, cells)]
    if any("top1_onnxruntime" in r for r in rows):
        columns = [
            "dataset",
            "top-1 torch fp32",
            "top-1 onnxruntime fp32",
            "1-NN changed",
            "onnxruntime speed-up",
        ]
        cells = [[r["dataset"], r["top1_fp32"], r["top1_onnxruntime"], f"{r['nn_changed_onnxruntime_pct']}%",
                  f"{r['speedup_onnxruntime']}x"] for r in rows]  # fmt: skip
        tables.append(report.markdown_table(columns, cells))
    return tables


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default=None, help="exported model dir or Hub id (default: ImageNet Lite0)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="default: encode's own")
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    model, proc, desc = load_model(args, device)
    out = {"date": dt.date.today().isoformat(), "model": desc, "device": str(device), "rows": []}
    for name in SPLITS:
        out["rows"].append(compare_split(model, proc, name, args, device))
        print(json.dumps(out["rows"][-1]), flush=True)
    title = f"{desc}, {args.size} px, {device}, {out['date']}"
    return report.finish(out, args.json_out, title, *summary_tables(out["rows"]))


if __name__ == "__main__":
    main()
