"""PAIR-X correspondences (animal_reid.explain): mutual nearest neighbours of intermediate feature maps.

The required behaviour: correspondences between an image and a translated copy of it land on the translated
positions, in each model input's pixels and, through the crop geometry, in the photo's. A random tiny model is
enough: its convolutions are translation-equivariant, which is what the geometry relies on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from animal_reid.explain import feature_maps, match, mutual_nearest_neighbours, stage_grids, to_pixels
from animal_reid.explain.features import CropGeometry, default_stage
from animal_reid.testing.serve import tiny_model

SIZE = 128  # at 128 px test_efficientnet's stages give 64, 32, 16, 8 and 4 cells a side
SHIFT = 16
CELL = 8  # pixels per cell of the default (16x16) stage


@pytest.fixture(scope="module")
def model_and_processor(tmp_path_factory):
    """The tiny random export, loaded the way users load a Hub model."""
    from transformers import AutoImageProcessor, AutoModel

    path = tiny_model(tmp_path_factory.mktemp("explain") / "model", image_size=SIZE)
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    return model, AutoImageProcessor.from_pretrained(path, trust_remote_code=True)


def blobs(width: int = SIZE + 3 * SHIFT, height: int = SIZE, seed: int = 0) -> np.ndarray:
    """Textured noise: seeded random colours on a coarse grid, smoothly upsampled into blobs (uint8 HWC)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 6, width // 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def test_default_stage_is_the_deepest_grid_of_at_least_14(model_and_processor):
    model, _ = model_and_processor
    assert stage_grids(model) == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    assert default_stage(model) == 2
    maps = feature_maps(model, torch.zeros(2, 3, SIZE, SIZE))
    assert maps.shape[0] == 2 and maps.shape[-2:] == (16, 16) and not maps.requires_grad


def test_correspondences_of_a_translated_image_land_on_the_shift(model_and_processor):
    model, processor = model_and_processor
    arr = blobs()
    image_a = Image.fromarray(arr[:, :SIZE])
    image_b = Image.fromarray(arr[:, SHIFT : SHIFT + SIZE])  # content moves SHIFT px to the left
    found = match(model, processor, image_a, image_b, top=30)
    assert len(found.similarity) == 30
    assert bool((found.similarity[:-1] >= found.similarity[1:]).all())
    offset = found.xy_b - found.xy_a
    on_shift = ((offset[:, 0] + SHIFT).abs() <= CELL) & (offset[:, 1].abs() <= CELL)
    assert on_shift.float().mean() >= 0.8, offset.tolist()


def test_boxes_map_back_to_the_same_photo_pixels(model_and_processor):
    model, processor = model_and_processor
    photo = Image.fromarray(blobs(seed=1))
    boxes = ([0, 0, SIZE, SIZE], [SHIFT, 0, SIZE, SIZE])
    found = match(model, processor, photo, photo, top=30, boxes=boxes)
    assert found.geometry_b.affine[2] == SHIFT
    pa, pb = found.photo_xy()
    same = (pa - pb).abs().amax(dim=1) <= CELL
    assert same.float().mean() >= 0.8, (pa - pb).tolist()


def test_a_stage_that_does_not_exist_is_one_line_naming_the_stages(model_and_processor):
    model, _ = model_and_processor
    pixels = torch.zeros(1, 3, SIZE, SIZE)
    for stage in (7, "blocks.9", "head"):
        with pytest.raises(ValueError) as err:
            feature_maps(model, pixels, stage)
        message = str(err.value)
        assert "\n" not in message and repr(stage) in message
        assert "blocks.0, blocks.1, blocks.2, blocks.3, blocks.4" in message
    assert feature_maps(model, pixels, "blocks.1").shape[-2:] == (32, 32)


def test_mutual_nearest_neighbours_on_a_hand_built_2x2_example():
    e = torch.eye(4)
    # a: cells (0,0)=e0, (0,1)=e1, (1,0)=e2, (1,1)=e2+0.1e3 (a near-duplicate of (1,0) that loses to it)
    fa = torch.stack([e[0], e[1], e[2], e[2] + 0.1 * e[3]], dim=1).reshape(4, 2, 2)
    # b: (0,0)~e1, (0,1)~e0, (1,0)=e2, (1,1)=e3 (its nearest cell in a prefers b's (1,0): not mutual)
    fb = torch.stack([e[1] + 0.1 * e[3], e[0] + 0.2 * e[3], e[2], e[3]], dim=1).reshape(4, 2, 2)
    found = mutual_nearest_neighbours(fa, fb)
    assert found.cells_a.tolist() == [[1, 0], [0, 1], [0, 0]]
    assert found.cells_b.tolist() == [[1, 0], [0, 0], [0, 1]]
    expected = [1.0, 1 / np.sqrt(1.01), 1 / np.sqrt(1.04)]
    assert found.similarity.tolist() == pytest.approx(expected, abs=1e-6)


def test_to_pixels_gives_cell_centres_of_the_model_input():
    geometry = CropGeometry(input_size=(128, 64), crop_size=(256, 128), affine=(1, 0, 10, 0, 1, 20))
    x, y = to_pixels(torch.tensor([[0, 0], [3, 7]]), (4, 8), geometry)
    assert x.tolist() == [8.0, 120.0] and y.tolist() == [8.0, 56.0]
    px, py = geometry.to_photo(x, y)
    assert px.tolist() == [26.0, 250.0] and py.tolist() == [36.0, 132.0]


def test_a_rotated_box_maps_input_corners_to_the_rotated_photo_corners(model_and_processor):
    from animal_reid.explain import preprocess

    _, processor = model_and_processor
    photo = Image.fromarray(blobs(seed=2))
    pixels, geometry = preprocess(processor, photo, [8, 0, SIZE, SIZE], theta=np.pi)
    assert pixels.shape == (1, 3, SIZE, SIZE) and geometry.crop_size == (SIZE, SIZE)
    px, py = geometry.to_photo(torch.tensor([0.0, SIZE]), torch.tensor([0.0, SIZE]))
    assert px.tolist() == pytest.approx([8 + SIZE, 8], abs=1e-4)  # turned half a turn about the box centre
    assert py.tolist() == pytest.approx([SIZE, 0], abs=1e-4)
