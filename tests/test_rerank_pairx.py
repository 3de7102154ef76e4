"""PAIR-X re-ranking (animal_reid.rerank.pairx, .score_fusion): the score fusion fitted on validation, the
per-image feature-map cache, and ``identify --rerank pairx`` end to end.

What matters: the fit gives a score weight only where it raises validation top-1 over the cosine alone; a second
run on the same cache computes no feature maps; an unreadable gallery image keeps its cosine; and a query whose
individual appears in the gallery as a shifted view moves up when the correspondences agree.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cv2")
pytest.importorskip("zennit")

from animal_reid import identify  # noqa: E402
from animal_reid.identify import Identifier, ImageItem  # noqa: E402
from animal_reid.rerank import PairxReranker, ScoreFusion, fit_score_fusion  # noqa: E402
from animal_reid.testing.serve import tiny_model  # noqa: E402

SIZE = 128


def test_fit_gives_weight_to_a_score_that_finds_the_true_candidate():
    rng = np.random.default_rng(0)
    q, k = 60, 5
    cos = np.sort(rng.uniform(0.3, 0.6, (q, k)), axis=1)[:, ::-1].copy()
    correct = np.zeros((q, k), dtype=bool)
    correct[np.arange(q), rng.integers(1, k, q)] = True  # never the cosine's first
    residual = np.where(correct, 0.9, 0.1)
    noise = rng.uniform(0, 1, (q, k))
    fit = fit_score_fusion(cos, {"residual": residual, "coverage": noise}, correct, ["lion"] * q)
    assert (
        fit.weights["residual"] > 0
        and fit.curve["validation_top1_fused"] > fit.curve["validation_top1_cosine"]
    )
    fused = fit.fuse(cos, {"residual": residual, "coverage": noise})
    assert (correct[np.arange(q), fused.argmax(axis=1)]).mean() > 0.9
    useless = fit_score_fusion(cos, {"coverage": np.zeros((q, k))}, correct, ["lion"] * q)
    assert useless.weights == {"coverage": 0.0}  # nothing gained on validation: the cosine alone
    none = fit_score_fusion(cos, {}, correct, ["lion"] * q)  # no score at all: the cosine, fitted
    assert none.weights == {} and none.curve["validation_top1_fused"] == none.curve["validation_top1_cosine"]


def test_max_species_loss_refuses_weights_that_buy_one_species_gain_with_another_loss(tmp_path):
    # zebra: 4 queries whose true candidate is second, the score finds it; seal: 4 queries right by cosine, the score
    # sends 2 of them to a wrong candidate. Species-averaged top-1: 0.5 by cosine, 0.75 with the score.
    cos = np.tile([0.6, 0.45], (8, 1))
    correct = np.zeros((8, 2), dtype=bool)
    correct[:4, 1] = True
    correct[4:, 0] = True
    residual = np.zeros((8, 2))
    residual[:6, 1] = 1.0
    species = ["zebra"] * 4 + ["seal"] * 4
    free = fit_score_fusion(cos, {"residual": residual}, correct, species)
    assert free.weights["residual"] > 0 and free.max_species_loss is None
    assert free.curve["validation_top1_fused"] == 0.75
    held = fit_score_fusion(cos, {"residual": residual}, correct, species, max_species_loss=1)
    assert held.weights == {"residual": 0.0} and held.max_species_loss == 1
    loose = fit_score_fusion(cos, {"residual": residual}, correct, species, max_species_loss=2)
    assert loose.weights["residual"] > 0
    assert ScoreFusion.load(held.save(tmp_path / "f.json")).max_species_loss == 1


def _one_by_one(cos, scores, correct, species, grid, scales, max_species_loss):
    """The grid search written plainly, weighting by weighting: what the batched fit must choose."""
    import itertools

    from animal_reid.rerank.score_fusion import _bonus_terms

    groups = [np.flatnonzero(np.array(species) == s) for s in sorted(set(species))]

    def top1_rr(fused):
        best_true = np.where(correct, fused, -np.inf).max(axis=1)
        rank = (fused > best_true[:, None]).sum(axis=1)
        return (rank == 0).astype(float), 1.0 / (rank + 1.0)

    def macro(t, r):
        return float(np.mean([t[g].mean() for g in groups])), float(np.mean([r[g].mean() for g in groups]))

    plain_t, plain_r = top1_rr(cos)
    best = (macro(plain_t, plain_r), 0.0, None, None)
    for scale in scales:
        terms = _bonus_terms(scores, scale)
        for combo in itertools.product(grid, repeat=len(scores)):
            t, r = top1_rr(cos + sum(w * terms[n] for n, w in zip(scores, combo, strict=True)))
            lost = max(plain_t[g].sum() - t[g].sum() for g in groups)
            cand = macro(t, r)
            if (cand, -sum(combo)) > (best[0], -best[1]) and (
                max_species_loss is None or lost <= max_species_loss
            ):
                best = (cand, sum(combo), dict(zip(scores, combo, strict=True)), scale)
    return best


@pytest.mark.parametrize("max_species_loss", [None, 0, 2])
def test_the_batched_grid_search_chooses_what_a_one_by_one_search_chooses(max_species_loss):
    # cattle and nyala: the scores point at the true candidate; dog: the cosine is right and the scores are faint
    # noise, so each limit admits other weightings (None, 0 and 2 choose three different ones)
    rng = np.random.default_rng(7)
    q, k = 90, 6
    cos = np.sort(rng.uniform(0.3, 0.6, (q, k)), axis=1)[:, ::-1].copy()
    correct = np.zeros((q, k), dtype=bool)
    correct[np.arange(q), rng.integers(0, k, q)] = True
    correct[60:] = False
    correct[60:, 0] = True
    signal = correct.copy()
    signal[60:] = False
    faint = np.where(np.arange(q)[:, None] >= 60, 0.1, 1.0)
    scores = {
        "sift": np.where(signal, rng.integers(0, 40, (q, k)), rng.integers(-1, 30, (q, k))),
        "coverage": np.clip(signal * 0.2 + faint * rng.uniform(0, 0.8, (q, k)), 0, 1),
        "similarity": np.clip(signal * 0.1 + faint * rng.uniform(0, 0.9, (q, k)), 0, 1),
    }
    species = ["cattle"] * 30 + ["nyala"] * 30 + ["dog"] * 30
    grid, scales = (0.0, 0.1, 0.3, 0.6), (10.0, 40.0)
    fit = fit_score_fusion(
        cos, scores, correct, species, grid=grid, scales=scales, max_species_loss=max_species_loss
    )
    (top1, mrr), _, weights, scale = _one_by_one(
        cos, scores, correct, species, grid, scales, max_species_loss
    )
    assert top1 > fit.curve["validation_top1_cosine"]  # each limit leaves some weighting that gains
    assert fit.curve["validation_top1_fused"] == pytest.approx(top1)
    assert fit.weights == weights and fit.scale == scale
    assert fit.curve["validation_mrr_fused"] == pytest.approx(mrr)


def test_sift_inliers_enter_as_a_bounded_bonus_and_fusions_round_trip(tmp_path):
    fusion = ScoreFusion({"sift": 1.0, "residual": 0.5}, scale=10.0)
    cos = np.array([[0.5, 0.4]])
    out = fusion.fuse(cos, {"sift": np.array([[-1, 10]]), "residual": np.array([[0.0, 0.2]])})
    np.testing.assert_allclose(out, [[0.5, 0.4 + 10 / 20 + 0.1]])
    path = fusion.save(tmp_path / "f.json")
    assert ScoreFusion.load(path).weights == fusion.weights
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json: not a PAIR-X re-ranking fusion file"):
        ScoreFusion.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="unknown re-ranking score 'keypoints'"):
        ScoreFusion({"keypoints": 1.0})
    with pytest.raises(ValueError, match="weight of 'residual' must be a finite number >= 0"):
        ScoreFusion({"residual": -1.0})


def blobs(width: int, height: int = SIZE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 6, width // 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A tiny random model, a gallery of four animals (one a shifted view of the query) and an unreadable image."""
    root = tmp_path_factory.mktemp("pairx_rerank")
    model_dir = tiny_model(root / "model", image_size=SIZE)
    gallery = root / "gallery"
    wide = blobs(SIZE + 24, seed=1)
    for name, arr in (("asha", wide[:, 24:]), ("bo", blobs(SIZE, seed=2)), ("cleo", blobs(SIZE, seed=3)),
                      ("dara", blobs(SIZE, seed=4))):  # fmt: skip
        (gallery / name).mkdir(parents=True)
        Image.fromarray(arr).save(gallery / name / "a.png")
    (gallery / "eve").mkdir()
    (gallery / "eve" / "broken.png").write_bytes(b"\x89PNG not really")
    queries = root / "queries"
    queries.mkdir()
    Image.fromarray(wide[:, :SIZE]).save(queries / "asha_again.png")
    return model_dir, gallery, queries


