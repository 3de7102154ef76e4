"""What :meth:`AnimalReIDPreTrainedModel.encode` runs on: the encode loop, background prefetching and the
onnxruntime engine.

Part of the remote code that ships beside the weights (imported relatively by ``modeling_animal_reid.py``, so
``save_pretrained`` copies it into every export). One ``encode`` call goes through these steps:

1. :func:`plan_encode`: device, batch size, worker processes, streams and threads of the call;
2. :func:`resolve_onnxruntime`: the cached onnxruntime engine (:func:`onnxruntime_engine`) or torch;
3. :func:`build_loader`: a DataLoader, or a :class:`ThreadPrefetch` that decodes (and, streamed, also embeds)
   batches in background threads;
4. :func:`embed_batches`: the batch loop, L2-normalised rows in input order.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .image_processing_animal_reid import AnimalReIDImageProcessor

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# onnxruntime inference engine for encode() on the CPU.
#
# On CPUs, PyTorch eager runs EfficientNet-style networks (depthwise convolutions, BatchNorm, many small ops) far
# below what the hardware allows; onnxruntime runs the same graph with BatchNorm folded and fused kernels. Measured
# on 2 cores (BENCHMARKS.md): Lite0 @ 224, batch 4, 219 img/s against 91 for channels-last eager; efficientnetv2_rw_m
# @ 440, 3.96 against 3.12. The export is done once per model and weights, in memory, and kept in a weak cache.

_ONNX_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def onnxruntime_available() -> bool:
    """Whether the optional ``onnxruntime`` package can be imported (``pip install onnxruntime``)."""
    return importlib.util.find_spec("onnxruntime") is not None


class _OnnxGraph(nn.Module):
    def __init__(self, model: nn.Module, normalized: bool):
        super().__init__()
        self.model, self.normalized = model, normalized

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.normalized:
            return self.model(pixel_values=pixel_values).embeddings
        return self.model._embed(pixel_values)


def export_onnx_graph(
    model: nn.Module,
    f: Any,
    height: int,
    width: int,
    *,
    normalized: bool,
    opset: int = 17,
    dummy: torch.Tensor | None = None,
) -> None:
    """Trace ``model`` to ONNX into ``f`` (a path or a binary file object), with a dynamic batch axis.

    Input ``pixel_values`` ``[B, 3, height, width]``; output ``embeddings`` (the L2-normalised model output,
    ``normalized=True``) or ``features`` (``model._embed``: backbone, pooling, neck). The TorchScript-based
    exporter (``dynamo=False``) is deprecated but needs no extra package, and traces GeM's autocast guard and
    Swin correctly.
    """
    import warnings

    out = "embeddings" if normalized else "features"
    if dummy is None:
        dummy = torch.zeros(2, 3, height, width)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            _OnnxGraph(model, normalized),
            (dummy,),
            f,
            input_names=["pixel_values"],
            output_names=[out],
            dynamic_axes={"pixel_values": {0: "batch"}, out: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


class OnnxRuntimeEngine:
    """``model._embed`` (backbone, pooling, neck: features before L2 normalisation) run by onnxruntime.

    Built by exporting the model with ``torch.onnx.export`` into memory for one input size ``(H, W)`` and a
    dynamic batch; ``engine(pixel_values)`` takes and returns CPU float32 tensors. ``threads`` (onnxruntime's
    intra-op threads) defaults to ``torch.get_num_threads()``. ``spinning`` lets idle onnxruntime threads
    busy-wait (off by default: it starves the threads decoding the next batch). ``onnx_bytes`` reuses an earlier
    export instead of exporting ``model`` again (see :meth:`with_threads`). One engine may be called from several
    threads at once.
    """

    def __init__(
        self,
        model: nn.Module | None,
        height: int,
        width: int,
        threads: int | None = None,
        spinning: bool = False,
        onnx_bytes: bytes | None = None,
    ):
        import io

        # In a try block so that transformers' check_imports (which walks every import of a remote-code file,
        # function bodies included, but skips try blocks) does not make onnxruntime a requirement of loading.
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError(
                "engine='onnxruntime' needs the onnxruntime package: pip install onnxruntime"
            ) from err

        if onnx_bytes is None:
            buf = io.BytesIO()
            export_onnx_graph(model, buf, height, width, normalized=False)
            onnx_bytes = buf.getvalue()
        self.onnx_bytes = onnx_bytes
        self.threads = int(threads or torch.get_num_threads())
        self.spinning = spinning
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: encode() decodes the next batch on the same cores meanwhile
        # (spinning cost 20-30% end to end on 2 cores, BENCHMARKS.md).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_size = (height, width)

    def with_threads(self, threads: int, spinning: bool | None = None) -> OnnxRuntimeEngine:
        """The same exported graph in a new session with ``threads`` intra-op threads (no second export)."""
        spinning = self.spinning if spinning is None else spinning
        return OnnxRuntimeEngine(
            None, *self.input_size, threads=threads, spinning=spinning, onnx_bytes=self.onnx_bytes
        )

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(["features"], {"pixel_values": x})[0])


def _weights_key(model: nn.Module, height: int, width: int) -> tuple:
    # data_ptr changes when tensors are replaced (.to, from_pretrained); _version when they are modified in place
    # (optimiser steps, load_state_dict), so a cached export never outlives the weights it was made from.
    tensors = list(model.parameters()) + list(model.buffers())
    flip = bool(getattr(model.config, "test_time_flip", False))  # part of the graph
    return (height, width, flip, tuple((t.data_ptr(), t._version) for t in tensors))


def onnxruntime_engine(
    model: nn.Module, height: int, width: int, threads: int | None = None
) -> OnnxRuntimeEngine:
    """The cached :class:`OnnxRuntimeEngine` of ``model`` for ``(height, width)`` and ``threads``.

    The model is exported again only when its weights changed; another thread count reuses the export in a new
    session. The cache holds one export per model, weakly (it goes with the model).
    """
    threads = int(threads or torch.get_num_threads())
    key = _weights_key(model, height, width)
    cached = _ONNX_ENGINES.get(model)
    if cached is not None and cached[0] == key:
        sessions = cached[1]
        if threads not in sessions:
            sessions[threads] = next(iter(sessions.values())).with_threads(threads)
        return sessions[threads]
    was_training = model.training
    model.eval()
    try:
        engine = OnnxRuntimeEngine(model, height, width, threads=threads)
    finally:
        model.train(was_training)
    _ONNX_ENGINES[model] = (key, {threads: engine})
    return engine


def default_decode_threads() -> int:
    """Background decoding threads for :meth:`encode` without worker processes: 1 up to 4 cores, then a quarter."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 4 else min(8, cores // 4)


