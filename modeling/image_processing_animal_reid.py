"""The single preprocessing path of the re-ID model: training, evaluation and inference all use it.

Steps, per image: load and validate (EXIF orientation honoured, any mode converted to RGB correctly or
refused), optional crop to a bounding box ``[x, y, w, h]`` rotated by ``theta`` radians about its centre,
resize to ``size`` (squash, no aspect-preserving crop: re-ID crops are already tight), scale to [0, 1],
normalise. Training augmentations plug in through ``augment`` (applied to the cropped PIL image before the
resize) and may add to this path, never replace it.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: PIL filters by name; ``bilinear_noaa`` is bilinear without antialiasing, the closest match to OpenCV's
#: INTER_LINEAR (within one grey level: OpenCV rounds fixed-point weights differently).
RESAMPLES = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming", "bilinear_noaa")
_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_PIL_INT_TO_NAME = {int(v): k for k, v in _PIL_FILTERS.items()}


class InvalidImageError(ValueError):
    """An image (or its box) that cannot give a meaningful embedding."""


def _describe(source: Any) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    if isinstance(source, bytes | bytearray):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL {source.mode} {source.size[0]}x{source.size[1]}>"
    if isinstance(source, np.ndarray):
        return f"<array {source.dtype} {tuple(source.shape)}>"
    return f"<{type(source).__name__}>"


class AnimalReIDImageProcessor(BaseImageProcessor):
    r"""Preprocessing for :class:`AnimalReIDModel`.

    Args:
        size: ``{"height": H, "width": W}`` (an int means a square).
        resample: one of ``RESAMPLES`` (a PIL integer filter is accepted too).
        do_normalize, image_mean, image_std: normalisation after scaling to [0, 1].
        min_side: smallest accepted image or box side in pixels; smaller inputs are refused.
        background: RGB colour (0-255) that transparent pixels are composited on; the default is the
            ImageNet mean, which normalises to about zero.
        jpeg_draft: let libjpeg decode large JPEGs at 1/2, 1/4 or 1/8 scale when the region resized to ``size``
            (the image, or its bounding box) still has at least that many pixels (several times faster on
            full-size photos; slightly different pixels, so it is a saved preprocessing choice).
        resize_backend: ``"torch"`` (default) runs ``bilinear`` resizing with torch's antialiased uint8 kernel,
            about 2x faster than PIL on the CPU and equal to it up to rounding (differences of 1 grey level on
            about 1% of the pixels of downscaled photos); ``"pil"`` uses PIL. Other resamples always use PIL
            (or torch for ``bilinear_noaa``).
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: int | dict[str, int] | None = None,
        resample: str | int = "bilinear",
        do_normalize: bool = True,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        min_side: int = 8,
        background: Sequence[int] = (124, 116, 104),
        jpeg_draft: bool = False,
        resize_backend: str = "torch",
        **kwargs,
    ):
        # BaseImageProcessor's kwargs machinery is bypassed on purpose: this processor has its own
        # validated attributes and its own preprocess.
        kwargs.pop("image_processor_type", None)
        auto_map = kwargs.pop("auto_map", None)
        super().__init__(**kwargs)
        if auto_map is not None:
            self.auto_map = auto_map
        if size is None:
            size = {"height": 224, "width": 224}
        if isinstance(size, int):
            size = {"height": size, "width": size}
        if not (isinstance(size, dict) and {"height", "width"} <= set(size)):
            raise ValueError(f"size must be an int or {{'height': H, 'width': W}}, got {size!r}")
        if not all(isinstance(size[k], int) and size[k] > 0 for k in ("height", "width")):
            raise ValueError(f"size values must be positive ints, got {size!r}")
        if isinstance(resample, int) and not isinstance(resample, bool):
            if resample not in _PIL_INT_TO_NAME:
                raise ValueError(f"resample must be one of {RESAMPLES} or a PIL filter, got {resample!r}")
            resample = _PIL_INT_TO_NAME[resample]
        if resample not in RESAMPLES:
            raise ValueError(f"resample must be one of {RESAMPLES}, got {resample!r}")
        if len(image_mean) != 3 or len(image_std) != 3 or any(s <= 0 for s in image_std):
            raise ValueError(
                f"image_mean/image_std need 3 values (std > 0), got {image_mean!r} / {image_std!r}"
            )
        if not (isinstance(min_side, int) and min_side >= 1):
            raise ValueError(f"min_side must be an int >= 1, got {min_side!r}")
        if len(background) != 3 or not all(0 <= int(c) <= 255 for c in background):
            raise ValueError(f"background must be 3 values in 0..255, got {background!r}")
        self.size = {"height": int(size["height"]), "width": int(size["width"])}
        self.resample = resample
        self.do_normalize = bool(do_normalize)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.min_side = min_side
        self.background = [int(c) for c in background]
        if resize_backend not in ("torch", "pil"):
            raise ValueError(f"resize_backend must be 'torch' or 'pil', got {resize_backend!r}")
        self.jpeg_draft = bool(jpeg_draft)
        self.resize_backend = resize_backend

    # ------------------------------------------------------------------ loading
    def load_image(self, image: Any, *, target_size: tuple[int, int] | None = None) -> Image.Image:
        """Open and validate one image; returns an RGB PIL image with EXIF orientation applied.

        ``target_size`` (width, height) lets JPEG decoding use a reduced scale when ``jpeg_draft`` is on.
        Raises :class:`InvalidImageError` naming the problem for unreadable, empty, truncated, too small or
        otherwise unusable input.
        """
        return self._load(image, target_size=target_size)[0]

    def _load(
        self,
        image: Any,
        *,
        target_size: tuple[int, int] | None = None,
        box: Sequence[float] | None = None,
        theta: float = 0.0,
    ) -> tuple[Image.Image, int]:
        """:meth:`load_image`, returning also the JPEG reduction factor used (1, 2, 4 or 8).

        With ``jpeg_draft``, libjpeg decodes at 1/2, 1/4 or 1/8 scale when the region that will be resized to
        ``target_size`` (the whole image, or the part of ``box`` inside it) stays at least that size and at
        least ``min_side`` pixels per side; coordinates in the returned image are the original's divided by
        the factor.
        """
        name = _describe(image)
        if isinstance(image, str | os.PathLike):
            path = os.fspath(image)
            if not os.path.exists(path):
                raise InvalidImageError(f"{name}: file not found")
            if os.path.getsize(path) == 0:
                raise InvalidImageError(f"{name}: file is empty (0 bytes)")
            image = _open(path, name)
        elif isinstance(image, bytes | bytearray | memoryview):
            if len(image) == 0:
                raise InvalidImageError("image bytes are empty (0 bytes)")
            image = _open(io.BytesIO(bytes(image)), name)
        elif isinstance(image, dict) and ("bytes" in image or "path" in image):
            # a datasets Image() value with decode=False
            src = image.get("bytes") or image.get("path")
            return self._load(src, target_size=target_size, box=box, theta=theta)
        elif isinstance(image, np.ndarray):
            image = _from_array(image, name)
        elif isinstance(image, torch.Tensor):
            raise InvalidImageError(
                f"{name}: pass images as paths, bytes, PIL images or HxWxC uint8 arrays, not tensors "
                "(already-normalised tensors go straight to the model as pixel_values)"
            )
        elif not isinstance(image, Image.Image):
            raise InvalidImageError(
                f"unsupported image input {name}; expected a path, bytes, PIL image or array"
            )

        full_size = None
        if (
            self.jpeg_draft
            and target_size is not None
            and image.format == "JPEG"
            and image.mode in ("RGB", "L")
        ):
            swap = _exif_swaps_axes(image)
            w0, h0 = image.size[::-1] if swap else image.size  # as displayed, after EXIF orientation
            scale = _min_decode_scale((w0, h0), target_size, box, theta, self.min_side)
            if scale < 0.5:
                want = (math.ceil(w0 * scale), math.ceil(h0 * scale))
                image.draft(image.mode, want[::-1] if swap else want)
                full_size = (w0, h0)
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise InvalidImageError(f"{name}: cannot decode image, truncated or corrupt ({err})") from err
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # malformed EXIF must not lose the image: keep it unrotated
            pass
        w, h = image.size
        factor = 1 if full_size is None else max(1, round(full_size[0] / w))
        if min(w, h) * factor < self.min_side:
            raise InvalidImageError(
                f"{name}: image is {w * factor}x{h * factor} pixels; at least {self.min_side} per side is required"
            )
        return self._to_rgb(image, name), factor

    def _to_rgb(self, image: Image.Image, name: str) -> Image.Image:
        mode = image.mode
        if mode == "RGB":
            return image
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            arr = np.asarray(image).astype(np.float64)
            peak = 65535.0 if (mode.startswith("I;16") or arr.max() > 255) else 255.0
            if arr.min() < 0 or arr.max() > 65535:
                raise InvalidImageError(f"{name}: integer image values outside 0..65535 (mode {mode})")
            arr8 = np.clip(np.round(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
            return Image.fromarray(arr8, mode="L").convert("RGB")
        if mode == "F":
            arr = np.asarray(image, dtype=np.float64)
            if not np.isfinite(arr).all():
                raise InvalidImageError(f"{name}: float image contains NaN or infinity")
            lo, hi = float(arr.min()), float(arr.max())
            if lo >= 0 and hi <= 1:
                arr = arr * 255.0
            elif lo < 0 or hi > 255:
                raise InvalidImageError(
                    f"{name}: float image values in [{lo:.3g}, {hi:.3g}]; expected [0, 1] or [0, 255]"
                )
            return Image.fromarray(np.round(arr).astype(np.uint8), mode="L").convert("RGB")
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (*self.background, 255))
            return Image.alpha_composite(canvas, rgba).convert("RGB")
        if mode in ("CMYK", "YCbCr", "LAB", "HSV", "L", "P", "1", "RGBX", "RGBa", "La"):
            return image.convert("RGB")
        raise InvalidImageError(f"{name}: unsupported image mode {mode!r}")

    # ------------------------------------------------------------------ geometry
    def crop(self, image: Image.Image, box: Sequence[float] | None = None, theta: float = 0.0) -> Image.Image:
        """Crop ``image`` to ``box = [x, y, w, h]`` rotated by ``theta`` radians about the box centre.

        A box partly outside the image is clipped (rotated boxes sample the background colour there); a box
        with no area, non-finite values or entirely outside the image is refused.
        """
        if box is None:
            if theta:
                raise InvalidImageError("theta was given without a bounding box")
            return image
        if len(box) != 4:
            raise InvalidImageError(f"bounding box must be [x, y, w, h], got {list(box)!r}")
        x, y, w, h = (float(v) for v in box)
        theta = float(theta or 0.0)
        if not all(math.isfinite(v) for v in (x, y, w, h, theta)):
            raise InvalidImageError(f"bounding box {list(box)} / theta {theta} has non-finite values")
        if w <= 0 or h <= 0:
            raise InvalidImageError(f"bounding box {list(box)} has zero or negative area (w={w}, h={h})")
        iw, ih = image.size
        if theta == 0.0:
            x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, iw), min(y + h, ih)
            if x1 - x0 < 1 or y1 - y0 < 1:
                raise InvalidImageError(f"bounding box {list(box)} lies outside the {iw}x{ih} image")
            if min(x1 - x0, y1 - y0) < self.min_side:
                raise InvalidImageError(
                    f"bounding box {list(box)} is {x1 - x0:.0f}x{y1 - y0:.0f} pixels inside the image; "
                    f"at least {self.min_side} per side is required"
                )
            return image.crop((round(x0), round(y0), round(x1), round(y1)))
        # rotated box: corners of the box rotated about its centre must touch the image
        cx, cy = x + w / 2.0, y + h / 2.0
        c, s = math.cos(theta), math.sin(theta)
        corners = [
            (cx + c * dx - s * dy, cy + s * dx + c * dy) for dx in (-w / 2, w / 2) for dy in (-h / 2, h / 2)
        ]
        xs, ys = [p[0] for p in corners], [p[1] for p in corners]
        if max(xs) <= 0 or max(ys) <= 0 or min(xs) >= iw or min(ys) >= ih:
            raise InvalidImageError(
                f"rotated bounding box {list(box)} (theta={theta}) lies outside the {iw}x{ih} image"
            )
        if min(w, h) < self.min_side:
            raise InvalidImageError(
                f"bounding box {list(box)} is smaller than {self.min_side} pixels per side"
            )
        ow, oh = max(1, round(w)), max(1, round(h))
        # output pixel (u, v) samples the image at centre + R(theta) @ (u - w/2, v - h/2)
        a, b = c * w / ow, -s * h / oh
        d, e = s * w / ow, c * h / oh
        cst = cx - c * w / 2 + s * h / 2
        fst = cy - s * w / 2 - c * h / 2
        return image.transform(
            (ow, oh),
            Image.Transform.AFFINE,
            (a, b, cst, d, e, fst),
            resample=Image.Resampling.BILINEAR,
            fillcolor=tuple(self.background),
        )

    def resize_uint8(self, image: Image.Image) -> torch.Tensor:
        """Resize to ``size``; returns a uint8 CHW tensor (a quarter of the bytes of float32, for worker IPC)."""
        th, tw = self.size["height"], self.size["width"]
        if self.resample == "bilinear_noaa":
            t = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
            if t.shape[1:] != (th, tw):
                t = F.interpolate(
                    t[None].float(), size=(th, tw), mode="bilinear", align_corners=False, antialias=False
                )[0]
                t = t.clamp_(0, 255).round_().to(torch.uint8)
            return t.contiguous()
        if self.resample == "bilinear" and self.resize_backend == "torch":
            t = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # HWC memory: fast path
            if t.shape[1:] != (th, tw):
                t = F.interpolate(
                    t[None], size=(th, tw), mode="bilinear", align_corners=False, antialias=True
                )[0]
            return t.contiguous()
        if image.size != (tw, th):
            image = image.resize((tw, th), _PIL_FILTERS[self.resample])
        arr = np.asarray(image, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()

    def resize(self, image: Image.Image) -> torch.Tensor:
        """Resize to ``size`` and return a float32 CHW tensor in [0, 1]."""
        return self.resize_uint8(image).float().div_(255.0)

    def normalize_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """Normalise a float tensor in [0, 1] (CHW or NCHW) with ``image_mean`` / ``image_std``."""
        if not self.do_normalize:
            return t
        mean = torch.tensor(self.image_mean, dtype=t.dtype, device=t.device).view(-1, 1, 1)
        std = torch.tensor(self.image_std, dtype=t.dtype, device=t.device).view(-1, 1, 1)
        return (t - mean) / std

    def normalize_uint8(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N)CHW from :meth:`preprocess_uint8`, on any device, to the float32 model input.

        Same arithmetic as :meth:`preprocess_one` (scale by 1/255, then normalise), so both paths agree.
        """
        if batch.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 tensor, got {batch.dtype}")
        return self.normalize_tensor(batch.float().div_(255.0))

    # ------------------------------------------------------------------ public API
    def preprocess_uint8(
        self,
        image: Any,
        box: Sequence[float] | None = None,
        theta: float | None = 0.0,
        augment: Callable[[Image.Image], Image.Image] | None = None,
    ) -> torch.Tensor:
        """Load, validate, crop, (augment,) and resize one image into a uint8 CHW tensor (not normalised).

        The decode-heavy half of :meth:`preprocess_one`, for DataLoader workers: the batch crosses the process
        boundary as uint8 and :meth:`normalize_uint8` finishes it on the model's device.
        """
        theta = float(theta or 0.0)
        if self.jpeg_draft:
            target = (self.size["width"], self.size["height"])
            img, factor = self._load(image, target_size=target, box=box, theta=theta)
        else:
            img, factor = self.load_image(image), 1
        if factor == 1 or box is None:
            img = self.crop(img, box, theta)
        else:
            try:
                img = self.crop(img, [float(v) / factor for v in box], theta)
            except InvalidImageError:  # report the problem in the caller's coordinates, from a full decode
                img = self.crop(self.load_image(image), box, theta)
        if augment is not None:
            img = augment(img)
            if not isinstance(img, Image.Image) or img.mode != "RGB":
                raise TypeError("augment must return an RGB PIL image")
        return self.resize_uint8(img)

    def preprocess_one(
        self,
        image: Any,
        box: Sequence[float] | None = None,
        theta: float | None = 0.0,
        augment: Callable[[Image.Image], Image.Image] | None = None,
    ) -> torch.Tensor:
        """Load, validate, crop, (augment,) resize and normalise one image into a CHW float32 tensor."""
        return self.normalize_uint8(self.preprocess_uint8(image, box, theta, augment))

    def preprocess(
        self,
        images: Any,
        boxes: Sequence[Sequence[float] | None] | None = None,
        thetas: Sequence[float | None] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Preprocess one image or a list of images into ``BatchFeature(pixel_values=[B, 3, H, W])``."""
        single = not isinstance(images, list | tuple)
        if single:
            images = [images]
            if boxes is not None and (
                len(boxes) == 4 and not isinstance(boxes[0], list | tuple | type(None))
            ):
                boxes = [boxes]
            if thetas is not None and not isinstance(thetas, list | tuple):
                thetas = [thetas]
        n = len(images)
        if n == 0:
            raise ValueError("no images given")
        boxes = list(boxes) if boxes is not None else [None] * n
        thetas = list(thetas) if thetas is not None else [0.0] * n
        if len(boxes) != n or len(thetas) != n:
            raise ValueError(f"got {n} images but {len(boxes)} boxes and {len(thetas)} thetas")
        pixel_values = torch.stack(
            [self.preprocess_one(im, b, t) for im, b, t in zip(images, boxes, thetas, strict=True)]
        )
        if return_tensors in ("np", "numpy"):
            return BatchFeature(data={"pixel_values": pixel_values.numpy()})
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type="pt")

    def __call__(self, images: Any, *args, **kwargs) -> BatchFeature:
        return self.preprocess(images, *args, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "size": dict(self.size),
            "resample": self.resample,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "min_side": self.min_side,
            "background": list(self.background),
            "jpeg_draft": self.jpeg_draft,
            "resize_backend": self.resize_backend,
            "image_processor_type": type(self).__name__,
        }
        auto_map = getattr(self, "auto_map", None)
        if auto_map:
            out["auto_map"] = auto_map
        return out

    @classmethod
    def from_model_config(cls, config: Any, **overrides) -> AnimalReIDImageProcessor:
        """The processor matching a model config's input size and normalisation."""
        h, w = config.image_size
        kwargs = {
            "size": {"height": h, "width": w},
            "image_mean": config.image_mean,
            "image_std": config.image_std,
        }
        kwargs.update(overrides)
        return cls(**kwargs)


