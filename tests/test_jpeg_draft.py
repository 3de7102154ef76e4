"""jpeg_draft: reduced-scale JPEG decoding for full-size photos, with boxes, rotation and EXIF orientation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from modeling import AnimalReIDImageProcessor, InvalidImageError


def _photo(w: int = 1600, h: int = 1200, orientation: int | None = None, seed: int = 0) -> bytes:
    """A smooth, photo-like JPEG (low-frequency colour field plus edges), optionally with an EXIF orientation."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 64 + 2, w // 64 + 2, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(img).copy()
    arr[h // 3 : h // 3 + 6, :, :] = 20  # a sharp stripe, like a flank pattern
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(arr).save(buf, format="JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


def _pair(size=128, **kw):
    fast = AnimalReIDImageProcessor(size=size, jpeg_draft=True, **kw)
    full = AnimalReIDImageProcessor(size=size, jpeg_draft=False, **kw)
    return fast, full


def _close(a, b, mean_tol=3.0):
    d = (a.int() - b.int()).abs().float()
    assert a.shape == b.shape and a.dtype == b.dtype
    assert float(d.mean()) < mean_tol, float(d.mean())


@pytest.mark.parametrize(
    "box,theta,factor",
    [
        (None, 0.0, 8),  # whole 1600x1200 image to 128: 1/8 still leaves 200x150
        ([400, 300, 800, 600], 0.0, 4),  # 800x600 box: 1/4 leaves 200x150
        ([400, 300, 800, 600], 0.3, 4),  # rotated box: same sizes
        ([1500, 1100, 400, 400], 0.0, 1),  # only 100x100 of the box inside the image: no reduction
        ([1300, 900, 400, 400], 0.0, 2),  # 300x300 inside: 1/2 leaves 150x150
    ],
)
def test_draft_matches_full_decode(box, theta, factor):
    data = _photo()
    fast, full = _pair()
    _, got_factor = fast._load(data, target_size=(128, 128), box=box, theta=theta)
    assert got_factor == factor
    _close(fast.preprocess_uint8(data, box, theta), full.preprocess_uint8(data, box, theta))


def test_draft_honours_exif_rotation_and_non_square_size():
    # stored 1600x1200, displayed 1200x1600 (orientation 6); a tall box and a tall output size
    data = _photo(orientation=6)
    fast, full = _pair(size={"height": 160, "width": 96})
    box = [100, 200, 600, 1200]
    img, factor = fast._load(data, target_size=(96, 160), box=box)
    assert img.size == (1200 // factor, 1600 // factor) and factor == 4
    a, b = fast.preprocess_uint8(data, box), full.preprocess_uint8(data, box)
    assert a.shape == (3, 160, 96)
    _close(a, b)


def test_draft_never_goes_below_min_side_or_changes_errors():
    data = _photo()
    fast, full = _pair(size=32, min_side=64)
    # a 100x100 box would be 25x25 at 1/4 (enough for size 32 but not for min_side 64): only 1/... allowed
    _, factor = fast._load(data, target_size=(32, 32), box=[10, 10, 100, 100])
    assert 100 // factor >= 64
    for bad in ([2000, 2000, 50, 50], [0, 0, 0, 10], [0, 0, float("nan"), 10], [10, 10, 40, 40]):
        with pytest.raises(InvalidImageError) as e_fast:
            fast.preprocess_uint8(data, bad)
        with pytest.raises(InvalidImageError) as e_full:
            full.preprocess_uint8(data, bad)
        assert str(e_fast.value) == str(e_full.value)  # messages in the caller's coordinates


def test_draft_is_saved_and_png_untouched():
    fast, full = _pair()
    assert AnimalReIDImageProcessor(**fast.to_dict()).jpeg_draft is True
    buf = io.BytesIO()
    Image.fromarray(np.full((900, 900, 3), 120, np.uint8)).save(buf, format="PNG")
    _, factor = fast._load(buf.getvalue(), target_size=(128, 128))
    assert factor == 1
    assert np.array_equal(fast.preprocess_uint8(buf.getvalue()), full.preprocess_uint8(buf.getvalue()))
