"""Export a feature extractor to ONNX (dynamic batch) and check it with onnxruntime against PyTorch.

The graph takes ``pixel_values`` ``[B, 3, H, W]`` float32 (already preprocessed) and returns ``embeddings``
``[B, D]``, L2-normalised, exactly what ``AnimalReIDModel`` returns. The preprocessing (size, resample, mean,
std) is stored in the ONNX metadata (``metadata_props``) and beside the file as ``<name>.preprocessor.json``, so a
runtime without PyTorch knows how to prepare images.

Usage::

    python -m animal_reid.onnx_export MODEL_DIR model.onnx          # exports, then checks with onnxruntime

The graph is exported and checked in memory; only then are the two files written, each atomically
(:func:`animal_reid.manifest.replace_file`). An existing file is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from animal_reid.extras import exit_without_extra
from animal_reid.manifest import OutputError, replace_file
from modeling.encoding_animal_reid import export_onnx_graph

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "embeddings"  # the names export_onnx_graph gives the graph
TOOL = "animal_reid.onnx_export"


@dataclass
class OnnxCheck:
    """onnxruntime vs PyTorch on one batch."""

    batch_size: int
    max_abs_diff: float
    min_cosine: float

    def ok(self, atol: float = 1e-4, min_cosine: float = 0.9999) -> bool:
        return self.max_abs_diff <= atol and self.min_cosine >= min_cosine


def _load(model_or_dir: Any):
    if isinstance(model_or_dir, str | Path):
        from transformers import AutoImageProcessor, AutoModel

        model = AutoModel.from_pretrained(model_or_dir, trust_remote_code=True)
        try:
            processor = AutoImageProcessor.from_pretrained(model_or_dir, trust_remote_code=True)
        except (OSError, ValueError):
            processor = None
        return model, processor
    return model_or_dir, getattr(model_or_dir, "_image_processor", None)


def _preprocessing(model, processor) -> dict[str, Any]:
    if processor is None:
        processor = model.get_image_processor()
    return {
        "size": dict(processor.size),
        "resample": processor.resample,
        "do_normalize": processor.do_normalize,
        "image_mean": list(processor.image_mean),
        "image_std": list(processor.image_std),
        "color": "RGB",
        "layout": "NCHW float32, values scaled to [0, 1] then normalised",
    }


def preprocessor_path(out_path: str | Path) -> Path:
    """The JSON file written beside an ONNX file: ``model.onnx`` -> ``model.preprocessor.json``."""
    return Path(out_path).with_suffix(".preprocessor.json")


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """Before any work: an output that is a folder, or exists without ``overwrite``, is refused."""
    for path in paths:
        if path.is_dir():
            raise OutputError(f"output {path} is a folder, not a file")
        if path.exists() and not overwrite:
            raise OutputError(
                f"output {path} exists: pass --overwrite to replace it, or choose another file name"
            )


def export_onnx(
    model_or_dir: Any,
    out_path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    atol: float = 1e-4,
    overwrite: bool = False,
) -> OnnxCheck | None:
    """Export ``model_or_dir`` (an ``AnimalReIDModel`` or a saved folder) to ``out_path`` and its preprocessing
    to :func:`preprocessor_path`.

    With ``check`` (default), runs onnxruntime on the CPU on a batch of a size other than the export batch
    (so the dynamic batch axis is exercised) and raises ``RuntimeError``, writing nothing, if the embeddings
    differ from PyTorch's by more than ``atol`` or by a cosine below 0.9999. An existing file is replaced only
    with ``overwrite`` (:class:`~animal_reid.manifest.OutputError` otherwise, before the export), atomically.
    """
    out_path = Path(out_path).expanduser()
    _refuse_existing([out_path, preprocessor_path(out_path)], overwrite)
    model, processor = _load(model_or_dir)
    model = model.float().eval()
    h, w = model.config.image_size
    data = _onnx_bytes(model, _preprocessing(model, processor), opset)
    result = None
    if check:
        x = torch.randn(3, 3, h, w, generator=torch.Generator().manual_seed(1))
        result = compare_with_pytorch(model, data, x)
        if not result.ok(atol):
            raise RuntimeError(
                f"{out_path}: onnxruntime differs from PyTorch: max abs diff {result.max_abs_diff:.3g} "
                f"(tolerance {atol:g}), min cosine {result.min_cosine:.6f} (needs >= 0.9999); nothing written"
            )
        logger.info(
            "onnxruntime matches PyTorch: max abs diff %.2g, min cosine %.7f",
            result.max_abs_diff,
            result.min_cosine,
        )
    prep = (json.dumps(_preprocessing(model, processor), indent=2) + "\n").encode()
    replace_file(out_path, lambda f: f.write(data), overwrite=overwrite, tool=TOOL, what="output")
    replace_file(
        preprocessor_path(out_path), lambda f: f.write(prep), overwrite=overwrite, tool=TOOL, what="output"
    )
    logger.info("exported %s (opset %d, %s, %dx%d input)", out_path, opset, model.config.backbone, h, w)
    return result


def _onnx_bytes(model, prep: dict[str, Any], opset: int) -> bytes:
    """The checked ONNX graph of ``model`` with the preprocessing in its metadata, serialised in memory."""
    import onnx

    h, w = model.config.image_size
    dummy = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    # the same exporter as encode(engine="onnxruntime"), with the normalised output
    export_onnx_graph(model, buf, h, w, normalized=True, opset=opset, dummy=dummy)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    meta = {
        "preprocessing": json.dumps(prep),
        "embedding_dim": str(model.embedding_dim),
        "backbone": model.config.backbone,
        "producer": TOOL,
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def onnx_session(path: str | Path | bytes, threads: int | None = None):
    """A CPU onnxruntime session for an exported file (or the serialised model itself)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_embed(session, pixel_values: np.ndarray | torch.Tensor) -> np.ndarray:
    """Run an exported model on preprocessed ``pixel_values`` ``[B, 3, H, W]``; returns ``[B, D]`` float32."""
    if isinstance(pixel_values, torch.Tensor):
        pixel_values = pixel_values.detach().cpu().numpy()
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixel_values, dtype=np.float32)})[0]