class ThreadPrefetch:
    """Batches of ``dataset[i]`` (uint8 CHW tensors) stacked in order, decoded ahead in background threads.

    PIL decoding and resizing and the forward pass (torch or onnxruntime) release the GIL, so background
    threads overlap them without worker processes or inter-process copies (the fastest path on a few CPU
    cores). ``threads`` batches are decoded at once, one more is queued. With ``step``, each thread also
    runs ``step(batch)`` (the network) and the iterator yields its results: whole batches run start to finish
    on one thread each, ``threads`` at once ("streams"). An exception raised in a thread is raised again here,
    at its batch; batches not yet started are then dropped. One thread with ``step`` (one stream), or a
    single batch, runs inline on the caller's thread: there is nothing to overlap (the caller would only wait
    for the pool's one thread), and a pool would start a thread for every call (the service's micro-batches).
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        threads: int = 1,
        step: Callable | None = None,
        torch_threads: int | None = None,
    ):
        self.dataset, self.batch_size, self.step = dataset, batch_size, step
        self.threads = max(1, int(threads))
        self.torch_threads = torch_threads
        self.ahead = self.threads + 1
        self.n = len(dataset)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def _load(self, start: int) -> torch.Tensor:
        batch = torch.stack([self.dataset[i] for i in range(start, min(start + self.batch_size, self.n))])
        return batch if self.step is None else self.step(batch)

    def __iter__(self):
        from concurrent.futures import ThreadPoolExecutor

        starts = list(range(0, self.n, self.batch_size))
        if self.threads == 1 and (self.step is not None or len(starts) == 1):  # nothing to overlap: no pool
            yield from self._inline(starts)
            return
        # torch_threads: intra-op threads for torch work (resize, normalisation) inside each thread, so N threads
        # do not each fan out over every core. torch.set_num_threads also sets the default that threads started
        # later inherit, so this thread's count is put back once the pool is done.
        saved = torch.get_num_threads()
        init = (lambda: torch.set_num_threads(self.torch_threads)) if self.torch_threads else None
        try:
            with ThreadPoolExecutor(
                self.threads, thread_name_prefix="encode-decode", initializer=init
            ) as pool:
                pending = [pool.submit(self._load, s) for s in starts[: self.ahead]]
                for k in range(len(starts)):
                    batch = pending[k].result()
                    pending[k] = None
                    if k + self.ahead < len(starts):
                        pending.append(pool.submit(self._load, starts[k + self.ahead]))
                    yield batch
        finally:
            if self.torch_threads:
                torch.set_num_threads(saved)

    def _inline(self, starts: list[int]):
        """The batches at ``starts``, one after another on the caller's thread (its torch thread count put back
        after each, so the caller's own work between batches runs with its own setting)."""
        saved = torch.get_num_threads()
        for start in starts:
            if self.torch_threads:
                torch.set_num_threads(self.torch_threads)
            try:
                batch = self._load(start)
            finally:
                if self.torch_threads:
                    torch.set_num_threads(saved)
            yield batch


