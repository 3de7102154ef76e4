"""The PAIR-X picture (animal_reid.explain.draw) and explanation sheets (animal_reid.explain.sheets).

Most tests draw hand-built explanations (known crops, matches and heat maps), so what should be where is known to
the pixel; one runs the real method on the tiny model to check a box and a rotation end up where they were drawn.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from animal_reid.explain import Correspondences, CropGeometry, Explanation, PairScores
from animal_reid.explain.draw import (
    GAP,
    INFERNO,
    box_corners,
    colormap,
    crop_corners,
    draw_explanation,
    explanation_layout,
    line_colours,
    load_photo,
)
from animal_reid.explain.sheets import write_sheet
from animal_reid.testing.images import turned_jpeg

SIZE = (128, 96)  # photo width, height
HEIGHT = 240


def blobs(size=SIZE, seed: int = 0) -> Image.Image:
    """Smooth random colour blobs (a stand-in for a photo)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


def geometry(box=None, photo=SIZE, input_size=(64, 64)) -> CropGeometry:
    """The crop geometry of an unrotated ``box`` (x, y, w, h), or of the whole photo."""
    x, y, w, h = box if box is not None else (0, 0, *photo)
    return CropGeometry(input_size, (w, h), (1.0, 0.0, float(x), 0.0, 1.0, float(y)))


def explanation(xy_a, xy_b, geometry_a, geometry_b, heat=None) -> Explanation:
    n = len(xy_a)
    heat = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8) if heat is None else heat
    found = Correspondences(
        torch.zeros(n, 2, dtype=torch.long), torch.zeros(n, 2, dtype=torch.long), torch.ones(n)
    )
    scores = PairScores(0.5, 0.25, 0.6, 40, found, torch.ones(n))
    return Explanation(
        xy_a=np.asarray(xy_a, dtype=np.float32).reshape(-1, 2),
        xy_b=np.asarray(xy_b, dtype=np.float32).reshape(-1, 2),
        similarity=np.ones(n, dtype=np.float32),
        relevance=np.linspace(1.0, 0.5, n, dtype=np.float32),
        heat_a=heat,
        heat_b=heat,
        cosine=0.8125,
        scores=scores,
        stage="2",
        method="lrp",
        geometry_a=geometry_a,
        geometry_b=geometry_b,
    )


ENDS_A = [(20.0, 20.0), (100.0, 30.0), (60.0, 75.0)]
ENDS_B = [(30.0, 15.0), (90.0, 60.0), (15.0, 80.0)]


def segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    t = np.clip(np.dot(p - a, b - a) / max(np.dot(b - a, b - a), 1e-9), 0.0, 1.0)
    return float(np.linalg.norm(p - (a + t * (b - a))))


def test_the_picture_has_two_panels_of_the_given_height_and_a_caption():
    e = explanation(ENDS_A, ENDS_B, geometry(), geometry())
    fig = draw_explanation(blobs(), blobs(seed=1), e, height=HEIGHT, title="q vs 1. lion_07")
    a, b = explanation_layout([SIZE, SIZE], e, height=HEIGHT, title="q vs 1. lion_07")
    width = round(SIZE[0] * HEIGHT / SIZE[1])  # the whole photo (no box), scaled to the height
    assert a.size == b.size == (width, HEIGHT) and a.region == (0.0, 0.0, *map(float, SIZE))
    assert b.offset == (width + GAP, a.offset[1]) and a.offset[1] > 0  # a title strip above
    assert fig.width == 2 * width + GAP and fig.height > a.offset[1] + HEIGHT + 20  # a caption strip below
    caption = np.asarray(fig)[a.offset[1] + HEIGHT :]
    assert (caption < 100).any()  # text drawn in it
    assert explanation_layout([SIZE, SIZE], e, height=HEIGHT)[0].offset == (0, 0)  # no title, no strip


