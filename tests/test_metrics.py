"""Re-ID metrics against hand-worked examples and a brute-force python-loop reference."""

import json
import math

import numpy as np
import pytest

from animal_reid import metrics


def _unit(angles_deg, dim=2):
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    out = np.zeros((len(a), dim), dtype=np.float32)
    out[:, 0] = np.cos(a)
    out[:, 1] = np.sin(a)
    return out


# ---------------------------------------------------------------------------------------------------------------
# brute-force reference: python loops, float64, ties broken by gallery order
def _reference(q, g, ql, gl, qe=None, ge=None, self_index=None, max_rank=20):
    first, aps = [], []
    for i in range(len(q)):
        cands = []
        for j in range(len(g)):
            if self_index is not None and self_index[i] == j:
                continue
            if qe is not None and ql[i] == gl[j] and qe[i] == ge[j] and qe[i] is not None:
                continue
            score = sum(float(a) * float(b) for a, b in zip(q[i], g[j], strict=True))
            cands.append((-score, j))
        cands.sort()
        hits = [gl[j] == ql[i] for _, j in cands]
        if not any(hits):
            first.append(-1)
            aps.append(math.nan)
            continue
        first.append(hits.index(True))
        found, precisions = 0, []
        for r, h in enumerate(hits, start=1):
            if h:
                found += 1
                precisions.append(found / r)
        aps.append(sum(precisions) / len(precisions))
    return np.array(first), np.array(aps)


def _random_data(rng, n, dim=8, n_ids=6, n_enc=10):
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array([f"id{v}" for v in rng.integers(0, n_ids, size=n)], dtype=object)
    enc = np.array([f"e{v}" for v in rng.integers(0, n_enc, size=n)], dtype=object)
    return emb, labels, enc


# ---------------------------------------------------------------------------------------------------------------
# hand-worked examples
# angles 0, 15, 25, 90 deg; labels A, A, B, B.  Leave-one-out rankings (most similar first):
#   A1(0):  A2(15) B1(25) B2(90)  -> first match rank 0, AP 1
#   A2(15): B1(10 away) A1(15) B2 -> rank 1, AP 1/2
#   B1(25): A2 A1 B2              -> rank 2, AP 1/3
#   B2(90): B1 A2 A1              -> rank 0, AP 1
HAND = _unit([0, 15, 25, 90])
HAND_LABELS = ["A", "A", "B", "B"]


def test_leave_one_out_hand_example():
    res = metrics.leave_one_out(HAND, HAND_LABELS)["all"]
    np.testing.assert_array_equal(res.first_match_rank, [0, 1, 2, 0])
    np.testing.assert_allclose(res.average_precision, [1, 0.5, 1 / 3, 1])
    out = metrics.evaluate_reid(HAND, HAND_LABELS, topk=(1, 2, 3), max_rank=3)
    assert out["protocol"] == "leave_one_out"
    assert out["top1"] == pytest.approx(0.5)
    assert out["top2"] == pytest.approx(0.75)
    assert out["top3"] == pytest.approx(1.0)
    assert out["mAP"] == pytest.approx((1 + 0.5 + 1 / 3 + 1) / 4)
    assert out["cmc"] == pytest.approx([0.5, 0.75, 1.0])
    assert out["n_queries"] == 4 and out["n_queries_without_match"] == 0


def test_same_encounter_matches_are_excluded_and_counted():
    # A1 and A2 share an encounter: each A query loses its only match; B1's ranking keeps A2, A1 as negatives.
    out = metrics.evaluate_reid(HAND, HAND_LABELS, encounters=["e1", "e1", "e2", "e3"], topk=(1,))
    assert out["n_queries"] == 4
    assert out["n_queries_without_match"] == 2
    assert out["top1"] == pytest.approx(0.5)  # B1 misses (rank 2), B2 hits
    assert out["mAP"] == pytest.approx((1 / 3 + 1) / 2)
    # same encounter but a different identity stays in the gallery as a negative
    out2 = metrics.evaluate_reid(HAND, HAND_LABELS, encounters=["e1", "e2", "e1", "e3"], topk=(1,))
    assert out2["n_queries_without_match"] == 0
    assert out2["top1"] == pytest.approx(0.5)


def test_query_gallery_hand_example():
    # queries A2(15), B1(25) against gallery A1(0), B2(90): A2 -> A1 first (AP 1); B1 -> A1, B2 (rank 1, AP 1/2)
    out = metrics.evaluate_reid(
        HAND[[1, 2]], ["A", "B"], gallery_embeddings=HAND[[0, 3]], gallery_labels=["A", "B"], topk=(1, 2)
    )
    assert out["protocol"] == "query_gallery"
    assert out["top1"] == pytest.approx(0.5)
    assert out["top2"] == pytest.approx(1.0)
    assert out["mAP"] == pytest.approx(0.75)


