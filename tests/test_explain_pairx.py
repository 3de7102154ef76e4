"""PAIR-X relevance and scores (animal_reid.explain): the tail of the network from a stage's maps, relevance of
each cell to the pair's cosine (LRP through zennit, or gradient x activation), and the two re-ranking scores.

A random tiny model suffices for what is checked: the tail reproduces the model's own features, relevance is
symmetric for identical images, an image and its shifted crop agree in geometry (inverted residual mean near 1)
and look alike where they match (matched similarity) where an unrelated image does not, and the batched shortlist
scores equal the pair-by-pair ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from animal_reid.explain import (
    explain_pair,
    feature_maps,
    pair_relevance,
    pair_scores,
    run_tail,
    shortlist_scores,
    stage_index,
)
from animal_reid.explain.correspondences import Correspondences
from animal_reid.explain.relevance import conv_bn_pairs, default_method
from animal_reid.explain.scores import inverted_residual_mean, matched_similarity
from animal_reid.testing.serve import tiny_model

SIZE = 128
SHIFT = 16


@pytest.fixture(scope="module")
def model_and_processor(tmp_path_factory):
    from transformers import AutoImageProcessor, AutoModel

    path = tiny_model(tmp_path_factory.mktemp("pairx") / "model", image_size=SIZE)
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    return model, AutoImageProcessor.from_pretrained(path, trust_remote_code=True)


def blobs(width: int, height: int = SIZE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 6, width // 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def pixels(arr: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)
    return ((x - 0.5) / 0.25)[None]


def test_tail_from_stage_maps_gives_the_model_features(model_and_processor):
    model, _ = model_and_processor
    x = torch.cat([pixels(blobs(SIZE, seed=s)) for s in range(2)])
    index = stage_index(model, None)
    with torch.no_grad():
        want = model(pixel_values=x).features
        got = run_tail(model, index, feature_maps(model, x, index))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_tail_of_an_unknown_embedder_layout_injects_the_stage_output(model_and_processor, monkeypatch):
    """A model whose embedder parts are not the known ones: the stage's output is injected into its own forward."""
    from animal_reid.explain import features

    model, _ = model_and_processor
    x = torch.cat([pixels(blobs(SIZE, seed=s)) for s in range(2)])
    index = stage_index(model, None)
    monkeypatch.setattr(features, "_head", lambda _model: None)
    with torch.no_grad():
        want = model(pixel_values=x).features
        got = run_tail(model, index, feature_maps(model, x, index))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.realdata
def test_an_export_older_than_pool_and_project_is_explained(data_root):
    """The six-species export of ../shared/models carries its own (older) modeling code and processor: the tail
    is its own forward with the stage's output injected, and its processor is converted."""
    from transformers import AutoImageProcessor, AutoModel

    path = data_root.parent / "models" / "real6-lite0-224"
    lions = data_root / "wildlife_reidentification-main" / "Lion_Data_Zero" / "train"
    if not path.is_dir() or not lions.is_dir():
        pytest.skip(f"{path} or {lions} absent")
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    assert not hasattr(model, "pool_and_project")
    processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=True)
    photos = sorted(next(d for d in sorted(lions.iterdir()) if len(list(d.glob("*.png"))) >= 2).glob("*.png"))
    x = torch.cat([processor.preprocess_one(str(p))[None] for p in photos[:2]])
    index = stage_index(model, None)
    with torch.no_grad():
        want = model(pixel_values=x).features
        got = run_tail(model, index, feature_maps(model, x, index))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    found = explain_pair(model, processor, str(photos[0]), str(photos[1]), top=5)
    with Image.open(photos[1]) as im:
        width, height = im.size
    assert len(found.xy_b) == 5 and found.cosine == pytest.approx(
        float(torch.nn.functional.cosine_similarity(want[:1], want[1:])), abs=1e-4
    )
    assert bool(((found.xy_b >= 0) & (found.xy_b <= [width, height])).all())


def test_conv_bn_pairs_are_the_mergeable_ones(model_and_processor):
    model, _ = model_and_processor
    pairs = conv_bn_pairs(model)
    modules = dict(model.named_modules())
    assert pairs, "timm's blocks register a BatchNorm after each convolution"
    for (conv,), bn in pairs:
        assert isinstance(modules[conv], torch.nn.Conv2d) and isinstance(modules[bn], torch.nn.BatchNorm2d)
        assert modules[conv].out_channels == modules[bn].num_features
    assert default_method(model) == "lrp"


@pytest.mark.parametrize("method", ["lrp", "gradxact"])
def test_identical_images_have_identical_relevance_and_full_agreement(model_and_processor, method):
    model, _ = model_and_processor
    index = stage_index(model, None)
    maps = feature_maps(model, pixels(blobs(SIZE, seed=3)), index)
    rel_a, rel_b, cos = pair_relevance(model, maps, maps, index, method)
    assert float(cos[0]) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(rel_a, rel_b)
    assert bool((rel_a >= 0).all()) and float(rel_a.sum()) > 0
    scores = pair_scores(maps[0], maps[0], rel_a[0], rel_b[0])
    assert (
        scores.n_matches == maps.shape[-1] * maps.shape[-2]
    )  # every cell is its own mutual nearest neighbour
    assert scores.coverage == pytest.approx(1.0)
    assert scores.residual == pytest.approx(1.0, abs=1e-3)
    assert scores.similarity == pytest.approx(1.0, abs=1e-5)  # every cell matched to itself