def test_line_ends_are_drawn_where_the_correspondences_are():
    photo_a, photo_b = blobs(), blobs(seed=1)
    e = explanation(ENDS_A, ENDS_B, geometry(), geometry())
    plain = np.asarray(draw_explanation(photo_a, photo_b, e, height=HEIGHT, top=0)).astype(int)
    drawn = np.asarray(draw_explanation(photo_a, photo_b, e, height=HEIGHT, top=3)).astype(int)
    a, b = explanation_layout([SIZE, SIZE], e, height=HEIGHT)
    ends_a, ends_b = a.to_figure(np.array(ENDS_A)), b.to_figure(np.array(ENDS_B))
    colours = line_colours(3)
    for i, (pa, pb) in enumerate(zip(ends_a, ends_b, strict=True)):
        for x, y in (pa, pb):
            px = drawn[round(y), round(x)]
            assert np.abs(px - plain[round(y), round(x)]).sum() > 60
            assert np.abs(px - np.array(colours[i])).max() <= 8  # the circle is the line's own colour
    far = (a.offset[0] + 5, a.offset[1] + HEIGHT - 5)  # bottom-left corner of panel a: no line near it
    assert min(segment_distance(np.array(far), p, q) for p, q in zip(ends_a, ends_b, strict=True)) > 20
    assert (drawn[far[1], far[0]] == plain[far[1], far[0]]).all()
    assert len(set(colours)) == 3 and len(set(line_colours(20))) == 20


def test_only_the_top_correspondences_are_drawn():
    e = explanation(ENDS_A, ENDS_B, geometry(), geometry())
    one = np.asarray(draw_explanation(blobs(), blobs(seed=1), e, height=HEIGHT, top=1)).astype(int)
    plain = np.asarray(draw_explanation(blobs(), blobs(seed=1), e, height=HEIGHT, top=0)).astype(int)
    a, _ = explanation_layout([SIZE, SIZE], e, height=HEIGHT)
    x0, y0 = np.round(a.to_figure(np.array(ENDS_A[0]))[0]).astype(int)
    x2, y2 = np.round(a.to_figure(np.array(ENDS_A[2]))[0]).astype(int)
    assert np.abs(one[y0, x0] - plain[y0, x0]).sum() > 60
    assert (one[y2, x2] == plain[y2, x2]).all()  # the third match is not drawn


def test_the_heat_map_covers_the_crop_and_nothing_else():
    box = (32, 24, 48, 40)
    photo = blobs()
    e = explanation([], [], geometry(box), geometry())
    fig = np.asarray(draw_explanation(photo, blobs(seed=1), e, height=HEIGHT, top=0)).astype(int)
    a, _ = explanation_layout([SIZE, SIZE], e, height=HEIGHT)
    assert a.region == pytest.approx((32 - 7.2, 24 - 6.0, 80 + 7.2, 64 + 6.0))  # the crop and a 15% margin
    plain = np.asarray(a.render(photo)).astype(int)
    panel = fig[: a.size[1], : a.size[0]]
    ys, xs = np.mgrid[: a.size[1], : a.size[0]]
    sx, sy = a.scale
    px, py = a.region[0] + (xs + 0.5) / sx, a.region[1] + (ys + 0.5) / sy  # photo pixel of each panel pixel
    inside = (px > box[0] + 1) & (px < box[0] + box[2] - 1) & (py > box[1] + 1) & (py < box[1] + box[3] - 1)
    outside = (px < box[0] - 1) | (px > box[0] + box[2] + 1) | (py < box[1] - 1) | (py > box[1] + box[3] + 1)
    changed = np.abs(panel - plain).sum(axis=2) > 6
    assert changed[inside].mean() > 0.97 and not changed[outside].any()
    # brighter where the relevance is higher: the grid rises from top to bottom, so does the heat's brightness
    heat_only = panel.astype(float) - plain * (1 - 0.3)
    top_rows, bottom_rows = inside & (py < box[1] + 8), inside & (py > box[1] + box[3] - 8)
    assert heat_only[bottom_rows].mean() > heat_only[top_rows].mean() + 20


