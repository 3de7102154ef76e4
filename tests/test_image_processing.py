"""The processor: modes, EXIF, boxes with rotation, and bad input refused with clear messages."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from modeling import AnimalReIDImageProcessor, InvalidImageError

PROC = AnimalReIDImageProcessor(size={"height": 32, "width": 48})


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _gradient(w=64, h=40) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


def test_output_shape_and_normalisation():
    out = PROC([_gradient(), _gradient(80, 80)], return_tensors="pt")["pixel_values"]
    assert out.shape == (2, 3, 32, 48) and out.dtype == torch.float32
    white = PROC(Image.new("RGB", (20, 20), (255, 255, 255)))["pixel_values"]
    expected = (1 - torch.tensor(PROC.image_mean)) / torch.tensor(PROC.image_std)
    assert torch.allclose(white[0, :, 0, 0], expected, atol=1e-6)


def test_round_trip_config(tmp_path):
    p = AnimalReIDImageProcessor(size=40, resample="bicubic", image_mean=[0.5] * 3, image_std=[0.5] * 3)
    p.save_pretrained(tmp_path)
    q = AnimalReIDImageProcessor.from_pretrained(tmp_path)
    assert q.to_dict() == p.to_dict()
    img = _gradient()
    assert torch.equal(p(img)["pixel_values"], q(img)["pixel_values"])


def test_exif_orientation_honoured(tmp_path):
    img = _gradient(64, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)
    loaded = PROC.load_image(str(path))
    assert loaded.size == (40, 64)


@pytest.mark.parametrize(
    "make, check",
    [
        (
            lambda: Image.fromarray(np.full((20, 20), 40000, np.uint16)),
            lambda rgb: abs(rgb[0] - 40000 / 257) < 1.01,
        ),
        (lambda: Image.new("CMYK", (20, 20), (0, 255, 255, 0)), lambda rgb: rgb[0] > 200 and rgb[1] < 50),
        (lambda: Image.new("RGBA", (20, 20), (10, 20, 30, 0)), lambda rgb: list(rgb) == [124, 116, 104]),
        (lambda: Image.new("L", (20, 20), 77), lambda rgb: list(rgb) == [77, 77, 77]),
    ],
    ids=["16bit", "cmyk", "rgba-transparent", "grey"],
)
def test_modes_converted_correctly(make, check):
    rgb = PROC.load_image(make())
    assert rgb.mode == "RGB"
    assert check(rgb.getpixel((5, 5))), rgb.getpixel((5, 5))


def test_16bit_png_file(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(path)
    assert PROC.load_image(str(path)).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    "source, message",
    [
        (b"", "empty"),
        (b"not an image at all", "not a readable image"),
        (lambda: _png(_gradient(), "JPEG")[:300], "cannot decode"),
        (lambda: Image.new("RGB", (1, 1)), "1x1 pixels"),
        ("/nonexistent/x.jpg", "file not found"),
        (lambda: np.zeros((10, 10, 2), np.uint8), "HxWx3"),
        (lambda: np.full((10, 10, 3), np.nan, np.float32), "NaN"),
    ],
    ids=["zero-byte", "garbage", "truncated", "1x1", "missing", "2-channel", "nan"],
)
def test_bad_input_refused(source, message):
    if callable(source):
        source = source()
    with pytest.raises(InvalidImageError, match=message):
        PROC.preprocess_one(source)


def test_zero_byte_and_truncated_files(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InvalidImageError, match="empty"):
        PROC([str(empty)])
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(_png(_gradient(200, 200), "JPEG")[:500])
    with pytest.raises(InvalidImageError, match="trunc.jpg: cannot decode"):
        PROC([str(trunc)])


@pytest.mark.parametrize(
    "box, message",
    [
        ([10, 10, 0, 5], "zero or negative size"),
        ([10, 10, 5, -5], "zero or negative size"),
        ([500, 500, 20, 20], "outside"),
        ([-50, -50, 20, 20], "outside"),
        ([0, 0, float("nan"), 3], "non-finite"),
        ([60, 0, 30, 30], "4x30 pixels"),
        ([1, 2, 3], r"\[x, y, w, h\]"),
    ],
)
def test_bad_boxes_refused(box, message):
    with pytest.raises(InvalidImageError, match=message):
        PROC.preprocess_one(_gradient(64, 40), box=box)


def test_box_crop_matches_manual_crop():
    img = _gradient(64, 40)
    got = PROC.preprocess_one(img, box=[8, 4, 40, 30])
    want = PROC.preprocess_one(img.crop((8, 4, 48, 34)))
    assert torch.equal(got, want)
    # partly outside: clipped to the image
    assert torch.equal(
        PROC.preprocess_one(img, box=[-10, -10, 30, 30]), PROC.preprocess_one(img.crop((0, 0, 20, 20)))
    )


def test_rotated_box():
    # a bright bar along the image diagonal direction; rotating the box by theta aligns it with the crop axes
    img = Image.new("RGB", (100, 100), (0, 0, 0))
    arr = np.zeros((100, 100, 3), np.uint8)
    for t in np.linspace(-30, 30, 400):
        x, y = 50 + t * math.cos(math.pi / 6), 50 + t * math.sin(math.pi / 6)
        arr[int(round(y)) - 1 : int(round(y)) + 2, int(round(x)) - 1 : int(round(x)) + 2] = 255
    img = Image.fromarray(arr)
    crop = np.asarray(PROC.crop(img, [30, 40, 40, 20], theta=math.pi / 6)).mean(-1)
    # after undoing the rotation the bar is horizontal through the crop's middle row
    assert crop.shape == (20, 40)
    assert crop[9:12, 5:35].mean() > 150 and crop[:4].mean() < 20 and crop[-4:].mean() < 20
    assert torch.equal(
        PROC.preprocess_one(img, [30, 40, 40, 20], 0.0), PROC.preprocess_one(img.crop((30, 40, 70, 60)))
    )


def test_augment_adds_but_does_not_replace():
    img = _gradient()
    out = PROC.preprocess_one(img, augment=lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert out.shape == (3, 32, 48)
    assert torch.allclose(out, PROC.preprocess_one(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))


def test_bilinear_noaa_matches_torch_interpolate():
    p = AnimalReIDImageProcessor(size=16, resample="bilinear_noaa", do_normalize=False)
    img = _gradient(64, 40)
    t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()[None]
    ref = (
        torch.nn.functional.interpolate(t, size=(16, 16), mode="bilinear", align_corners=False).round() / 255
    )
    assert torch.allclose(p(img)["pixel_values"], ref, atol=1e-6)


def test_invalid_settings():
    with pytest.raises(ValueError, match="resample must be one of"):
        AnimalReIDImageProcessor(resample="cubic")
    with pytest.raises(ValueError, match="size"):
        AnimalReIDImageProcessor(size={"height": 0, "width": 3})
