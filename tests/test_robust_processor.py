"""The processor under hostile input: random modes, sizes, boxes and bytes; bombs; absurd boxes; the pipeline path."""

from __future__ import annotations

import base64
import contextlib
import io
import math
import tracemalloc
import types
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from modeling import AnimalReIDImageProcessor, InvalidImageError

PROC = AnimalReIDImageProcessor(size={"height": 24, "width": 20})
FAST = settings(
    max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
MODES = ("L", "RGB", "RGBA", "P", "CMYK", "I;16")


def _image(mode: str, w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    rgb = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    if mode == "P":
        return rgb.quantize(16)
    return rgb.convert(mode)


def _encoded(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if img.mode == "CMYK" else "PNG")
    return buf.getvalue()


def _is_invalid_image(err: BaseException) -> bool:
    """InvalidImageError from any copy of the module (remote code loads its own)."""
    return type(err).__name__ == "InvalidImageError" and isinstance(err, ValueError)


coords = st.one_of(
    st.floats(-100, 200),
    st.sampled_from([0.0, -1e5, 1e5, 1e12, -1e300, 1e300, math.nan, math.inf, -math.inf]),
)
boxes = st.one_of(st.none(), st.lists(coords, min_size=4, max_size=4))
thetas = st.one_of(st.floats(-7, 7), st.sampled_from([0.0, 0.1, math.pi / 2, 1e9, math.nan, math.inf]))


@FAST
@given(
    mode=st.sampled_from(MODES),
    w=st.integers(1, 70),
    h=st.integers(1, 70),
    box=boxes,
    theta=thetas,
    as_bytes=st.booleans(),
)
def test_any_mode_size_box_and_theta_gives_a_tensor_or_invalid_image_error(mode, w, h, box, theta, as_bytes):
    img = _image(mode, w, h)
    source = _encoded(img) if as_bytes else img
    if box is None and theta != 0.0:
        theta = 0.0  # theta without a box is a caller error, tested below
    try:
        out = PROC.preprocess_one(source, box=box, theta=theta)
    except InvalidImageError as err:
        assert str(err)  # a reason, never empty
        return
    assert out.shape == (3, 24, 20) and out.dtype == torch.float32 and torch.isfinite(out).all()


@FAST
@given(mode=st.sampled_from(MODES), cut=st.floats(0.0, 1.0), junk=st.binary(max_size=64))
def test_truncated_or_garbled_bytes_raise_only_invalid_image_error(mode, cut, junk):
    data = _encoded(_image(mode, 40, 30))
    data = data[: int(len(data) * cut)] + junk
    try:
        out = PROC.preprocess_one(data)
    except InvalidImageError:
        return
    assert out.shape == (3, 24, 20)


def test_theta_without_box_and_bad_box_shapes_are_invalid_image_errors():
    img = _image("RGB", 40, 40)
    with pytest.raises(InvalidImageError) as err:
        PROC.preprocess_one(img, None, 0.3)
    assert str(err.value) == "<PIL RGB 40x40>: theta 0.3 was given without a bounding box"
    with pytest.raises(InvalidImageError) as err:
        PROC.preprocess_one(img, [1, 2, 3], 0.3)
    assert (
        str(err.value)
        == "<PIL RGB 40x40>: bounding box must be 4 numbers [x, y, w, h], got 3 values: [1, 2, 3]"
    )


# ------------------------------------------------------------------------------------------------------------------
# rotated boxes: bounded by the image, unchanged inside it
def _old_rotated_crop(proc, image, box, theta):
    """The crop before boxes were bounded by the image: the whole w x h box is sampled."""
    x, y, w, h = box
    cx, cy = x + w / 2.0, y + h / 2.0
    c, s = math.cos(theta), math.sin(theta)
    ow, oh = max(1, round(w)), max(1, round(h))
    coeffs = (
        c * w / ow,
        -s * h / oh,
        cx - c * w / 2 + s * h / 2,
        s * w / ow,
        c * h / oh,
        cy - s * w / 2 - c * h / 2,
    )
    return image.transform(
        (ow, oh), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=tuple(proc.background)
    )


@pytest.mark.parametrize(
    "box, theta",
    [
        ([60 - 5e4, 45 - 5e4, 1e5, 1e5], 0.1),  # a 1e5 square centred on the image
        ([-5e4, -5e4, 1e5, 1e5], 0.7),
        ([60 - 5e8, 45 - 15, 1e9, 30], 2.0),  # a 1e9-long strip through the image
    ],
)
def test_absurd_rotated_box_allocates_about_the_image_not_the_box(box, theta):
    img = _image("RGB", 120, 90)
    tracemalloc.start()
    try:
        crop = PROC.crop(img, box, theta)
        out = PROC.preprocess_one(img, box, theta)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert crop.width * crop.height <= (120 + 90 + 4) ** 2  # the image's rotated extent at most
    assert peak < 20 * 2**20, peak  # the whole 1e5 x 1e5 RGB box would be 30 GB
    assert out.shape == (3, 24, 20)


def test_huge_rotated_box_that_misses_the_image_is_refused_without_allocating():
    # [0, 0, 1e5, 1e5] turned by 0.1 rad about its centre (5e4, 5e4) no longer reaches the image near the origin
    img = _image("RGB", 400, 300)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidImageError, match="lies entirely outside the 400x300 image"):
            PROC.preprocess_one(img, [0, 0, 1e5, 1e5], 0.1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_absurd_rotated_box_with_jpeg_draft_is_bounded_too():
    buf = io.BytesIO()
    _image("RGB", 400, 300).save(buf, format="JPEG")
    proc = AnimalReIDImageProcessor(size=16, jpeg_draft=True)
    assert proc.preprocess_one(buf.getvalue(), [200 - 5e4, 150 - 5e4, 1e5, 1e5], 0.1).shape == (3, 16, 16)


@pytest.mark.parametrize(
    "box, theta", [([30, 40, 40, 20], math.pi / 6), ([5.5, 7.25, 50.3, 33.1], -1.1), ([20, 20, 30, 30], 3.0)]
)
def test_rotated_boxes_inside_the_image_crop_exactly_as_before(box, theta):
    img = _image("RGB", 100, 100)
    got, want = PROC.crop(img, box, theta), _old_rotated_crop(PROC, img, box, theta)
    assert got.size == want.size and np.array_equal(np.asarray(got), np.asarray(want))


def test_rotated_box_partly_outside_drops_only_background_bands():
    img = _image("RGB", 100, 80)
    box, theta = [40, 20, 200, 40], 0.1  # runs far off the right edge only
    got, full = np.asarray(PROC.crop(img, box, theta)), np.asarray(_old_rotated_crop(PROC, img, box, theta))
    assert got.shape[1] < full.shape[1] and got.shape[0] == full.shape[0]
    # the window starts at column 0 with the old grid (integer box): it is the old crop's left part
    assert np.array_equal(got, full[:, : got.shape[1]])
    assert (full[:, got.shape[1] :] == PROC.background).all()  # what was cut off is pure background


@pytest.mark.parametrize(
    "box, theta, message",
    [
        ([0, 0, math.nan, 10], 0.2, "non-finite"),
        ([0, 0, 10, math.inf], 0.2, "non-finite"),
        ([0, 0, 20, 20], math.nan, "theta of bounding box .* is nan, not a finite number of radians"),
        ([1e308, 1e308, 1e308, 1e308], 0.2, "too large|outside"),
        ([10, 10, 5, 30], 0.2, "smaller than 8 pixels"),
        ([10, 10, 30, 5], 0.0, "30x5 pixels"),
        ([-1e5, 10, 1e5 + 3, 20], 0.0, "3x20 pixels"),
        ([300, 300, 20, 20], 0.4, "outside"),
    ],
)
def test_nan_inf_small_and_outside_boxes_are_refused_with_a_reason(box, theta, message):
    with pytest.raises(InvalidImageError, match=message):
        PROC.preprocess_one(_image("RGB", 64, 48), box, theta)


# ------------------------------------------------------------------------------------------------------------------
# decompression bombs
@pytest.mark.parametrize("side", [40, 64], ids=["warning-zone", "error-zone"])
def test_decompression_bomb_is_an_invalid_image_error_naming_the_file(tmp_path, monkeypatch, side):
    path = tmp_path / "bomb.png"
    _image("RGB", side, side).save(path)
    # 40x40 = 1600 pixels: over the limit, PIL only warns; 64x64: over twice the limit, PIL raises
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.warns(Image.DecompressionBombWarning) if side == 40 else contextlib.nullcontext():
        with pytest.raises(InvalidImageError, match=r"bomb\.png: .*decompression-bomb limit of 1000"):
            PROC.preprocess_one(str(path))
        with pytest.raises(InvalidImageError, match="decompression-bomb"):
            PROC.load_image(path.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # -W error: the warning is raised
        with pytest.raises(InvalidImageError, match="decompression-bomb"):
            PROC.load_image(str(path))


# ------------------------------------------------------------------------------------------------------------------
# pipeline("image-feature-extraction"): the same errors as encode
@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from transformers import pipeline

    from modeling import AnimalReIDConfig, AnimalReIDModel

    d = tmp_path_factory.mktemp("pipe_model")
    AnimalReIDModel(
        AnimalReIDConfig(backbone="test_efficientnet", embedding_dim=16, image_size=32)
    ).eval().save_pretrained(d)
    AnimalReIDImageProcessor(size=32).save_pretrained(d)
    return pipeline("image-feature-extraction", model=str(d), trust_remote_code=True)


@pytest.fixture
def files(tmp_path):
    good = tmp_path / "good.jpg"
    _image("RGB", 60, 50).save(good, quality=90)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:1200])
    (tmp_path / "text.jpg").write_text("not an image\n")
    _image("RGB", 1, 1).save(tmp_path / "one.png")
    return tmp_path


@pytest.mark.parametrize(
    "name, message",
    [
        ("empty.jpg", "empty.jpg: file is empty"),
        ("trunc.jpg", "trunc.jpg: cannot decode image, truncated or corrupt"),
        ("text.jpg", "text.jpg: not a readable image file"),
        ("one.png", "one.png: image is 1x1 pixels"),
        ("missing.jpg", "missing.jpg: file not found"),
    ],
)
def test_pipeline_raises_invalid_image_error_naming_the_file(pipe, files, name, message):
    with pytest.raises(ValueError, match=message) as info:
        pipe(str(files / name))
    assert _is_invalid_image(info.value)


def test_pipeline_raw_strings_pil_images_and_base64(pipe, files):
    with pytest.raises(ValueError, match="abcd: file not found") as info:
        pipe("abcd")  # decodes as base64 to 3 bytes: not "Incorrect padding", a missing file
    assert _is_invalid_image(info.value)
    with pytest.raises(ValueError, match="data URI holds no base64 image data"):
        pipe("data:image/png;base64,")
    with Image.open(files / "trunc.jpg") as lazy:  # opened by the caller, decoded by the processor
        with pytest.raises(ValueError, match="trunc.jpg: cannot decode") as info:
            pipe(lazy)
    assert _is_invalid_image(info.value)
    good = files / "good.jpg"
    want = pipe(str(good), return_tensors=True)
    b64 = base64.b64encode(good.read_bytes()).decode()
    assert torch.allclose(pipe(b64, return_tensors=True), want)
    assert torch.allclose(pipe("data:image/jpeg;base64," + b64, return_tensors=True), want)
    with Image.open(good) as im:
        assert torch.allclose(pipe(im, return_tensors=True), want, atol=1e-6)


def test_pipeline_bomb_is_an_invalid_image_error(pipe, files, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(ValueError, match="good.jpg: .*decompression-bomb") as info:
        pipe(str(files / "good.jpg"))
    assert _is_invalid_image(info.value)


def test_other_pipelines_keep_transformers_loading(pipe, files):
    """Only processors with load_pipeline_input are routed; any other processor sees transformers' own code."""
    from transformers.image_processing_utils import BatchFeature

    cls = type(pipe)
    assert getattr(cls.preprocess, "_routes_to_processor", False)
    seen = []

    def other_processor(image, return_tensors=None):
        seen.append(image)
        return BatchFeature({"pixel_values": torch.zeros(1, 3, 2, 2)})

    fake = types.SimpleNamespace(image_processor=other_processor, dtype=torch.float32)
    cls.preprocess(fake, str(files / "good.jpg"))
    assert isinstance(seen[0], Image.Image) and seen[0].mode == "RGB"  # decoded by transformers.load_image
    with pytest.raises(Exception) as info:
        cls.preprocess(fake, str(files / "text.jpg"))
    assert not _is_invalid_image(info.value)