def test_a_box_is_outlined_on_its_panel():
    box = (32, 24, 48, 40)
    e = explanation([], [], geometry(box), geometry())
    fig = np.asarray(draw_explanation(blobs(), blobs(seed=1), e, boxes=(box, None), height=HEIGHT, top=0))
    a, _ = explanation_layout([SIZE, SIZE], e, height=HEIGHT)
    (x0, y0), (x1, _), (_, y1) = a.to_figure(np.array([(32, 24), (80, 24), (80, 64)]))
    near_top = fig[int(y0) - 1 : int(y0) + 2, int(x0) + 5 : int(x1) - 5]
    assert (near_top >= 250).all(axis=2).any(axis=0).all()  # a white line along the box's top edge
    mid_row = fig[int((y0 + y1) / 2), int(x0) + 5 : int(x1) - 5]
    assert not (mid_row >= 250).all(axis=1).any()


@pytest.fixture(scope="module")
def model_and_processor(tmp_path_factory):
    from transformers import AutoImageProcessor, AutoModel

    from animal_reid.testing.serve import tiny_model

    path = tiny_model(tmp_path_factory.mktemp("explain_draw") / "model", image_size=64)
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    return model, AutoImageProcessor.from_pretrained(path, trust_remote_code=True)


def test_a_rotated_box_is_the_region_explained_and_drawn(model_and_processor, tmp_path):
    from animal_reid.explain import explain_pair

    model, processor = model_and_processor
    photo = blobs((160, 128), seed=3)
    box, theta = [40, 30, 64, 56], 0.3
    e = explain_pair(model, processor, photo, photo, boxes=(box, None), thetas=(theta, 0.0), top=6)
    assert np.allclose(crop_corners(e.geometry_a), box_corners(box, theta), atol=1e-3)
    assert np.allclose(crop_corners(e.geometry_b), [[0, 0], [160, 0], [160, 128], [0, 128]], atol=1e-3)
    # every match of image a lies in the rotated box (its centre + half-sizes along the box's own axes)
    c, s = np.cos(theta), np.sin(theta)
    local = (e.xy_a - np.array([72.0, 58.0])) @ np.array([[c, -s], [s, c]])
    assert len(e.xy_a) == 6 and (np.abs(local) <= np.array([32.0, 28.0]) + 0.5).all()
    fig = draw_explanation(photo, photo, e, boxes=(box, None), thetas=(theta, 0.0), height=HEIGHT)
    a, b = explanation_layout([photo.size, photo.size], e, height=HEIGHT)
    assert a.size[1] == HEIGHT and b.region == (0.0, 0.0, 160.0, 128.0)
    assert a.region[2] - a.region[0] < 160  # panel a shows the box and its margin, not the whole photo
    on_figure = a.to_figure(e.xy_a)
    assert ((on_figure >= 0) & (on_figure <= np.array(a.size))).all()
    # the sheet: the picture and the data, never written over without consent
    png, js = write_sheet(tmp_path / "q", photo, [{"image": photo, "rank": 1, "identity": "x"}], [e], query_box=box,
                          query_theta=theta, query_name="q.png", height=HEIGHT)  # fmt: skip
    with Image.open(png) as im:
        assert im.width == fig.width and im.height > fig.height  # one row under a header line
    record = json.loads(js.read_text())
    assert record["query"] == "q.png" and record["query_box"] == box
    assert [c["identity"] for c in record["candidates"]] == ["x"]
    assert record["candidates"][0]["explanation"]["matches"][0]["a"] == pytest.approx(e.xy_a[0], abs=0.06)
    with pytest.raises(FileExistsError, match="q.png exists: pass overwrite=True"):
        write_sheet(tmp_path / "q", photo, [{"image": photo}], [e])
    write_sheet(tmp_path / "q", photo, [{"image": photo}], [e], overwrite=True)
    assert "identity" not in json.loads(js.read_text())["candidates"][0]


def test_photos_are_shown_as_displayed_and_the_colour_map_runs_dark_to_bright(tmp_path):
    path = tmp_path / "turned.jpg"
    path.write_bytes(turned_jpeg(6, size=(96, 56)))  # EXIF: turn 90 degrees to display
    assert load_photo(path).size == (56, 96) and load_photo(path.read_bytes()).size == (56, 96)
    assert colormap(np.array(0.0)).tolist() == INFERNO[0].tolist()
    assert colormap(np.array(1.0)).tolist() == INFERNO[-1].tolist()
    luminance = colormap(np.linspace(0, 1, 50)) @ np.array([0.299, 0.587, 0.114])
    assert (np.diff(luminance) > 0).all()