def _exif_swaps_axes(image: Image.Image) -> bool:
    """Whether the EXIF orientation (5-8) turns the stored image by 90 degrees."""
    try:
        return image.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # malformed EXIF: exif_transpose will leave the image as stored
        return False


def _min_decode_scale(
    size: tuple[int, int],
    target: tuple[int, int],
    box: Sequence[float] | None,
    theta: float,
    min_side: int,
) -> float:
    """Smallest decoding scale (<= 1) at which the region resized to ``target`` keeps at least its pixels.

    The region is the image, or the box (its part inside the image when not rotated). Anything invalid
    returns 1.0: a full decode, so the usual validation reports it.
    """
    w0, h0 = size
    if box is None:
        rw, rh = float(w0), float(h0)
    else:
        try:
            x, y, w, h = (float(v) for v in box)
        except (TypeError, ValueError):
            return 1.0
        if not all(math.isfinite(v) for v in (x, y, w, h, theta)) or w <= 0 or h <= 0:
            return 1.0
        if theta == 0.0:
            w, h = min(x + w, w0) - max(x, 0.0), min(y + h, h0) - max(y, 0.0)
            if w < 1 or h < 1:
                return 1.0
        rw, rh = w, h
    return min(1.0, max(target[0] / rw, target[1] / rh, min_side / min(rw, rh)))


def _open(fp: Any, name: str) -> Image.Image:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise InvalidImageError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set by some other code; refusing to decode silently padded images"
        )
    try:
        return Image.open(fp)
    except UnidentifiedImageError as err:
        raise InvalidImageError(f"{name}: not a readable image file ({err})") from err
    except OSError as err:
        raise InvalidImageError(f"{name}: cannot decode image, truncated or corrupt ({err})") from err


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InvalidImageError(f"{name}: expected an HxW, HxWx1, HxWx3 or HxWx4 array")
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InvalidImageError(f"{name}: array contains NaN or infinity")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 1:
            raise InvalidImageError(f"{name}: float array values in [{lo:.3g}, {hi:.3g}]; expected [0, 1]")
        arr = np.round(arr * 255.0).astype(np.uint8)
    else:
        raise InvalidImageError(
            f"{name}: unsupported array dtype {arr.dtype}; expected uint8, uint16 or float in [0, 1]"
        )
    c = arr.shape[2]
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
    return Image.fromarray(arr[:, :, 0] if c == 1 else np.ascontiguousarray(arr), mode=mode)
