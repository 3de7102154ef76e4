"""Open-set decision: hand-worked BAKS / BAUS / AUROC and threshold calibration."""

import math

import numpy as np
import pytest

from animal_reid import openset
from animal_reid.openset import NEW_INDIVIDUAL, OpenSetThreshold

# Hand-worked example: six queries, gallery identities A and B; X and Y are unknown.
#   q1 A->A 0.9 | q2 A->B 0.8 | q3 B->B 0.7 | q4 X->A 0.5 | q5 Y->B 0.75 | q6 Y->A 0.3
TRUE = ["A", "A", "B", "X", "Y", "Y"]
BEST = ["A", "B", "B", "A", "B", "A"]
SCORES = [0.9, 0.8, 0.7, 0.5, 0.75, 0.3]
UNKNOWN = [False, False, False, True, True, True]


def test_hand_example_at_threshold_0_6():
    pred = openset.predict_open_set(SCORES, BEST, 0.6)
    assert pred.tolist() == ["A", "B", "B", NEW_INDIVIDUAL, "B", NEW_INDIVIDUAL]
    # BAKS: A -> 1/2 (q1 right, q2 wrong), B -> 1; mean 0.75.  BAUS: X -> 1, Y -> 1/2; mean 0.75.
    assert openset.baks(TRUE, pred, {"X", "Y"}) == pytest.approx(0.75)
    assert openset.baus(TRUE, pred, {"X", "Y"}) == pytest.approx(0.75)
    rep = openset.open_set_report(TRUE, pred, SCORES, UNKNOWN)
    assert rep["geometric_mean"] == pytest.approx(0.75)
    assert rep["accuracy_known"] == pytest.approx(2 / 3)
    assert rep["accuracy_unknown"] == pytest.approx(2 / 3)
    # AUROC of -score for "unknown": unknown 0.5 and 0.3 lie below all three known scores, 0.75 below two: 8/9
    assert rep["AUROC"] == pytest.approx(8 / 9)
    assert rep["n_known"] == 3 and rep["n_unknown"] == 3


def test_calibration_finds_the_hand_worked_optimum():
    # objective sqrt(BAKS * BAUS) is 0.75 only for thresholds in (0.5, 0.7]; the one candidate there is 0.6
    thr, obj = openset.calibrate_threshold(SCORES, BEST, TRUE, UNKNOWN)
    assert thr == pytest.approx(0.6)
    assert obj == pytest.approx(0.75)


def test_calibration_objective_matches_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    n = 80
    true = rng.choice([f"id{i}" for i in range(12)], size=n)
    unknown = np.isin(true, ["id0", "id1", "id2", "id3"])
    best = np.where(rng.random(n) < 0.7, true, rng.choice([f"id{i}" for i in range(4, 12)], size=n))
    scores = np.where(unknown, rng.normal(0.4, 0.1, n), rng.normal(0.6, 0.1, n)).round(
        2
    )  # rounding makes ties
    thr, obj = openset.calibrate_threshold(scores, best, true, unknown)
    pred = openset.predict_open_set(scores, best, thr)
    unknown_ids = set(true[unknown])
    got = math.sqrt(openset.baks(true, pred, unknown_ids) * openset.baus(true, pred, unknown_ids))
    assert got == pytest.approx(obj)
    brute = max(
        math.sqrt(
            openset.baks(true, openset.predict_open_set(scores, best, c), unknown_ids)
            * openset.baus(true, openset.predict_open_set(scores, best, c), unknown_ids)
        )
        for c in np.linspace(scores.min() - 0.01, scores.max() + 0.01, 400)
    )
    assert obj == pytest.approx(brute)


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.random(200) < 0.3
    s = rng.integers(0, 10, size=200).astype(float) + y
    assert openset.auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert math.isnan(openset.auroc([True, True], [0.1, 0.2]))


def test_fit_per_species_with_global_fallback(tmp_path):
    species = ["lion"] * 6 + ["nyala"] * 2
    scores = SCORES + [0.9, 0.2]
    best = BEST + ["N1", "N1"]
    true = TRUE + ["N1", "N2"]
    unknown = UNKNOWN + [False, True]
    t = OpenSetThreshold.fit(scores, best, true, unknown, species=species, min_per_species=3)
    assert t.per_species == {"lion": pytest.approx(0.6)}  # nyala has 1 known / 1 unknown: global
    assert t.threshold_for("nyala") == t.global_threshold
    assert t.threshold_for("lion") == pytest.approx(0.6)
    pred = t.predict(scores, best, species)
    assert pred[-1] == NEW_INDIVIDUAL and pred[-2] == "N1"
    path = tmp_path / "thr.json"
    t.save(path)
    assert OpenSetThreshold.load(path) == t


