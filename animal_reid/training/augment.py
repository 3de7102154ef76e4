"""Training augmentations that add to the image processor's preprocessing, never replace it.

The processor (crop to the annotated box, rotate by theta, resize, normalise) is the single
preprocessing path of training, evaluation and inference. `ReIDAugment` runs *between* its two
halves: on the resized uint8 ``[3, H, W]`` tensor of ``processor.preprocess_uint8`` (in a DataLoader
worker), returning a uint8 tensor of the same size, which ``processor.normalize_uint8`` normalises on
the model's device. So the model never sees a different resize or normalisation at training time than
at inference time, and augmented batches still cross the worker boundary as uint8.

Inside, the image is worked on as float in [0, 1] (one rounding back to uint8 at the end). Re-ID safe
defaults: no horizontal flip (left and right flanks of an animal are different patterns), a mild random
resized crop, a small rotation, photometric jitter and random erasing. Every random draw comes from a
``torch.Generator`` seeded per sample, so the augmented epoch is reproducible whatever the number of
DataLoader workers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF


@dataclass
class ReIDAugment:
    """Random re-ID augmentation of one resized uint8 image tensor (``processor.preprocess_uint8``).

    ``augment(pixels, generator)`` takes a uint8 ``[3, H, W]`` tensor and returns a uint8 tensor of the
    same shape, every random choice drawn from ``generator`` (same seed, same output).

    Args:
        image_mean, image_std: the processor's normalisation. ``image_mean`` (in [0, 1]) is the colour that
            rotation corners and erased rectangles are filled with, which normalises to zero.
        crop_scale: range of the area fraction kept by the random resized crop.
        crop_ratio: range of the aspect ratio of the crop.
        rotation_deg: maximum absolute rotation in degrees.
        brightness, contrast, saturation: jitter strengths (factor drawn in [1 - x, 1 + x]).
        erase_prob: probability of erasing one random rectangle (2-20% of the area).
        hflip: flip horizontally with probability 0.5 (off by default; flanks differ).
        shift: largest random translation as a fraction of each side (edges replicated); 0 is off.
    """

    image_mean: Sequence[float]
    image_std: Sequence[float]
    crop_scale: tuple[float, float] = (0.7, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotation_deg: float = 10.0
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.2
    erase_prob: float = 0.25
    hflip: bool = False
    shift: float = 0.0

    @classmethod
    def light(
        cls, image_mean: Sequence[float], image_std: Sequence[float], hflip: bool = False
    ) -> ReIDAugment:
        """The light preset: a random shift of up to 1/16 of each side (edges replicated) and a brightness
        factor in [0.8, 1.2]; nothing else (the augmentation of the plain-ArcFace peer recipe, issue 12)."""
        return cls(
            image_mean, image_std, crop_scale=(1.0, 1.0), rotation_deg=0.0, brightness=0.2, contrast=0.0,
            saturation=0.0, erase_prob=0.0, hflip=hflip, shift=1 / 16,
        )  # fmt: skip

    def _shift(self, g: torch.Generator, x: torch.Tensor) -> torch.Tensor:
        """Pad by ``shift`` of each side with replicated edges, then crop a random window of the input size."""
        _, height, width = x.shape
        ph, pw = round(self.shift * height), round(self.shift * width)
        if ph == 0 and pw == 0:
            return x
        padded = torch.nn.functional.pad(x[None], (pw, pw, ph, ph), mode="replicate")[0]
        top = int(torch.randint(0, 2 * ph + 1, (), generator=g))
        left = int(torch.randint(0, 2 * pw + 1, (), generator=g))
        return padded[:, top : top + height, left : left + width]

    def _uniform(self, g: torch.Generator, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=g))

    def _crop_box(self, g: torch.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        area = height * width
        log_ratio = (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        for _ in range(10):
            target = area * self._uniform(g, *self.crop_scale)
            ratio = math.exp(self._uniform(g, *log_ratio))
            w = round(math.sqrt(target * ratio))
            h = round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=g))
                left = int(torch.randint(0, width - w + 1, (), generator=g))
                return top, left, h, w
        return 0, 0, height, width

    def __call__(self, pixel_values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if pixel_values.ndim != 3 or pixel_values.shape[0] != 3:
            raise ValueError(f"expected a resized [3, H, W] tensor, got shape {tuple(pixel_values.shape)}")
        if pixel_values.dtype != torch.uint8:
            raise TypeError(
                f"expected the uint8 tensor of processor.preprocess_uint8, got {pixel_values.dtype} "
                "(augment before normalize_uint8)"
            )
        g = generator
        # Pixel space [0, 1] in float; a single rounding back to uint8 at the end.
        x = pixel_values.float().div_(255.0)
        _, height, width = x.shape
        mean = torch.as_tensor(self.image_mean, dtype=x.dtype).view(3, 1, 1)

        # Photometric jitter.
        if self.brightness > 0:
            x = TF.adjust_brightness(x, self._uniform(g, 1 - self.brightness, 1 + self.brightness))
        if self.contrast > 0:
            x = TF.adjust_contrast(x, self._uniform(g, 1 - self.contrast, 1 + self.contrast))
        if self.saturation > 0:
            x = TF.adjust_saturation(x, self._uniform(g, 1 - self.saturation, 1 + self.saturation))

        # Geometry: the crop is resized back to the processor's output size. Rotation runs on the image minus
        # the mean colour with fill 0 (as on the normalised image before), so corners come out the mean colour.
        if self.shift > 0:
            x = self._shift(g, x)
        if self.crop_scale != (1.0, 1.0):
            top, left, h, w = self._crop_box(g, height, width)
            x = TF.resized_crop(x, top, left, h, w, [height, width], antialias=True)
        if self.rotation_deg > 0:
            angle = self._uniform(g, -self.rotation_deg, self.rotation_deg)
            x = TF.rotate(x - mean, angle, interpolation=TF.InterpolationMode.BILINEAR, fill=0.0) + mean
        if self.hflip and float(torch.rand((), generator=g)) < 0.5:
            x = TF.horizontal_flip(x)
        if self.erase_prob > 0 and float(torch.rand((), generator=g)) < self.erase_prob:
            frac = self._uniform(g, 0.02, 0.2)
            ratio = math.exp(self._uniform(g, math.log(0.3), math.log(3.3)))
            h = min(height, max(1, round(math.sqrt(frac * height * width / ratio))))
            w = min(width, max(1, round(math.sqrt(frac * height * width * ratio))))
            top = int(torch.randint(0, height - h + 1, (), generator=g))
            left = int(torch.randint(0, width - w + 1, (), generator=g))
            x = TF.erase(x, top, left, h, w, mean)
        return x.mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)


def build_augment(tc, processor) -> ReIDAugment | None:
    """The run's training augmentation (``augment``: default, light or none) in the processor's mean/std."""
    if tc.augment == "none":
        return None
    make = ReIDAugment.light if tc.augment == "light" else ReIDAugment
    return make(processor.image_mean, processor.image_std, hflip=tc.hflip)