# ---------------------------------------------------------------------------------------------------------------
# encode(): the steps of one call.


class EncodeInputs(Dataset):
    """The images of one ``encode`` call as a dataset of uint8 CHW tensors (decoded, cropped and resized)."""

    def __init__(
        self,
        images: list[Any],
        boxes: Sequence[Sequence[float] | None] | None,
        thetas: Sequence[float | None] | None,
        processor: AnimalReIDImageProcessor,
    ):
        self.images, self.boxes, self.thetas, self.processor = images, boxes, thetas, processor

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        box = self.boxes[i] if self.boxes is not None else None
        theta = self.thetas[i] if self.thetas is not None else 0.0
        return self.processor.preprocess_uint8(self.images[i], box, theta)


@dataclass
class EncodePlan:
    """How one ``encode`` call runs: the weights' device and dtype, batch size, workers and streams."""

    device: torch.device
    dtype: torch.dtype
    batch_size: int
    num_workers: int
    n_streams: int  # batches run at once, each on its own thread (1 with worker processes)
    per_stream: int  # onnxruntime and torch threads of each stream
    ort_ok: bool  # onnxruntime can run this call: float32 weights on the CPU, fp32 precision


def plan_encode(
    model: nn.Module,
    n_images: int,
    batch_size: int | None,
    precision: str,
    engine: str,
    num_workers: int | None,
    streams: int | None,
    threads: int | None,
) -> EncodePlan:
    """Check ``encode``'s arguments against the model and fill in their defaults (see ``encode``)."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    if batch_size is None:
        batch_size = 32 if device.type == "cuda" else 4
    ort_ok = device.type == "cpu" and dtype == torch.float32 and precision == "fp32"
    if engine == "onnxruntime":
        if not ort_ok:
            raise ValueError(
                "engine='onnxruntime' runs float32 models on the CPU only; got device "
                f"{device.type}, weights {dtype}, precision {precision!r} (use engine='torch')"
            )
        if not onnxruntime_available():
            raise ImportError("engine='onnxruntime' needs the onnxruntime package: pip install onnxruntime")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if streams is not None and streams < 1:
        raise ValueError(f"streams must be >= 1, got {streams}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if num_workers is None:
        num_workers = 0 if device.type == "cpu" else min(8, max(1, (os.cpu_count() or 2) - 1))
    cores = threads or torch.get_num_threads()
    n_streams = 1
    if num_workers == 0:
        n_streams = max(1, min(streams or cores, -(-n_images // batch_size)))
    per_stream = max(1, cores // n_streams)  # onnxruntime and torch threads of each stream
    return EncodePlan(device, dtype, batch_size, num_workers, n_streams, per_stream, ort_ok)


def resolve_onnxruntime(
    model: nn.Module, engine: str, plan: EncodePlan, processor: AnimalReIDImageProcessor
) -> OnnxRuntimeEngine | None:
    """The onnxruntime engine this call runs on, or None for torch (``"auto"``: also on export failure)."""
    if not (engine == "onnxruntime" or (engine == "auto" and plan.ort_ok and onnxruntime_available())):
        return None
    # once per call (cached across calls while the weights stay the same), never per batch
    try:
        return onnxruntime_engine(
            model,
            processor.size["height"],
            processor.size["width"],
            threads=plan.per_stream,
        )
    except Exception as err:  # noqa: BLE001 - any export failure falls back in auto mode
        if engine == "onnxruntime":
            raise RuntimeError(f"could not export the model to onnxruntime: {err}") from err
        logger.warning("onnxruntime export failed (%s); encoding with torch instead", err)
        return None


def stream_step(run_ort: OnnxRuntimeEngine, processor: AnimalReIDImageProcessor) -> Callable:
    """What each stream thread runs on its batch: normalise, onnxruntime forward, L2-normalise."""

    def _stream_step(batch: torch.Tensor) -> torch.Tensor:
        return F.normalize(run_ort(processor.normalize_uint8(batch)), dim=-1)

    return _stream_step


def build_loader(
    dataset: EncodeInputs,
    plan: EncodePlan,
    step: Callable | None,
    decode_threads: int | None,
    show_progress_bar: bool | None,
) -> Iterable:
    """The batches of ``dataset``: from worker processes, or from background threads (embedded there by
    ``step`` when streamed), with a progress bar when asked for (default: more than 8 batches)."""
    if plan.num_workers > 0:
        loader = DataLoader(
            dataset,
            batch_size=plan.batch_size,
            shuffle=False,
            num_workers=plan.num_workers,
            pin_memory=plan.device.type == "cuda",
            persistent_workers=False,
        )
    elif step is not None:
        loader = ThreadPrefetch(dataset, plan.batch_size, plan.n_streams, step, torch_threads=plan.per_stream)
    else:
        loader = ThreadPrefetch(dataset, plan.batch_size, decode_threads or default_decode_threads())
    if show_progress_bar is None:
        show_progress_bar = len(dataset) > 8 * plan.batch_size
    if show_progress_bar:
        from transformers.utils.logging import tqdm

        loader = tqdm(loader, desc="Embedding", unit="batch")
    return loader


def embed_batch(
    model: nn.Module,
    batch: torch.Tensor,
    plan: EncodePlan,
    processor: AnimalReIDImageProcessor,
    run_ort: OnnxRuntimeEngine | None,
    channels_last: bool,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """L2-normalised embeddings of one uint8 batch, by onnxruntime or the model (autocast at ``amp_dtype``)."""
    device = plan.device
    batch = processor.normalize_uint8(batch.to(device=device, non_blocking=True)).to(plan.dtype)
    if run_ort is not None:
        return F.normalize(run_ort(batch), dim=-1)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        emb = model._embed(batch)
    return F.normalize(emb.float(), dim=-1).cpu()


def embed_batches(
    model: nn.Module,
    loader: Iterable,
    plan: EncodePlan,
    processor: AnimalReIDImageProcessor,
    run_ort: OnnxRuntimeEngine | None,
    streamed: bool,
    precision: str,
    channels_last: bool,
) -> torch.Tensor:
    """The batch loop: ``[N, D]`` embeddings in input order, the model's training mode left as it was."""
    # the torch path runs in eval mode; the onnxruntime graph was exported in it, so it skips the two walks
    # over every module (a tenth of a service micro-batch's fixed cost, holding the GIL)
    was_training, switch = model.training, run_ort is None
    if switch:
        model.eval()
    out = []
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    try:
        for batch in loader:
            if streamed:  # already embedded by the stream threads
                out.append(batch)
                continue
            out.append(embed_batch(model, batch, plan, processor, run_ort, channels_last, amp_dtype))
    finally:
        if switch:
            model.train(was_training)
    return torch.cat(out)