def test_report_per_species_and_animalclef_mean():
    species = ["lion"] * 6 + ["nyala"] * 2
    true = TRUE + ["N1", "N2"]
    pred = list(openset.predict_open_set(SCORES, BEST, 0.6)) + ["N1", "N1"]
    rep = openset.open_set_report(true, pred, SCORES + [0.9, 0.2], UNKNOWN + [False, True], species=species)
    assert rep["per_species"]["lion"]["geometric_mean"] == pytest.approx(0.75)
    assert rep["per_species"]["nyala"]["BAKS"] == pytest.approx(1.0)
    assert rep["per_species"]["nyala"]["BAUS"] == pytest.approx(0.0)
    assert rep["mean_geometric_mean"] == pytest.approx(0.75 / 2)


def test_calibration_needs_both_kinds():
    with pytest.raises(ValueError, match="both known and unknown"):
        openset.calibrate_threshold([0.1, 0.2], ["a", "b"], ["a", "b"], [False, False])


def test_best_matches_and_open_set_split():
    g = np.eye(3, dtype=np.float32)
    q = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.9]], dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    s, lab, idx = openset.best_matches(q, g, ["a", "b", "c"])
    assert lab.tolist() == ["a", "c"] and idx.tolist() == [0, 2]
    np.testing.assert_allclose(s, [q[0, 0], q[1, 2]], rtol=1e-6)

    labels = np.repeat([f"id{i}" for i in range(10)], 4)
    is_g, is_q, is_u = openset.open_set_split(labels, unknown_fraction=0.3, seed=0)
    assert not (is_g & is_q).any() and (is_g | is_q).all()
    assert len(set(labels[is_u])) == 3 and not (set(labels[is_u]) & set(labels[is_g]))
    assert (is_q & ~is_u).sum() == 7  # one query per known identity
    again = openset.open_set_split(labels, unknown_fraction=0.3, seed=0)
    assert all((a == b).all() for a, b in zip(again, (is_g, is_q, is_u), strict=True))


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_gallery_queries_hand_example():
    # species s: A at 0 and 10 degrees, B at 30 and 40 (one encounter), C at 90; species t: D at 200 and 205
    labels = ["A", "A", "B", "B", "C", "D", "D"]
    emb = np.array([_unit(d) for d in (0, 10, 30, 40, 90, 200, 205)])
    q = openset.gallery_queries(emb, labels, ["s"] * 5 + ["t"] * 2, [None, None, "e", "e", None, None, None])
    known = ~q["unknown"].astype(bool)
    # known: only A and D keep another image outside their own encounter; each finds its twin
    assert q["true"][known].tolist() == ["A", "A", "D", "D"]
    assert q["best_label"][known].tolist() == ["A", "A", "D", "D"]
    assert q["best_score"][known] == pytest.approx([math.cos(math.radians(a)) for a in (10, 10, 5, 5)])
    # unknown (own identity removed): A0 -> B30, A10 -> B30, B30 -> A10, B40 -> A10, C90 -> B40; D has no other
    assert q["true"][~known].tolist() == ["A", "A", "B", "B", "C"]
    assert q["best_label"][~known].tolist() == ["B", "B", "A", "A", "B"]
    assert q["best_score"][~known] == pytest.approx([math.cos(math.radians(a)) for a in (30, 20, 20, 30, 50)])
    assert q["species"].tolist() == ["s"] * 7 + ["t"] * 2


def test_fit_gallery_separates_the_hand_example():
    labels = ["A", "A", "B", "B", "C", "D", "D"]
    emb = np.array([_unit(d) for d in (0, 10, 30, 40, 90, 200, 205)])
    species = ["s"] * 5 + ["t"] * 2
    thr = OpenSetThreshold.fit_gallery(emb, labels, species, [None, None, "e", "e", None, None, None], 1)
    # s: known at cos 10 deg, unknown at most cos 20 deg: the midpoint separates them (objective 1)
    mid = (math.cos(math.radians(10)) + math.cos(math.radians(20))) / 2
    assert thr.per_species == {"s": pytest.approx(mid)}  # t has no unknown query: the global threshold
    assert thr.calibration["s"]["objective"] == pytest.approx(1.0)
    assert thr.global_threshold == pytest.approx(mid)
    assert thr.calibration["source"] == "gallery"

    # a seeded sample of one query image per species, still against the whole gallery: a subset of the full set
    def rows(q):
        return list(zip(q["true"], q["best_label"], q["best_score"].round(6), q["unknown"], strict=True))

    full = rows(openset.gallery_queries(emb, labels, species))
    few = rows(openset.gallery_queries(emb, labels, species, max_queries_per_species=1, seed=0))
    assert 1 <= len(few) <= 4 and all(r in full for r in few)
    assert few == rows(openset.gallery_queries(emb, labels, species, max_queries_per_species=1, seed=0))
    with pytest.raises(ValueError, match="two identities of one species"):
        OpenSetThreshold.fit_gallery(emb[:1], labels[:1])
