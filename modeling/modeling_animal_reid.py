"""Animal re-identification model: timm backbone, GeM pooling, embedding neck, sub-center ArcFace head.

* :class:`AnimalReIDModel` is the feature extractor that ships to the Hub: ``pixel_values`` in, an
  L2-normalised embedding out (the first output field and ``pooler_output``, so the
  ``image-feature-extraction`` pipeline returns it).
* :class:`AnimalReIDForMetricLearning` adds the training head of Otarashvili et al. (2024): sub-center
  ArcFace (Deng et al., ECCV 2020) with dynamic per-class margins (Ha et al., Google Landmark Recognition
  2020), and exports the feature extractor alone.

References:
    Otarashvili, L. et al. "Multispecies Animal Re-ID Using a Large Community-Curated Dataset", 2024.
    Deng, J. et al. "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web Faces", ECCV 2020.
    Radenović, F. et al. "Fine-tuning CNN Image Retrieval with No Human Annotation" (GeM), TPAMI 2018.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_animal_reid import AnimalReIDConfig, validate_head
from .image_processing_animal_reid import AnimalReIDImageProcessor

logger = logging.getLogger(__name__)


def _no_autocast(device_type: str):
    return torch.autocast(device_type=device_type, enabled=False)


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
            raise ImportError("engine='onnxruntime' needs the onnxruntime package: pip install onnxruntime") from err

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


class _ThreadPrefetch:
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


class GeM(nn.Module):
    """Generalised-mean pooling over the spatial dims of an NCHW map, computed in fp32.

    ``(mean(clamp(x, eps) ** p)) ** (1 / p)``: p = 1 is average pooling, p → ∞ max pooling.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True):
        super().__init__()
        self.eps = eps
        self.p = nn.Parameter(torch.tensor([float(p)]), requires_grad=learnable)
        self.init_p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _no_autocast(x.device.type):
            p = self.p.float().clamp(min=1e-3)
            x = x.float().clamp(min=self.eps).pow(p)
            return x.mean(dim=(-2, -1)).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={self.p.data.tolist()}, eps={self.eps}"


def dynamic_margins(
    counts: Sequence[int] | np.ndarray | torch.Tensor, margin_min_rad: float, margin_max_rad: float
) -> torch.Tensor:
    """Per-class margins from training image counts (Ha et al. 2020; used by MiewID).

    ``t = n ** -0.25``; ``m = m_min + (t - min t) / (max t - min t) * (m_max - m_min)``, so the rarest identity
    gets ``m_max`` and the most frequent ``m_min``. When every class has the same count all get ``m_max``.
    """
    n = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    if n.ndim != 1 or n.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence, got shape {tuple(n.shape)}")
    if (n < 1).any():
        raise ValueError(
            f"every class needs at least one training image; got counts with minimum {n.min().item():g}"
        )
    t = n.pow(-0.25)
    lo, hi = t.min(), t.max()
    if hi - lo < 1e-12:
        return torch.full_like(t, margin_max_rad, dtype=torch.float32)
    m = margin_min_rad + (t - lo) / (hi - lo) * (margin_max_rad - margin_min_rad)
    return m.float()