def test_per_species_macro_and_micro():
    # species s2: C(0), C(5), D(90): both C queries hit at rank 0 (AP 1); D has no match
    emb = np.concatenate([HAND, _unit([0, 5, 90])])
    labels = HAND_LABELS + ["C", "C", "D"]
    species = ["s1"] * 4 + ["s2"] * 3
    out = metrics.evaluate_reid(emb, labels, species=species, topk=(1,))
    s1, s2 = out["per_species"]["s1"], out["per_species"]["s2"]
    assert s1["top1"] == pytest.approx(0.5) and s1["n_queries"] == 4
    assert s2["top1"] == pytest.approx(1.0) and s2["mAP"] == pytest.approx(1.0)
    assert s2["n_queries"] == 3 and s2["n_queries_without_match"] == 1
    assert out["top1"] == pytest.approx(0.75)  # macro: (0.5 + 1) / 2
    assert out["micro"]["top1"] == pytest.approx(4 / 6)
    assert out["mAP"] == pytest.approx(((1 + 0.5 + 1 / 3 + 1) / 4 + 1) / 2)
    assert out["n_species"] == 2 and out["n_queries_without_match"] == 1
    json.dumps(out)  # JSON-ready


def test_no_match_anywhere_gives_none_not_crash():
    out = metrics.evaluate_reid(_unit([0, 10, 20]), ["a", "b", "c"])
    assert out["n_queries_without_match"] == 3
    assert out["top1"] is None and out["mAP"] is None
    json.dumps(out)


def test_species_are_kept_apart_in_leave_one_out():
    # the same label string in two species: each query's only match sits in the other species -> no match
    out = metrics.evaluate_reid(_unit([0, 1]), ["x", "x"], species=["lion", "nyala"])
    assert out["n_queries_without_match"] == 2


# ---------------------------------------------------------------------------------------------------------------
# against the brute-force reference on random data
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_encounters", [False, True])
def test_leave_one_out_matches_reference(seed, use_encounters):
    rng = np.random.default_rng(seed)
    emb, labels, enc = _random_data(rng, 40)
    res = metrics.leave_one_out(emb, labels, enc if use_encounters else None, chunk_size=7)["all"]
    ref_first, ref_ap = _reference(
        emb, emb, labels, labels, enc if use_encounters else None, enc if use_encounters else None, range(40)
    )
    np.testing.assert_array_equal(res.first_match_rank, ref_first)
    np.testing.assert_allclose(res.average_precision, ref_ap, rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_query_gallery_matches_reference_per_species(seed):
    rng = np.random.default_rng(seed)
    q, ql, qe = _random_data(rng, 30)
    g, gl, ge = _random_data(rng, 50)
    qs = rng.choice(["lion", "nyala"], size=30)
    gs = rng.choice(["lion", "nyala"], size=50)
    out = metrics.query_gallery(q, ql, g, gl, qe, ge, qs, gs, chunk_size=4)
    for sp in ("lion", "nyala"):
        qi, gi = np.flatnonzero(qs == sp), np.flatnonzero(gs == sp)
        ref_first, ref_ap = _reference(q[qi], g[gi], ql[qi], gl[gi], qe[qi], ge[gi])
        np.testing.assert_array_equal(out[sp].first_match_rank, ref_first)
        np.testing.assert_allclose(out[sp].average_precision, ref_ap, rtol=1e-6, equal_nan=True)


def test_ties_are_broken_by_gallery_order_like_the_reference():
    rng = np.random.default_rng(11)
    emb, labels, enc = _random_data(rng, 45, dim=4, n_ids=5)
    emb = np.where(emb > 0, 0.5, -0.5).astype(
        np.float32
    )  # unit rows of +-1/2: scores in {-1, -1/2, 0, 1/2, 1}
    assert len(np.unique(emb @ emb.T)) == 5  # many exact ties
    res = metrics.leave_one_out(emb, labels, enc, chunk_size=6)["all"]
    ref_first, ref_ap = _reference(emb, emb, labels, labels, enc, enc, range(45))
    np.testing.assert_array_equal(res.first_match_rank, ref_first)
    np.testing.assert_allclose(res.average_precision, ref_ap, rtol=1e-6, equal_nan=True)


def test_summary_matches_reference_cmc_and_map():
    rng = np.random.default_rng(3)
    emb, labels, enc = _random_data(rng, 60, n_ids=10)
    out = metrics.evaluate_reid(emb, labels, encounters=enc, topk=(1, 5), max_rank=10)
    ref_first, ref_ap = _reference(emb, emb, labels, labels, enc, enc, range(60))
    valid = ref_first >= 0
    assert out["n_queries_without_match"] == int((~valid).sum())
    assert out["top1"] == pytest.approx((ref_first[valid] < 1).mean())
    assert out["top5"] == pytest.approx((ref_first[valid] < 5).mean())
    assert out["mAP"] == pytest.approx(ref_ap[valid].mean())


def test_chunk_size_does_not_change_results():
    rng = np.random.default_rng(4)
    emb, labels, enc = _random_data(rng, 100, dim=16, n_ids=12)
    a = metrics.evaluate_reid(emb, labels, enc, chunk_size=1)
    b = metrics.evaluate_reid(emb, labels, enc, chunk_size=1000)
    assert a == b


def test_missing_encounters_never_match_each_other():
    emb = _unit([0, 15, 25, 90])
    out = metrics.evaluate_reid(emb, HAND_LABELS, encounters=[None, None, "e", float("nan")], topk=(1,))
    assert out["n_queries_without_match"] == 0


def test_rows_are_normalised_so_scores_are_cosines():
    out = metrics.evaluate_reid(HAND * np.array([[1.0], [3.0], [0.5], [2.0]], dtype=np.float32), HAND_LABELS)
    assert out == metrics.evaluate_reid(HAND, HAND_LABELS)


def test_torch_inputs_give_the_same_results():
    import torch

    rng = np.random.default_rng(6)
    emb, _, _ = _random_data(rng, 30)
    labels = rng.integers(0, 5, size=30)
    want = metrics.evaluate_reid(emb, labels)
    assert metrics.evaluate_reid(torch.from_numpy(emb), torch.from_numpy(labels)) == want


def test_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="labels has 3 entries, expected 4"):
        metrics.evaluate_reid(HAND, ["A", "A", "B"])
    with pytest.raises(ValueError, match="2-D"):
        metrics.evaluate_reid(np.zeros(4), HAND_LABELS)


