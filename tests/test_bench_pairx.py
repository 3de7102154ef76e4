"""benchmarks/bench_pairx.py's bookkeeping: the seeded query sample and the per-query top-1 / average precision of
a ranking whose shortlist was re-scored (checked against animal_reid.metrics on the same scores)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from animal_reid.metrics import evaluate_reid
from benchmarks.bench_pairx import query_metrics, sample_queries
from benchmarks.bench_rerank import Ranked


def item(identity: str, species: str = "lion"):
    return SimpleNamespace(identity=identity, species=species)


def test_sample_keeps_at_most_n_queries_per_species_in_order():
    queries = [item(f"i{k}", "lion" if k % 3 else "nyala") for k in range(30)]
    r = Ranked(queries, [item("g")], np.zeros((30, 4)), np.zeros((1, 4)), np.zeros((30, 1)), np.zeros((30, 1), int),
               np.zeros((30, 1)))  # fmt: skip
    s = sample_queries(r, 5, seed=1)
    species = [q.species for q in s.queries]
    assert species.count("lion") == 5 and species.count("nyala") == 5
    kept = [queries.index(q) for q in s.queries]
    assert kept == sorted(kept) and s.gallery is r.gallery and s.full.shape == (10, 1)
    assert sample_queries(r, 5, seed=1).queries == s.queries and sample_queries(r, None, 0) is r


def test_query_metrics_match_evaluate_reid_and_follow_the_rescored_shortlist():
    rng = np.random.default_rng(0)
    gallery = [item(f"id{k % 4}") for k in range(12)]
    queries = [item(f"id{k}") for k in range(4)] + [item("stranger")]
    full = rng.uniform(-1, 1, (5, 12))
    idx = np.argsort(-full, axis=1)[:, :6]
    same = query_metrics(full, idx, np.take_along_axis(full, idx, 1), queries, gallery)
    ref = evaluate_reid(full[:4].astype(np.float32), [q.identity for q in queries[:4]], None, None,
                        gallery_embeddings=np.eye(12, dtype=np.float32),
                        gallery_labels=[g.identity for g in gallery])  # fmt: skip
    assert not same["scorable"][4] and same["scorable"][:4].all()
    assert same["top1"][:4].mean() == ref["top1"] and np.isclose(same["ap"][:4].mean(), ref["mAP"])
    # re-scoring the shortlist so that a true match leads makes that query right at top-1
    q, true_slot = next(
        (q, j)
        for q in np.flatnonzero(same["top1"][:4] == 0)
        for j, g in enumerate(idx[q])
        if gallery[g].identity == queries[q].identity
    )
    short = np.take_along_axis(full, idx, 1)
    short[q, true_slot] = 5.0
    assert query_metrics(full, idx, short, queries, gallery)["top1"][q] == 1.0


def test_side_scores_are_cached_and_read_back_only_for_the_same_settings(tmp_path):
    import argparse

    from benchmarks.bench_pairx import CACHE_KEYS, PAIRX_SCORES, cached_scores

    args = argparse.Namespace(
        **{k: None for k in CACHE_KEYS}, scores_cache=str(tmp_path / "s.npz"), pairx_scores=PAIRX_SCORES
    )
    args.model, args.k = "m", 20
    rng = np.random.default_rng(0)

    def side(names=PAIRX_SCORES):
        pairx = {b: {n: rng.uniform(size=(3, 4)) for n in names} for b in (0, 1)}
        return {"sift": rng.integers(-1, 50, (3, 4)), "pairx": pairx, "sift_s": 1.5, "pairx_s": 2.5}

    calls = []
    first = cached_scores(args, lambda: calls.append(1) or (side(), side()))
    again = cached_scores(args, lambda: calls.append(1) or (side(), side()))
    assert calls == [1]  # the second call read the file
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["sift"], b["sift"])
        assert (a["sift_s"], a["pairx_s"]) == (b["sift_s"], b["pairx_s"]) and set(b["pairx"]) == {0, 1}
        for border in (0, 1):
            for name in PAIRX_SCORES:
                np.testing.assert_array_equal(a["pairx"][border][name], b["pairx"][border][name])
    args.k = 50  # other settings: refused, the file kept
    with pytest.raises(SystemExit, match="s.npz: scores of other settings"):
        cached_scores(args, lambda: (side(), side()))
    assert (tmp_path / "s.npz").is_file()
    # a cache written before a score existed is refused for a fit that weighs it, and serves one that does not
    args.k, args.scores_cache = 20, str(tmp_path / "old.npz")
    old = cached_scores(args, lambda: (side(("residual", "coverage")),) * 2)
    with pytest.raises(SystemExit, match="old.npz: has no pairx/0/similarity, pairx/1/similarity"):
        cached_scores(args, lambda: (side(), side()))
    args.pairx_scores = ("residual", "coverage")
    np.testing.assert_array_equal(cached_scores(args, lambda: None)[0]["sift"], old[0]["sift"])