def test_maps_are_cached_per_image_and_unreadable_images_keep_their_cosine(scene, tmp_path):
    from transformers import AutoImageProcessor, AutoModel

    model_dir, gallery, queries = scene
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    proc = AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=True)
    items = [ImageItem(str(p), p.name, identity=p.parent.name) for p in sorted(gallery.glob("*/*.png"))]
    query = ImageItem(str(queries / "asha_again.png"), "asha_again.png")
    fusion = ScoreFusion({"residual": 1.0, "coverage": 1.0})
    first = PairxReranker(model, proc, fusion, k=5, cache_dir=tmp_path / "cache", model_key="tiny")
    idx = np.array([[0, 1, 2, 3, 4]])
    cos = np.array([[0.5, 0.6, 0.55, 0.52, 0.9]])
    out = first.rerank([query], items, idx, cos)
    broken = [i.image.endswith("broken.png") for i in items].index(True)
    assert out.scores[0, broken] == pytest.approx(0.9)  # no feature map: its cosine alone
    assert np.all(out.scores >= out.cosine - 1e-12)
    assert first.n_computed == 5  # the query and four readable gallery images
    again = PairxReranker(model, proc, fusion, k=5, cache_dir=tmp_path / "cache", model_key="tiny")
    again.rerank([query], items, idx, cos)
    assert again.n_computed == 0  # every readable image's map came from the cache
    other_model = PairxReranker(model, proc, fusion, k=5, cache_dir=tmp_path / "cache", model_key="other")
    assert other_model.cache.dir != first.cache.dir


