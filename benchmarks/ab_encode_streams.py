"""A/B: encode's CPU onnxruntime path with streams (now the default) against the path it replaced.

* **streams** (``model.encode``, default): one thread per core, each decoding and embedding whole batches with a
  single-threaded onnxruntime session.
* **decode thread + one forward** (before commit 5efcc0d): one onnxruntime session using every core runs the
  batches one after another while a background thread decodes the next one. Rebuilt here from the same parts
  (``ThreadPrefetch``, ``onnxruntime_engine``), so only the scheduling differs.

Both write the same embeddings; rounds are interleaved, and the medians are printed with their ratio.

    python benchmarks/ab_encode_streams.py                      # Lite0 @ 224, 384 nyala photos, 5 rounds
    python benchmarks/ab_encode_streams.py --backbone efficientnetv2_rw_m --size 440 --n-images 32 --rounds 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import report
from benchmarks.common import DEFAULT_DATA, build, find_images
from modeling.encoding_animal_reid import ThreadPrefetch, onnxruntime_engine


def old_path(model, proc, files: list[str], batch_size: int) -> np.ndarray:
    """The pre-streams loop: decode one batch ahead in a thread, forward on every core in the main thread."""
    run = onnxruntime_engine(model, proc.size["height"], proc.size["width"], threads=torch.get_num_threads())

    class Inputs(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            return proc.preprocess_uint8(files[i])

    out = [F.normalize(run(proc.normalize_uint8(b)), dim=-1) for b in ThreadPrefetch(Inputs(), batch_size, 1)]
    return torch.cat(out).numpy()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n-images", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    report.require_extra("onnx")
    files = find_images(args.data_root, args.n_images)
    model, proc, _ = build(args.backbone, args.size, torch.device("cpu"))
    paths = {
        "streams": lambda: model.encode(files, batch_size=args.batch_size, show_progress_bar=False),
        "decode_thread_one_forward": lambda: old_path(model, proc, files, args.batch_size),
    }
    for f in paths.values():  # warm up (exports once) and check both give the same embeddings
        f()
    diff = float(np.abs(paths["streams"]() - paths["decode_thread_one_forward"]()).max())
    speeds = {k: [] for k in paths}
    for _ in range(args.rounds):
        for k, f in paths.items():
            t = time.perf_counter()
            f()
            speeds[k].append(len(files) / (time.perf_counter() - t))
        print({k: round(v[-1], 2) for k, v in speeds.items()}, flush=True)
    med = {k: float(np.median(v)) for k, v in speeds.items()}
    out = {
        "date": dt.date.today().isoformat(),
        "machine": report.machine_description(),
        "backbone": args.backbone,
        "size": args.size,
        "n_images": len(files),
        "batch_size": args.batch_size,
        "rounds": {k: [round(x, 2) for x in v] for k, v in speeds.items()},
        "median_img_s": {k: round(v, 2) for k, v in med.items()},
        "streams_vs_old": round(med["streams"] / med["decode_thread_one_forward"], 3),
        "max_abs_diff": diff,
    }
    print(json.dumps(out))
    if args.json_out:
        report.write_json(args.json_out, out)
    return out


if __name__ == "__main__":
    main()
