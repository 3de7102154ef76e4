"""Would int8 (onnxruntime static quantization) make the CPU embedding path faster without moving rankings?

Answers one question of issue 5 with figures: efficientnetv2_rw_m @ 440 cannot reach 3x the image-by-image
pipeline in fp32 on 2 cores (BENCHMARKS.md section 1), so is int8 the way there?

* **Speed**: the forward pass of each backbone (``--speed``), exported with ``export_onnx_graph`` and run by
  onnxruntime (2 threads, batch 4), in fp32 and after ``onnxruntime.quantization.quantize_static`` (QDQ,
  per-channel int8 weights, uint8 activations calibrated on real photos). Weights as ``bench_embed`` builds them
  (ImageNet-free), which is enough for speed.
* **Rankings**: with a trained model (``--model``, default the real-6 Lite0 run if present, else ImageNet Lite0
  features), MegaDescriptor's closed-set Lion and Nyala splits embedded in fp32 and int8: test-vs-train top-1, mAP,
  the fraction of queries whose nearest neighbour changed, and the embedding cosine; for each calibration method in
  ``--calibration``. Calibration images come from each split's train (database) side, 64 per dataset.

    python benchmarks/probe_int8.py
    python benchmarks/probe_int8.py --model runs/cpu_real6/export --calibration minmax,percentile
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from animal_reid.metrics import evaluate_reid
from benchmarks import report
from benchmarks.common import DEFAULT_DATA, SPLITS, build, find_images, imagenet_lite0, load_split
from modeling import AnimalReIDImageProcessor, AnimalReIDModel
from modeling.encoding_animal_reid import export_onnx_graph

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "runs" / "cpu_real6" / "export"


def quantize(fp32_path: str, out_path: str, calibration: list[np.ndarray], method: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"pixel_values": x[None]}

    pre = fp32_path + ".pre.onnx"
    quant_pre_process(fp32_path, pre, skip_symbolic_shape=True)
    quantize_static(
        pre,
        out_path,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[
            method
        ],
    )


def session(path: str, threads: int = 2):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def img_s(sess, x: np.ndarray, seconds: float = 4.0) -> float:
    sess.run(None, {"pixel_values": x})
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds or n < 2:
        sess.run(None, {"pixel_values": x})
        n += 1
    return n * len(x) / (time.perf_counter() - t)


def speed(spec: str, data_root: Path, tmp: str, repeats: int) -> dict:
    backbone, size = spec.split(":")
    size = int(size)
    model, proc, _ = build(backbone, size, torch.device("cpu"))
    files = find_images(data_root, 36)
    fp = f"{tmp}/{backbone}.onnx"
    export_onnx_graph(model, fp, size, size, normalized=False)
    q8 = f"{tmp}/{backbone}.int8.onnx"
    quantize(fp, q8, [proc.preprocess_one(f).numpy() for f in files[4:36]], "minmax")
    x = np.stack([proc.preprocess_one(f).numpy() for f in files[:4]])
    s32, s8 = session(fp), session(q8)
    fp32, int8 = 0.0, 0.0
    for _ in range(repeats):  # interleaved, best of each
        fp32 = max(fp32, img_s(s32, x))
        int8 = max(int8, img_s(s8, x))
    row = {"backbone": backbone, "size": size, "fp32_img_s": round(fp32, 2), "int8_img_s": round(int8, 2)}
    row["int8_speedup"] = round(int8 / fp32, 2)
    print(json.dumps(row), flush=True)
    return row


def rankings(model, proc, data_root: Path, tmp: str, methods: list[str]) -> list[dict]:
    h, w = proc.size["height"], proc.size["width"]
    fp = f"{tmp}/reid.onnx"
    export_onnx_graph(model, fp, h, w, normalized=True)
    data = {name: load_split(data_root, name) for name in SPLITS}
    rng = np.random.default_rng(0)
    cal_paths = []
    for paths, _, split in data.values():
        cal_paths += list(
            rng.choice([p for p, s in zip(paths, split, strict=True) if s == "train"], 64, replace=False)
        )
    calibration = [proc.preprocess_one(p).numpy() for p in cal_paths]
    sessions = {"fp32": session(fp)}
    for m in methods:
        quantize(fp, f"{tmp}/reid.{m}.onnx", calibration, m)
        sessions[f"int8-{m}"] = session(f"{tmp}/reid.{m}.onnx")
    rows = []
    for name, (paths, ids, split) in data.items():
        x = np.stack([proc.preprocess_one(p).numpy() for p in paths])
        q, g = split == "test", split == "train"
        res = {}
        for k, s in sessions.items():
            e = np.concatenate([s.run(None, {"pixel_values": x[i : i + 8]})[0] for i in range(0, len(x), 8)])
            r = evaluate_reid(e[q], ids[q], gallery_embeddings=e[g], gallery_labels=ids[g], topk=(1, 5))
            res[k] = (e, r, (e[q] @ e[g].T).argmax(1))
        for k in sessions:
            if k == "fp32":
                continue
            cos = np.sum(res["fp32"][0] * res[k][0], axis=1)
            row = {
                "dataset": name,
                "variant": k,
                "n_query": int(q.sum()),
                "top1_fp32": round(100 * res["fp32"][1]["top1"], 2),
                "top1_int8": round(100 * res[k][1]["top1"], 2),
                "mAP_fp32": round(100 * res["fp32"][1]["mAP"], 2),
                "mAP_int8": round(100 * res[k][1]["mAP"], 2),
                "nn_changed_pct": round(100 * float(np.mean(res["fp32"][2] != res[k][2])), 1),
                "cosine_mean": round(float(cos.mean()), 4),
                "cosine_min": round(float(cos.min()), 4),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def ranking_model(model_arg: str | None) -> tuple[AnimalReIDModel, AnimalReIDImageProcessor, str]:
    """``(model, processor, label)`` the rankings are scored with: ``--model``, the real-6 run, or ImageNet Lite0."""
    model_dir = model_arg or (str(DEFAULT_MODEL) if (DEFAULT_MODEL / "config.json").exists() else None)
    if not model_dir:
        model, proc, _ = imagenet_lite0(224)
        return model, proc, "ImageNet EfficientNet-Lite0 features @ 224"
    model = AnimalReIDModel.from_pretrained(model_dir).eval()
    proc = AnimalReIDImageProcessor.from_pretrained(model_dir)
    resolved = Path(model_dir).resolve()
    return model, proc, str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else model_dir


def summary_tables(out: dict) -> list[str]:
    """The speed table and the rankings table."""
    speed_cells = [[r["backbone"], r["size"], r["fp32_img_s"], r["int8_img_s"], f"{r['int8_speedup']}x"]
                   for r in out["speed"]]  # fmt: skip
    rank_columns = ["dataset", "calibration", "top-1 fp32", "top-1 int8", "mAP fp32", "mAP int8", "1-NN changed",
                    "cosine mean / min"]  # fmt: skip
    rank_cells = [[r["dataset"], r["variant"], r["top1_fp32"], r["top1_int8"], r["mAP_fp32"], r["mAP_int8"],
                   f"{r['nn_changed_pct']}%", f"{r['cosine_mean']} / {r['cosine_min']}"] for r in out["rankings"]]  # fmt: skip
    return [
        report.markdown_table(
            ["backbone", "px", "onnxruntime fp32 img/s", "int8 img/s", "int8 speed-up"], speed_cells
        ),
        report.markdown_table(rank_columns, rank_cells),
    ]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default=None, help=f"trained model dir (default {DEFAULT_MODEL} if present)")
    ap.add_argument("--calibration", default="minmax,percentile", help="comma-separated: minmax, percentile")
    ap.add_argument("--speed", default="efficientnet_lite0:224,efficientnetv2_rw_m:440")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    report.require_extra("onnx")
    torch.set_num_threads(2)
    out = {
        "date": dt.date.today().isoformat(),
        "machine": report.machine_description(),
        "speed": [],
        "rankings": [],
    }
    with tempfile.TemporaryDirectory(prefix="probe_int8_") as tmp:
        for spec in filter(None, args.speed.split(",")):
            out["speed"].append(speed(spec, args.data_root, tmp, args.repeats))
        model, proc, out["model"] = ranking_model(args.model)
        out["rankings"] = rankings(model, proc, args.data_root, tmp, args.calibration.split(","))
    title = f"{out['machine']}, {out['date']}, rankings with {out['model']}"
    return report.finish(out, args.json_out, title, *summary_tables(out))


if __name__ == "__main__":
    main()