def test_cosine_topk_matches_numpy():
    rng = np.random.default_rng(5)
    q, _, _ = _random_data(rng, 13, dim=16)
    g, _, _ = _random_data(rng, 101, dim=16)
    s, i = metrics.cosine_topk(q, g, 5, chunk_size=4)
    full = q @ g.T
    ref_i = np.argsort(-full, axis=1)[:, :5]
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(s, np.take_along_axis(full, ref_i, 1), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# the evaluate metric module (metrics/reid): loads offline and agrees with animal_reid.metrics
def test_evaluate_module_agrees_with_package(repo_root):
    evaluate = pytest.importorskip("evaluate")
    reid = evaluate.load(str(repo_root / "metrics" / "reid"))
    rng = np.random.default_rng(7)
    emb, labels, enc = _random_data(rng, 50, n_ids=8)
    species = rng.choice(["lion", "nyala"], size=50)
    g, gl, ge = _random_data(rng, 70, n_ids=8)
    gs = rng.choice(["lion", "nyala"], size=70)

    # leave-one-out, rows added in two batches
    reid.add_batch(predictions=emb[:20], references=list(labels[:20]))
    got = reid.compute(
        predictions=emb[20:], references=list(labels[20:]), encounters=list(enc), species=list(species)
    )
    want = metrics.evaluate_reid(emb, labels, encounters=enc, species=species)
    assert got.keys() == want.keys()
    _assert_close_dicts(got, want)

    got = reid.compute(
        predictions=emb,
        references=list(labels),
        encounters=list(enc),
        species=list(species),
        gallery_embeddings=g,
        gallery_labels=list(gl),
        gallery_encounters=list(ge),
        gallery_species=list(gs),
        topk=(1, 3),
    )
    want = metrics.evaluate_reid(
        emb,
        labels,
        enc,
        species,
        gallery_embeddings=g,
        gallery_labels=gl,
        gallery_encounters=ge,
        gallery_species=gs,
        topk=(1, 3),
    )
    _assert_close_dicts(got, want)

    # integer labels and the hand-worked example
    out = reid.compute(predictions=HAND, references=[0, 0, 1, 1])
    assert out["top1"] == pytest.approx(0.5)
    assert out["mAP"] == pytest.approx((1 + 0.5 + 1 / 3 + 1) / 4)


def _assert_close_dicts(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_close_dicts(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_close_dicts(x, y)
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-6)
    else:
        assert a == b