def encode_images(
    model: nn.Module,
    images: Iterable[Any],
    *,
    batch_size: int | None = None,
    processor: AnimalReIDImageProcessor | None = None,
    boxes: Sequence[Sequence[float] | None] | None = None,
    thetas: Sequence[float | None] | None = None,
    show_progress_bar: bool | None = None,
    num_workers: int | None = None,
    convert_to_numpy: bool = True,
    precision: str = "fp32",
    channels_last: bool = True,
    engine: str = "auto",
    decode_threads: int | None = None,
    streams: int | None = None,
    threads: int | None = None,
) -> np.ndarray | torch.Tensor:
    """``model.encode(images, ...)`` (:meth:`AnimalReIDPreTrainedModel.encode` documents the arguments)."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {precision!r}")
    if engine not in ("auto", "torch", "onnxruntime"):
        raise ValueError(f"engine must be 'auto', 'torch' or 'onnxruntime', got {engine!r}")
    images = list(images)
    if not images:
        return (
            np.zeros((0, model.embedding_dim), np.float32)
            if convert_to_numpy
            else torch.zeros(0, model.embedding_dim)
        )
    if boxes is not None and len(boxes) != len(images):
        raise ValueError(f"got {len(images)} images but {len(boxes)} boxes")
    if thetas is not None and len(thetas) != len(images):
        raise ValueError(f"got {len(images)} images but {len(thetas)} thetas")
    processor = processor or model.get_image_processor()
    plan = plan_encode(model, len(images), batch_size, precision, engine, num_workers, streams, threads)
    run_ort = resolve_onnxruntime(model, engine, plan, processor)
    streamed = run_ort is not None and plan.num_workers == 0
    step = stream_step(run_ort, processor) if streamed else None
    dataset = EncodeInputs(images, boxes, thetas, processor)
    loader = build_loader(dataset, plan, step, decode_threads, show_progress_bar)
    result = embed_batches(model, loader, plan, processor, run_ort, streamed, precision, channels_last)
    return result.numpy() if convert_to_numpy else result