class SubCenterArcFaceHead(nn.Module):
    """Sub-center ArcFace with per-class additive angular margins.

    ``k`` unit-norm sub-centers per class; the class cosine is the max over its sub-centers. The target
    logit becomes ``cos(theta + m_y)`` (or ``cos(theta) - sin(pi - m) * m`` once ``theta + m`` would pass pi, the
    standard "easy margin off" fallback), every logit is multiplied by ``scale``. k = 1 with one fixed margin
    is plain ArcFace. Runs in fp32 even under autocast.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        subcenters: int = 3,
        scale: float = 30.0,
        margin_rad: float = 0.5,
    ):
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.subcenters = subcenters
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, in_features))
        self.register_buffer("margins_rad", torch.full((num_classes,), float(margin_rad)), persistent=True)
        nn.init.xavier_uniform_(self.weight)

    @torch.no_grad()
    def set_class_centers(
        self, centers: torch.Tensor, row_norm: float, jitter: float = 0.05, seed: int = 0
    ) -> None:
        """Start every class's sub-centers at ``centers[c]`` (``[C, D]``, e.g. the mean starting embedding of
        the class's training images), each row rescaled to ``row_norm``.

        With k > 1 the sub-centers of a class get a small random tilt (``jitter`` of the row norm, drawn from
        ``seed``) so they can separate. Classes whose center is all zero keep their current weights.
        """
        if centers.shape != (self.num_classes, self.in_features):
            raise ValueError(f"centers must be [{self.num_classes}, {self.in_features}], got {tuple(centers.shape)}")
        c = F.normalize(centers.float(), dim=-1).repeat_interleave(self.subcenters, dim=0)
        if self.subcenters > 1:
            noise = torch.randn(c.shape, generator=torch.Generator().manual_seed(seed))
            c = F.normalize(c + jitter * noise / math.sqrt(self.in_features), dim=-1)
        keep = centers.float().norm(dim=-1).repeat_interleave(self.subcenters) > 0
        w = self.weight.data
        w[keep] = (c[keep] * row_norm).to(w.device, w.dtype)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Class cosines ``[B, C]`` (max over sub-centers), fp32."""
        with _no_autocast(embeddings.device.type):
            e = F.normalize(embeddings.float(), dim=-1)
            w = F.normalize(self.weight.float(), dim=-1)
            cos = F.linear(e, w).view(e.shape[0], self.num_classes, self.subcenters)
            return cos.amax(dim=-1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled logits ``[B, C]``; with ``labels`` the target logit carries its class margin."""
        cos = self.cosine(embeddings)
        if labels is None:
            return cos * self.scale
        with _no_autocast(cos.device.type):
            labels = labels.long().view(-1, 1)
            if labels.numel() != cos.shape[0]:
                raise ValueError(f"got {labels.numel()} labels for {cos.shape[0]} embeddings")
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise ValueError(
                    f"labels must be in [0, {self.num_classes}), got range [{labels.min()}, {labels.max()}]"
                )
            m = self.margins_rad.float().to(cos.device)[labels]  # [B, 1]
            cos_t = cos.gather(1, labels).clamp(-1.0 + 1e-7, 1.0 - 1e-7)
            sin_t = (1.0 - cos_t * cos_t).clamp(min=0.0).sqrt()
            phi = cos_t * torch.cos(m) - sin_t * torch.sin(m)
            th = torch.cos(math.pi - m)
            mm = torch.sin(math.pi - m) * m
            phi = torch.where(cos_t > th, phi, cos_t - mm)
            logits = cos.scatter(1, labels, phi)
            return logits * self.scale

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, subcenters={self.subcenters}, scale={self.scale}"


@dataclass
class AnimalReIDOutput(ModelOutput):
    """Output of :class:`AnimalReIDModel`.

    Args:
        embeddings: ``[B, D]`` L2-normalised embeddings (compare with a dot product).
        pooler_output: the same tensor, for the pipeline's ``pool=True`` and tools expecting it.
        features: ``[B, D]`` neck output before normalisation.
    """

    embeddings: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    features: torch.FloatTensor | None = None


@dataclass
class MetricLearningOutput(ModelOutput):
    """Output of :class:`AnimalReIDForMetricLearning` (same type in training and evaluation).

    Args:
        loss: cross-entropy over the margin logits when ``labels`` are given.
        logits: ``[B, C]`` scaled class cosines (with margins on the targets when ``labels`` are given).
        embeddings: ``[B, D]`` L2-normalised embeddings.
        features: ``[B, D]`` neck output before normalisation.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    features: torch.FloatTensor | None = None


def _make_buffers_persistent(module: nn.Module) -> None:
    # transformers 5 builds the model on the meta device and only fills tensors found in the checkpoint:
    # non-persistent buffers (Swin's relative position index, EVA's rope) would come back as garbage.
    for m in module.modules():
        m._non_persistent_buffers_set.clear()


class AnimalReIDPreTrainedModel(PreTrainedModel):
    config_class = AnimalReIDConfig
    base_model_prefix = "animal_reid"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False

    def _build_embedder(self, config: AnimalReIDConfig) -> None:
        kwargs = dict(config.backbone_kwargs)
        self.backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, **kwargs)
        _make_buffers_persistent(self.backbone)
        num_features = int(self.backbone.num_features)
        if config.pooling == "gem":
            self.pooling = GeM(config.gem_p, config.gem_eps, config.gem_learnable)
        else:
            self.pooling = None
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        if config.embedding_dim > 0:
            self.projection = nn.Linear(num_features, config.embedding_dim)
            dim = config.embedding_dim
        else:
            self.projection = None
            dim = num_features
        self.neck_bn = nn.BatchNorm1d(dim) if config.neck_bn else None
        self.backbone_num_features = num_features
        self.embedding_dim = dim

    def _pool(self, feats: torch.Tensor) -> torch.Tensor:
        pooling = self.config.pooling
        if pooling == "backbone":
            return self.backbone.forward_head(feats, pre_logits=True)
        if feats.ndim != 4:
            raise ValueError(
                f"pooling={pooling!r} needs a spatial feature map, but backbone {self.config.backbone!r} returns a "
                f"{feats.ndim}-D tensor {tuple(feats.shape)} (tokens?); use pooling='backbone'"
            )
        if getattr(self.backbone, "output_fmt", "NCHW") == "NHWC":
            feats = feats.permute(0, 3, 1, 2)
        if pooling == "gem":
            return self.pooling(feats)
        with _no_autocast(feats.device.type):
            if pooling == "avg":
                return feats.float().mean(dim=(-2, -1))
            return feats.float().amax(dim=(-2, -1))

    def _embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Features of a batch (callers normalise them). With ``config.test_time_flip`` in eval mode: the sum of
        the unit features of the images and of their mirror images, whose normalisation is their mean's."""
        x = self._features(pixel_values)
        if getattr(self.config, "test_time_flip", False) and not self.training:
            mirrored = self._features(torch.flip(pixel_values, dims=[-1]))
            x = F.normalize(x.float(), dim=-1) + F.normalize(mirrored.float(), dim=-1)
        return x

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_features(pixel_values)
        x = self.dropout(self._pool(feats))
        if self.projection is not None:
            x = self.projection(x)
        if self.neck_bn is not None:
            with _no_autocast(x.device.type):
                x = self.neck_bn(x.float())
        return x

    def _init_weights(self, module: nn.Module) -> None:
        # Only the layers this package owns; the timm backbone keeps its own init or loaded weights.
        if module is self.projection:
            init.normal_(module.weight, mean=0.0, std=0.01)
            init.zeros_(module.bias)
        elif module is self.neck_bn:
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, GeM):
            init.constant_(module.p, module.init_p)
        elif isinstance(module, SubCenterArcFaceHead):
            init.xavier_uniform_(module.weight)
            init.constant_(
                module.margins_rad, float(self.config.head["margin_rad"]) if self.config.head else 0.5
            )

    # ------------------------------------------------------------------ convenience
    def get_image_processor(self) -> AnimalReIDImageProcessor:
        """The processor saved beside the weights if there is one, else one built from the config."""
        proc = getattr(self, "_image_processor", None)
        if proc is None:
            name = getattr(self.config, "_name_or_path", "") or ""
            if name:
                try:
                    proc = AnimalReIDImageProcessor.from_pretrained(name)
                except Exception:  # no preprocessor_config.json there: fall back to the config
                    proc = None
            if proc is None:
                proc = AnimalReIDImageProcessor.from_model_config(self.config)
            self._image_processor = proc
        return proc

    def set_image_processor(self, processor: AnimalReIDImageProcessor) -> None:
        self._image_processor = processor

    @torch.inference_mode()
    def encode(
        self,
        images: Iterable[Any],
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
        """Embed images (paths, bytes, PIL images or HxWxC arrays); returns ``[N, D]`` unit-norm float32 rows.

        Decoding and preprocessing run in ``num_workers`` DataLoader worker processes, or with 0 in
        ``decode_threads`` background threads of this process (default: 1 up to 4 cores, then a quarter of
        them); either way overlapped with the forward pass. ``num_workers`` defaults to 0 on the CPU (threads
        are faster there: no inter-process copies) and to ``min(8, cores - 1)`` on a GPU. ``precision``
        ("fp32", "bf16", "fp16") autocasts the backbone; pooling, neck and normalisation stay in fp32.
        ``channels_last`` feeds NHWC batches (faster convolutions). ``batch_size`` defaults to 32 on a GPU and
        4 on the CPU, where small batches stay in cache (measured on 2 cores: Lite0 forward 88 img/s at batch 4
        against 59 at batch 32; BENCHMARKS.md).

        ``engine`` runs the network: ``"torch"`` (this module, eager), ``"onnxruntime"`` (the same graph exported
        once to ONNX in memory and run by onnxruntime, CPU and fp32 only; 1.3-2.4x eager on the CPU, agreeing
        to ~1e-6) or ``"auto"`` (default): onnxruntime on the CPU in fp32 when the package is installed,
        falling back to torch with a warning if the export fails; torch otherwise.

        With onnxruntime and no worker processes, ``streams`` batches run at once, each start to finish (decode,
        preprocess, network) on its own thread with ``cores // streams`` onnxruntime threads. Default: one stream
        per core (``torch.get_num_threads()``), at most one per batch. Whole batches in parallel keep every core
        busy without the barriers of one multi-threaded forward pass (on 2 cores, end to end: 1.09-1.18x one
        2-thread forward beside a decoding thread; BENCHMARKS.md). ``decode_threads`` is then unused.

        ``threads``: the onnxruntime threads this call may use in all, shared by its streams (default
        ``torch.get_num_threads()``); callers that run several ``encode`` calls at once (a server's batching
        workers) give each a share of the cores instead of oversubscribing them. The torch engine keeps torch's
        own count.
        """
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {precision!r}")
        if engine not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"engine must be 'auto', 'torch' or 'onnxruntime', got {engine!r}")
        from torch.utils.data import DataLoader, Dataset

        images = list(images)
        if not images:
            return (
                np.zeros((0, self.embedding_dim), np.float32)
                if convert_to_numpy
                else torch.zeros(0, self.embedding_dim)
            )
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"got {len(images)} images but {len(boxes)} boxes")
        if thetas is not None and len(thetas) != len(images):
            raise ValueError(f"got {len(images)} images but {len(thetas)} thetas")
        processor = processor or self.get_image_processor()

        class _Inputs(Dataset):
            def __len__(self):
                return len(images)

            def __getitem__(self, i):
                box = boxes[i] if boxes is not None else None
                theta = thetas[i] if thetas is not None else 0.0
                return processor.preprocess_uint8(images[i], box, theta)

        param = next(self.parameters())
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
                raise ImportError(
                    "engine='onnxruntime' needs the onnxruntime package: pip install onnxruntime"
                )
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
            n_streams = max(1, min(streams or cores, -(-len(images) // batch_size)))
        per_stream = max(1, cores // n_streams)  # onnxruntime and torch threads of each stream
        run_ort = None
        if engine == "onnxruntime" or (engine == "auto" and ort_ok and onnxruntime_available()):
            # once per call (cached across calls while the weights stay the same), never per batch
            try:
                run_ort = onnxruntime_engine(
                    self,
                    processor.size["height"],
                    processor.size["width"],
                    threads=per_stream,
                )
            except Exception as err:  # noqa: BLE001 - any export failure falls back in auto mode
                if engine == "onnxruntime":
                    raise RuntimeError(f"could not export the model to onnxruntime: {err}") from err
                logger.warning("onnxruntime export failed (%s); encoding with torch instead", err)
        streamed = run_ort is not None and num_workers == 0
        if num_workers > 0:
            loader = DataLoader(
                _Inputs(),
                batch_size=batch_size,
                shuffle=False,
                num_workers=num_workers,
                pin_memory=device.type == "cuda",
                persistent_workers=False,
            )
        elif streamed:

            def _stream_step(batch: torch.Tensor) -> torch.Tensor:
                return F.normalize(run_ort(processor.normalize_uint8(batch)), dim=-1)

            loader = _ThreadPrefetch(_Inputs(), batch_size, n_streams, _stream_step, torch_threads=per_stream)
        else:
            loader = _ThreadPrefetch(_Inputs(), batch_size, decode_threads or default_decode_threads())
        if show_progress_bar is None:
            show_progress_bar = len(images) > 8 * batch_size
        if show_progress_bar:
            from transformers.utils.logging import tqdm

            loader = tqdm(loader, desc="Embedding", unit="batch")
        # the torch path runs in eval mode; the onnxruntime graph was exported in it, so it skips the two walks
        # over every module (a tenth of a service micro-batch's fixed cost, holding the GIL)
        was_training, switch = self.training, run_ort is None
        if switch:
            self.eval()
        out = []
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        try:
            for batch in loader:
                if streamed:  # already embedded by the stream threads
                    out.append(batch)
                    continue
                batch = processor.normalize_uint8(batch.to(device=device, non_blocking=True)).to(dtype)
                if run_ort is not None:
                    out.append(F.normalize(run_ort(batch), dim=-1))
                    continue
                if channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                with torch.autocast(
                    device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                ):
                    emb = self._embed(batch)
                out.append(F.normalize(emb.float(), dim=-1).cpu())
        finally:
            if switch:
                self.train(was_training)
        result = torch.cat(out)
        return result.numpy() if convert_to_numpy else result


class AnimalReIDModel(AnimalReIDPreTrainedModel):
    """The feature extractor: image in, L2-normalised re-ID embedding out."""

    def __init__(self, config: AnimalReIDConfig):
        super().__init__(config)
        self._build_embedder(config)
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor, return_dict: bool | None = None, **kwargs
    ) -> AnimalReIDOutput:
        features = self._embed(pixel_values)
        embeddings = F.normalize(features.float(), dim=-1)
        out = AnimalReIDOutput(embeddings=embeddings, pooler_output=embeddings, features=features)
        return out if return_dict is not False else out.to_tuple()


class AnimalReIDForMetricLearning(AnimalReIDPreTrainedModel):
    """Feature extractor + sub-center ArcFace head with dynamic margins, for training."""

    def __init__(self, config: AnimalReIDConfig):
        super().__init__(config)
        if config.head is None:
            raise ValueError("AnimalReIDForMetricLearning needs config.head (at least {'num_classes': N})")
        # from_pretrained(..., head={...}) sets the attribute after the config's own validation
        config.head = validate_head(config.head)
        self._build_embedder(config)
        h = config.head
        self.head = SubCenterArcFaceHead(
            self.embedding_dim, h["num_classes"], h["subcenters"], h["scale"], h["margin_rad"]
        )
        self.post_init()

    def set_margins_from_counts(self, counts: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Set per-class margins from training image counts (``margin_mode="dynamic"``) or to the fixed margin."""
        h = self.config.head
        n = len(counts)
        if n != self.head.num_classes:
            raise ValueError(f"got counts for {n} classes, the head has {self.head.num_classes}")
        if h["margin_mode"] == "dynamic":
            margins = dynamic_margins(counts, h["margin_min_rad"], h["margin_max_rad"])
        else:
            margins = torch.full((n,), h["margin_rad"])
        with torch.no_grad():
            self.head.margins_rad.copy_(margins.to(self.head.margins_rad))
        return self.head.margins_rad.detach().clone()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MetricLearningOutput:
        features = self._embed(pixel_values)
        logits = self.head(features, labels)
        loss = F.cross_entropy(logits, labels.long().view(-1)) if labels is not None else None
        embeddings = F.normalize(features.float(), dim=-1)
        out = MetricLearningOutput(loss=loss, logits=logits, embeddings=embeddings, features=features)
        return out if return_dict is not False else out.to_tuple()

    def export_feature_extractor(self) -> AnimalReIDModel:
        """A standalone :class:`AnimalReIDModel` with this model's backbone, pooling and neck (no head)."""
        fe = AnimalReIDModel(self.config.without_head())
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("head.")}
        fe.load_state_dict(state, strict=True)
        fe.to(next(self.parameters()).device)
        if getattr(self, "_image_processor", None) is not None:
            fe.set_image_processor(self._image_processor)
        return fe.eval()