def test_identify_rerank_pairx_moves_the_matching_view_up(scene, tmp_path, capsys):
    model_dir, gallery, queries = scene
    ScoreFusion({"residual": 3.0, "coverage": 1.0, "similarity": 1.0}).save(tmp_path / "pairx_fusion.json")
    argv = ["--model", str(model_dir), "--gallery", str(gallery), "--queries", str(queries), "--cache-dir",
            str(tmp_path / "cache"), "--rerank", "pairx", "--rerank-k", "5", "--rerank-fusion",
            str(tmp_path / "pairx_fusion.json"), "--on-error", "skip", "-q"]  # fmt: skip
    assert identify.main([*argv, "--out", str(tmp_path / "out")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "re-ranked the shortlists of 1 queries (K = 5) with PAIR-X scores" in line
    rec = json.loads((tmp_path / "out" / "results.json").read_text())[0]
    top = rec["candidates"][0]
    assert top["identity"] == "asha" and top["score"] > top["cosine"] + 1.0
    assert any(p.name.startswith("pairx-") for p in (tmp_path / "cache").iterdir())
    (tmp_path / "sift.json").write_text(json.dumps({"weight": 1.0}))
    bad = [*argv[:-5], "--rerank-fusion", str(tmp_path / "sift.json"), "-q", "--out", str(tmp_path / "o2")]
    assert identify.main(bad) == 2
    assert "not a PAIR-X re-ranking fusion file" in capsys.readouterr().err


def test_identifier_builds_the_pairx_reranker_with_the_fusion_saved_beside_the_model(scene, tmp_path):
    model_dir, _, _ = scene
    ident = Identifier.from_pretrained(str(model_dir), cache_dir=tmp_path / "cache")
    rr = ident.local_reranker("pairx")
    assert isinstance(rr, PairxReranker) and rr.fusion.weights == {"residual": 0.5, "coverage": 0.5}
    with pytest.raises(ValueError, match="rerank must be None, 'local', 'pairx'"):
        ident.local_reranker("surf")