def compare_with_pytorch(model, onnx_path: str | Path | bytes, pixel_values: torch.Tensor) -> OnnxCheck:
    """Embeddings of ``model`` and of the exported file (or bytes) on the same batch: max abs diff, min cosine."""
    with torch.inference_mode():
        ref = model.eval()(pixel_values=pixel_values).embeddings.float().numpy()
    got = onnx_embed(onnx_session(onnx_path), pixel_values)
    if got.shape != ref.shape:
        raise RuntimeError(f"onnxruntime returned shape {got.shape}, PyTorch {ref.shape}")
    cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1))
    return OnnxCheck(len(ref), float(np.abs(got - ref).max()), float(cos.min()))


def main(argv: list[str] | None = None) -> OnnxCheck | None:
    """The command line. Returns the check when ``argv`` is given (from Python); None from the command line,
    where the console script exits with the return value."""
    parser = argparse.ArgumentParser(
        prog="python -m animal_reid.onnx_export",
        description="Export a saved animal-reid feature extractor to ONNX (dynamic batch) and check it. "
        "An existing output is replaced only with --overwrite, atomically.",
    )
    parser.add_argument("model_dir", help="folder written by save_pretrained (or a converter)")
    parser.add_argument("out", help="output .onnx path (<name>.preprocessor.json is written beside it)")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing .onnx / .preprocessor.json file"
    )
    args = parser.parse_args(argv)
    exit_without_extra("animal-reid-onnx-export", "onnx")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = export_onnx(
            args.model_dir, args.out, opset=args.opset, check=not args.no_check, overwrite=args.overwrite
        )
    except (OutputError, OSError, ValueError) as err:  # one line naming the file: refused output, bad model
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    msg = f"wrote {args.out}"
    if result is not None:
        msg += (
            f"; onnxruntime vs PyTorch on {result.batch_size} inputs: max abs diff {result.max_abs_diff:.2g}, "
            f"min cosine {result.min_cosine:.7f}"
        )
    print(msg)
    return result if argv is not None else None


if __name__ == "__main__":
    main()
