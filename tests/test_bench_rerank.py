"""The open-split protocol of benchmarks/bench_rerank.py: shortlists and scores match the paper's leave-one-out."""

from __future__ import annotations

import numpy as np

from animal_reid.identify import ImageItem
from animal_reid.metrics import evaluate_reid
from benchmarks import bench_rerank


def _items_and_embeddings(seed: int = 0):
    rng = np.random.default_rng(seed)
    items, rows = [], []
    for sp in ("zebra", "lion"):
        for ind in range(5):
            centre = rng.normal(size=16)
            for k in range(4):
                # two encounters of two images each, or (the last individual) none recorded
                enc = None if ind == 4 else f"{sp}{ind}-e{k // 2}"
                items.append(
                    ImageItem(
                        image=b"", name=f"{sp}{ind}-{k}", identity=f"{sp}{ind}", species=sp, encounter=enc
                    )
                )
                rows.append(centre + rng.normal(scale=1.5, size=16))
    emb = np.asarray(rows, dtype=np.float32)
    return items, emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_open_shortlist_leaves_out_the_query_its_encounter_and_other_species():
    items, emb = _items_and_embeddings()
    full, idx, cos = bench_rerank.shortlist(emb, emb, items, items, k=30, loo=True)
    for q, (row, scores) in enumerate(zip(idx, cos, strict=True)):
        allowed = [
            g
            for g, it in enumerate(items)
            if g != q
            and it.species == items[q].species
            and not (
                it.identity == items[q].identity
                and it.encounter is not None
                and it.encounter == items[q].encounter
            )
        ]
        finite = [g for g, s in zip(row, scores, strict=True) if np.isfinite(s)]
        assert sorted(finite) == allowed  # every allowed image, nothing else, ahead of the masked ones
        assert np.all(np.diff(scores[np.isfinite(scores)]) <= 0)
    # a query whose individual has no encounter recorded keeps its own individual's other images
    q = next(i for i, it in enumerate(items) if it.encounter is None)
    assert sum(items[g].identity == items[q].identity for g in idx[q] if np.isfinite(full[q, g])) == 3


def test_open_score_matrix_evaluation_equals_leave_one_out_on_embeddings():
    items, emb = _items_and_embeddings(seed=1)
    full, _, _ = bench_rerank.shortlist(emb, emb, items, items, k=5, loo=True)
    got = bench_rerank.evaluate_scores(full, items, items, loo=True)
    ref = evaluate_reid(
        emb,
        [i.identity for i in items],
        [i.encounter for i in items],
        [i.species for i in items],
        topk=(1, 5),
    )
    for key in ("top1", "top5", "mAP", "n_queries"):
        assert got[key] == ref[key], key
    for sp in ("zebra", "lion"):
        assert got["per_species"][sp]["top1"] == ref["per_species"][sp]["top1"]
        assert got["per_species"][sp]["mAP"] == ref["per_species"][sp]["mAP"]
    bench_rerank.check_global(got, emb, emb, items, items, loo=True)  # raises on any disagreement
    # re-ranking changes the figures: reversing every row's order must lower top-1
    flipped = np.where(np.isfinite(full), -full, full)
    assert bench_rerank.evaluate_scores(flipped, items, items, loo=True)["top1"] < got["top1"]


def test_dumped_shortlists_refit_to_the_same_fusion(tmp_path):
    from animal_reid.rerank import fit_fusion

    items, emb = _items_and_embeddings()
    _, idx, cos = bench_rerank.shortlist(emb, emb, items, items, 5, True)
    rng = np.random.default_rng(1)
    inl = rng.integers(-1, 40, size=idx.shape)
    correct = np.array(
        [[items[g].identity == q.identity for g in row] for q, row in zip(items, idx, strict=True)]
    )
    bench_rerank._dump(
        str(tmp_path / "s.npz"),
        {"val": (items, cos, inl, bench_rerank.correct_candidates(items, items, idx))},
    )
    z = np.load(tmp_path / "s.npz")
    assert (z["val_correct"] == correct).all() and (z["val_inliers"] == inl).all()
    assert z["val_species"].tolist() == [q.species for q in items]
    again = fit_fusion(z["val_cosine"], z["val_inliers"], z["val_correct"], z["val_species"].tolist())
    first = fit_fusion(cos, inl, correct, [q.species for q in items])
    assert again.to_dict() == first.to_dict()


def test_a_loaded_fusion_must_match_the_run_s_local_features_and_k(tmp_path):
    from animal_reid.rerank import LocalFeatureConfig
    from animal_reid.rerank.fusion import Fusion

    config = LocalFeatureConfig()
    path = Fusion(weight=1.5, scale=10.0, feature_config=config.to_dict(), shortlist_k=20).save(
        tmp_path / "f.json"
    )
    fusion = bench_rerank.loaded_fusion(str(path), config, 20)
    assert (fusion.weight, fusion.scale, fusion.shortlist_k) == (1.5, 10.0, 20)
    for other, k in ((LocalFeatureConfig(method="orb"), 20), (config, 50)):
        try:
            bench_rerank.loaded_fusion(str(path), other, k)
        except ValueError as err:
            assert "not with this run's" in str(err)
        else:
            raise AssertionError("a fusion fitted with other features or another K was accepted")