def test_shifted_crop_agrees_in_geometry_where_an_unrelated_image_does_not(model_and_processor):
    model, processor = model_and_processor
    arr = blobs(SIZE + 2 * SHIFT)
    a = Image.fromarray(arr[:, :SIZE])
    shifted = Image.fromarray(arr[:, SHIFT : SHIFT + SIZE])
    other = Image.fromarray(blobs(SIZE, seed=11))
    same = explain_pair(model, processor, a, shifted, top=10)
    unrelated = explain_pair(model, processor, a, other, top=10)
    assert same.scores.residual > 0.5 > unrelated.scores.residual
    assert same.scores.coverage > unrelated.scores.coverage
    assert same.scores.similarity > unrelated.scores.similarity
    offsets = same.xy_b - same.xy_a  # the most relevant matches move with the content
    assert np.mean(np.abs(offsets[:, 0] + SHIFT) <= 8) >= 0.8
    assert list(same.relevance) == sorted(same.relevance, reverse=True)
    data = same.to_dict()
    assert len(data["matches"]) == 10 and data["relevance_method"] == "lrp"


def test_box_maps_matches_into_the_box(model_and_processor):
    model, processor = model_and_processor
    photo = Image.fromarray(blobs(3 * SIZE, 2 * SIZE, seed=5))
    box = (150.0, 60.0, 140.0, 120.0)
    found = explain_pair(model, processor, photo, photo, boxes=(box, None), top=15)
    x, y = found.xy_a[:, 0], found.xy_a[:, 1]
    assert bool(((x >= box[0]) & (x <= box[0] + box[2]) & (y >= box[1]) & (y <= box[1] + box[3])).all())


def test_shortlist_scores_equal_pair_by_pair(model_and_processor):
    model, _ = model_and_processor
    index = stage_index(model, None)
    x = torch.cat([pixels(blobs(SIZE, seed=s)) for s in range(4)])
    maps = feature_maps(model, x, index)
    batched = shortlist_scores(model, index, maps[0], maps[1:], "gradxact")
    for k, got in enumerate(batched):
        rel_q, rel_g, _ = pair_relevance(model, maps[:1], maps[k + 1 : k + 2], index, "gradxact")
        one = pair_scores(maps[0], maps[k + 1], rel_q[0], rel_g[0])
        assert got.n_matches == one.n_matches
        assert got.coverage == pytest.approx(one.coverage, rel=1e-4)
        assert got.residual == pytest.approx(one.residual, rel=1e-4)
        assert got.similarity == pytest.approx(one.similarity, rel=1e-4)
    assert shortlist_scores(model, index, maps[0], maps[:0]) == []


def test_matched_similarity_is_the_relevance_weighted_mean_of_the_matches():
    cells = torch.zeros(2, 2, dtype=torch.long)
    found = Correspondences(cells, cells, torch.tensor([1.0, 0.2]))
    assert matched_similarity(found, torch.tensor([3.0, 1.0])) == pytest.approx((3.0 + 0.2) / 4.0)
    assert matched_similarity(found, torch.zeros(2)) == pytest.approx(0.6)  # no relevance: the plain mean
    assert matched_similarity(Correspondences(cells[:0], cells[:0], torch.zeros(0)), torch.zeros(0)) == 0.0


def test_residual_needs_four_matches_and_rejects_scatter():
    grid = np.array([[r, c] for r in range(5) for c in range(5)])
    assert inverted_residual_mean(grid[:3], grid[:3]) == 0.0
    assert inverted_residual_mean(grid, grid + [1, 2]) == pytest.approx(1.0, abs=1e-3)  # a pure translation
    scattered = np.random.default_rng(0).permutation(grid)
    assert inverted_residual_mean(grid, scattered) < 0.5


def test_unknown_relevance_method_is_refused(model_and_processor):
    model, _ = model_and_processor
    maps = torch.zeros(1, 8, 4, 4)
    with pytest.raises(ValueError, match="relevance method must be one of"):
        pair_relevance(model, maps, maps, 0, "saliency")


def test_border_cells_take_no_part_when_asked(model_and_processor):
    """Zero padding makes the crops' corner cells alike in any two photos (the strongest match on real lions):
    ``border`` leaves the outer rings of cells out of the matches and of the relevance totals."""
    model, _ = model_and_processor
    index = stage_index(model, None)
    maps = feature_maps(model, pixels(blobs(SIZE, seed=3)), index)
    rel_a, rel_b, _ = pair_relevance(model, maps, maps, index, "gradxact")
    h, w = maps.shape[-2:]
    inner = pair_scores(maps[0], maps[0], rel_a[0], rel_b[0], border=1)
    assert inner.n_matches == (h - 2) * (w - 2) and inner.coverage == pytest.approx(1.0)
    cells = torch.cat([inner.matches.cells_a, inner.matches.cells_b])
    assert int(cells.min()) >= 1 and int(cells[:, 0].max()) <= h - 2 and int(cells[:, 1].max()) <= w - 2
    both = shortlist_scores(model, index, maps[0], maps, "gradxact", borders=(0, 1))
    assert both[0][0].n_matches == h * w and both[1][0].n_matches == (h - 2) * (w - 2)
