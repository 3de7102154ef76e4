"""Export a feature extractor to ONNX (dynamic batch) and check it with onnxruntime against PyTorch.

The graph takes ``pixel_values`` ``[B, 3, H, W]`` float32 (already preprocessed) and returns ``embeddings``
``[B, D]``, L2-normalised, exactly what ``AnimalReIDModel`` returns. The preprocessing (size, resample, mean,
std) is stored in the ONNX metadata (``metadata_props``) and beside the file as ``<name>.preprocessor.json``, so a
runtime without PyTorch knows how to prepare images.

Usage::

    python -m animal_reid.onnx_export MODEL_DIR model.onnx          # exports, then checks with onnxruntime
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from animal_reid.extras import exit_without_extra
from modeling.encoding_animal_reid import export_onnx_graph

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "embeddings"  # the names export_onnx_graph gives the graph


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


def export_onnx(
    model_or_dir: Any,
    out_path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    atol: float = 1e-4,
) -> OnnxCheck | None:
    """Export ``model_or_dir`` (an ``AnimalReIDModel`` or a saved folder) to ``out_path``.

    With ``check`` (default), runs onnxruntime on the CPU on a batch of a size other than the export batch
    (so the dynamic batch axis is exercised) and raises ``RuntimeError`` if the embeddings differ from
    PyTorch's by more than ``atol`` or by a cosine below 0.9999.
    """
    import onnx

    model, processor = _load(model_or_dir)
    model = model.float().eval()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    h, w = model.config.image_size
    dummy = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    # the same exporter as encode(engine="onnxruntime"), with the normalised output
    export_onnx_graph(model, str(out_path), h, w, normalized=True, opset=opset, dummy=dummy)
    prep = _preprocessing(model, processor)
    proto = onnx.load(str(out_path))
    onnx.checker.check_model(proto)
    meta = {
        "preprocessing": json.dumps(prep),
        "embedding_dim": str(model.embedding_dim),
        "backbone": model.config.backbone,
        "producer": "animal_reid.onnx_export",
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out_path))
    out_path.with_suffix(".preprocessor.json").write_text(json.dumps(prep, indent=2) + "\n", encoding="utf-8")
    logger.info("exported %s (opset %d, %s, %dx%d input)", out_path, opset, model.config.backbone, h, w)
    if not check:
        return None
    x = torch.randn(3, 3, h, w, generator=torch.Generator().manual_seed(1))
    result = compare_with_pytorch(model, out_path, x)
    if not result.ok(atol):
        raise RuntimeError(
            f"{out_path}: onnxruntime differs from PyTorch: max abs diff {result.max_abs_diff:.3g} "
            f"(tolerance {atol:g}), min cosine {result.min_cosine:.6f} (needs >= 0.9999)"
        )
    logger.info(
        "onnxruntime matches PyTorch: max abs diff %.2g, min cosine %.7f",
        result.max_abs_diff,
        result.min_cosine,
    )
    return result


def onnx_session(path: str | Path, threads: int | None = None):
    """A CPU onnxruntime session for an exported file."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_embed(session, pixel_values: np.ndarray | torch.Tensor) -> np.ndarray:
    """Run an exported model on preprocessed ``pixel_values`` ``[B, 3, H, W]``; returns ``[B, D]`` float32."""
    if isinstance(pixel_values, torch.Tensor):
        pixel_values = pixel_values.detach().cpu().numpy()
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixel_values, dtype=np.float32)})[0]


def compare_with_pytorch(model, onnx_path: str | Path, pixel_values: torch.Tensor) -> OnnxCheck:
    """Embeddings of ``model`` and of the exported file on the same batch: max abs diff and min cosine."""
    with torch.inference_mode():
        ref = model.eval()(pixel_values=pixel_values).embeddings.float().numpy()
    got = onnx_embed(onnx_session(onnx_path), pixel_values)
    if got.shape != ref.shape:
        raise RuntimeError(f"onnxruntime returned shape {got.shape}, PyTorch {ref.shape}")
    cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1))
    return OnnxCheck(len(ref), float(np.abs(got - ref).max()), float(cos.min()))


def main(argv: list[str] | None = None) -> OnnxCheck | None:
    parser = argparse.ArgumentParser(
        prog="python -m animal_reid.onnx_export",
        description="Export a saved animal-reid feature extractor to ONNX (dynamic batch) and check it.",
    )
    parser.add_argument("model_dir", help="folder written by save_pretrained (or a converter)")
    parser.add_argument("out", help="output .onnx path")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    args = parser.parse_args(argv)
    exit_without_extra("animal-reid-onnx-export", "onnx")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = export_onnx(args.model_dir, args.out, opset=args.opset, check=not args.no_check)
    msg = f"wrote {args.out}"
    if result is not None:
        msg += (
            f"; onnxruntime vs PyTorch on {result.batch_size} inputs: max abs diff {result.max_abs_diff:.2g}, "
            f"min cosine {result.min_cosine:.7f}"
        )
    print(msg)
    return result


if __name__ == "__main__":
    main()
