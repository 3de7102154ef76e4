"""Encounter matching: fusion rules on hand-made score matrices, viewpoint compatibility, an encounter's flanks
linked, numpy and GalleryIndex search agreeing, and two animals of one photo never called the same individual."""

from __future__ import annotations

import math

import numpy as np
import pytest

from animal_reid.season import matching
from animal_reid.season.annotations import Annotation
from animal_reid.season.decisions import Band, Bands, decide
from animal_reid.season.matching import (
    EncounterMatch,
    MatchCatalogue,
    ViewpointTable,
    fuse,
    match_encounters,
    rank,
)

NAN = math.nan
S = np.array(
    [
        [0.9, 0.5, NAN, NAN],
        [0.6, 0.7, 0.2, NAN],
        [0.4, 0.8, NAN, NAN],
    ]
)


@pytest.mark.parametrize(
    "rule, fused, order",
    [
        ("max", [0.9, 0.8, 0.2, NAN], [0, 1, 2]),
        ("mean", [0.6333333, 0.6666667, 0.2, NAN], [1, 0, 2]),
        ("top2mean", [0.75, 0.75, 0.2, NAN], [0, 1, 2]),  # a tie: the lower index first
        ("vote", [0.9, 0.75, 0.2, NAN], [1, 0, 2]),  # two votes for 1 (rows 1, 2), one for 0
    ],
)
def test_fusion_rules_on_a_hand_made_matrix(rule, fused, order):
    got_order, got = rank(S, rule)
    np.testing.assert_allclose(got, fused, atol=1e-6)
    np.testing.assert_allclose(fuse(S, rule), fused, atol=1e-6)
    assert got_order.tolist() == order  # the never-compared candidate 3 is left out


def test_fusion_of_one_annotation_is_its_scores_and_bad_rules_are_one_line():
    row = np.array([[0.3, NAN, 0.7]])
    for rule in matching.RULES:
        np.testing.assert_allclose(fuse(row, rule), [0.3, NAN, 0.7])
    for bad in ("median", "", "MAX"):
        with pytest.raises(ValueError) as err:
            fuse(S, bad)
        assert str(err.value) == f"fusion rule must be one of max, mean, top2mean, vote, got {bad!r}"


@pytest.mark.parametrize(
    "a, b, ok",
    [
        ("left", "right", False),
        ("Right", "left", False),
        ("frontleft", "backright", False),
        ("upleft", "right", False),
        ("left", "left", True),
        ("left", "front", True),
        ("back", "right", True),
        ("top", "left", True),
        (None, "right", True),
        ("", "left", True),
    ],
)
def test_viewpoint_table(a, b, ok):
    assert ViewpointTable().compatible(a, b) is ok
    assert ViewpointTable().compatible(b, a) is ok


def test_viewpoint_table_is_configurable():
    t = ViewpointTable.parse("left:right, front:back")
    assert (
        not t.compatible("front", "back")
        and not t.compatible("left", "right")
        and t.compatible("front", "left")
    )
    assert ViewpointTable.parse("").compatible("left", "right")
    m = t.matrix(["left", None, "front"], ["right", "back", "left"])
    assert m.tolist() == [[False, True, True], [True, True, True], [True, False, True]]


@pytest.mark.parametrize("spec", ["left", "left:right:front", "left:,front:back"])
def test_a_bad_viewpoint_spec_is_one_line(spec):
    with pytest.raises(ValueError, match=r"^viewpoint pair '.*' is not two names a:b \(e\.g\. left:right\)$"):
        ViewpointTable.parse(spec)


def _unit(*v) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def _flank_catalogue(table=matching.DEFAULT_VIEWPOINTS) -> MatchCatalogue:
    # R is known only by its right flank, which looks exactly like the query; L by a left flank a bit less alike
    emb = np.stack([_unit(1, 0, 0), _unit(1, 0.3, 0), _unit(0, 0, 1)])
    return MatchCatalogue(emb, ["R", "L", "Z"], ["nyala"] * 3, ["right", "left", "left"], table)


def test_a_left_flank_never_matches_a_right_flank_only_individual():
    q = np.stack([_unit(1, 0, 0)])
    aware = _flank_catalogue().candidates(q, ["nyala"], ["left"], k=5)[0]
    assert [name for name, _ in aware] == ["L", "Z"]
    blind = _flank_catalogue(table=None).candidates(q, ["nyala"], ["left"], k=5)[0]
    assert [name for name, _ in blind] == ["R", "L", "Z"] and blind[0][1] == pytest.approx(1.0)
    # an unknown viewpoint is compared with every flank, a right flank only with right (and unknown) ones
    assert [n for n, _ in _flank_catalogue().candidates(q, ["nyala"], [None], k=5)[0]] == ["R", "L", "Z"]
    assert [n for n, _ in _flank_catalogue().candidates(q, ["nyala"], ["right"], k=5)[0]] == ["R"]
    assert _flank_catalogue().candidates(q, ["lion"], ["left"], k=5)[0] == []  # another species: nothing


def test_an_encounter_with_both_flanks_links_them():
    # catalogue: L known by its left flank; Z by a right flank that resembles this animal's right flank a little
    emb = np.stack([_unit(1, 0, 0), _unit(0.2, 1, 0.5)])
    cat = MatchCatalogue(emb, ["L", "Z"], ["nyala", "nyala"], ["left", "right"])
    anns = [
        Annotation("l", "p1.jpg", species="nyala", viewpoint="left", encounter="E"),
        Annotation("r", "p2.jpg", species="nyala", viewpoint="right", encounter="E"),
    ]
    q = np.stack([_unit(1, 0.05, 0), _unit(0, 1, 0)])
    (m,) = match_encounters(anns, q, cat, rule="mean", k=2)
    assert [c for c, _ in m.candidates] == ["L", "Z"]
    assert m.candidates[0][1] == pytest.approx(float(q[0] @ emb[0]))  # the right flank has no score for L
    assert math.isnan(m.scores[1, 0]) and math.isnan(m.scores[0, 1])
    out = decide([m], Bands(Band(0.9, 0.5)))
    assert [(a.annotation_id, a.decision, a.individual, a.encounter) for a in out] == [
        ("l", "known", "L", "E"),
        ("r", "known", "L", "E"),
    ]


def test_two_animals_of_one_photo_are_never_the_same_known_individual():
    emb = np.stack([_unit(1, 0, 0), _unit(0.8, 0.6, 0)])
    cat = MatchCatalogue(emb, ["X", "Y"], ["zebra", "zebra"])
    anns = [
        Annotation("a", "p1.jpg", species="zebra", encounter="E"),
        Annotation("b", "p1.jpg", species="zebra", encounter="E"),
    ]
    q = np.stack([_unit(1, 0, 0), _unit(1, 0.05, 0)])  # both closest to X
    matches = match_encounters(anns, q, cat, k=2)
    assert [m.encounter for m in matches] == ["E/1", "E/2"]
    assert all(m.best[0] == "X" for m in matches)
    out = {a.annotation_id: a for a in decide(matches, Bands(Band(0.7, 0.5)))}
    assert (out["a"].decision, out["a"].individual) == ("known", "X")  # the higher score keeps X
    assert (out["b"].decision, out["b"].individual, out["b"].candidate) == ("known", "Y", "Y")
    assert out["b"].score == pytest.approx(float(q[1] @ emb[1]))


def test_decide_bands_per_species_and_an_encounter_without_candidates():
    bands = Bands(Band(0.8, 0.6), {"lion": Band(0.5, 0.3)})
    ms = [
        EncounterMatch("e1", "zebra", ["a"], ["p1"], [("X", 0.7)], np.zeros((1, 1))),
        EncounterMatch("e2", "lion", ["b", "c"], ["p2", "p3"], [("Y", 0.7)], np.zeros((2, 1))),
        EncounterMatch("e3", "zebra", ["d"], ["p4"], [], np.zeros((1, 0))),
        EncounterMatch("e4", "zebra", ["e"], ["p5"], [("X", 0.55)], np.zeros((1, 1))),
    ]
    got = [(a.annotation_id, a.decision, a.individual, a.candidate, a.encounter) for a in decide(ms, bands)]
    assert got == [
        ("a", "unsure", None, "X", "e1"),
        ("b", "known", "Y", "Y", "e2"),
        ("c", "known", "Y", "Y", "e2"),
        ("d", "new", None, None, "e3"),
        ("e", "new", None, "X", "e4"),
    ]


def _clusters(n_ids: int, per: int, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    emb = np.repeat(centres, per, axis=0) + 0.3 * rng.normal(size=(n_ids * per, dim))
    return emb.astype(np.float32), [f"id{i}" for i in range(n_ids) for _ in range(per)], centres


def test_numpy_and_gallery_index_search_agree(monkeypatch):
    emb, ids, centres = _clusters(40, 5)
    q = (centres[:10] + 0.3 * np.random.default_rng(1).normal(size=(10, 16))).astype(np.float32)
    small = MatchCatalogue(emb, ids).candidates(q, k=5)
    monkeypatch.setattr(matching, "NUMPY_MAX", 0)  # every group through animal_reid.search.GalleryIndex
    big = MatchCatalogue(emb, ids).candidates(q, k=5)
    assert [[n for n, _ in c] for c in small] == [[n for n, _ in c] for c in big]
    np.testing.assert_allclose(
        [[s for _, s in c] for c in small], [[s for _, s in c] for c in big], atol=1e-5
    )
    assert [c[0][0] for c in small] == [f"id{i}" for i in range(10)]


def test_candidates_widen_the_search_until_k_individuals():
    # 300 near-copies of one individual crowd the first 50 hits
    rng = np.random.default_rng(0)
    crowd = _unit(1, 0, 0) + 0.01 * rng.normal(size=(300, 3)).astype(np.float32)
    others = np.stack([_unit(0.5, 1, 0), _unit(0.5, 0, 1), _unit(0, 1, 1)])
    cat = MatchCatalogue(np.concatenate([crowd, others]), ["A"] * 300 + ["B", "C", "D"])
    got = cat.candidates(np.stack([_unit(1, 0, 0)]), k=3)[0]
    assert [n for n, _ in got] == ["A", "B", "C"]


def test_match_encounters_fuses_each_encounter_and_rejects_bad_arguments():
    emb, ids, centres = _clusters(10, 4)
    cat = MatchCatalogue(emb, ids)
    rng = np.random.default_rng(2)
    q = np.concatenate(
        [centres[3] + 0.3 * rng.normal(size=(3, 16)), centres[7] + 0.3 * rng.normal(size=(2, 16))]
    )
    anns = [Annotation(f"a{i}", f"p{i}.jpg", encounter="E3" if i < 3 else "E7") for i in range(5)]
    ms = match_encounters(anns, q, cat, rule="max", k=3)
    assert [(m.encounter, m.annotation_ids, m.best[0]) for m in ms] == [
        ("E3", ["a0", "a1", "a2"], "id3"),
        ("E7", ["a3", "a4"], "id7"),
    ]
    assert ms[0].best[1] == pytest.approx(float(np.max(cat.individual_scores(q[:3], ["id3"]))))
    for kwargs, message in [
        ({"rule": "best"}, "fusion rule must be one of max, mean, top2mean, vote, got 'best'"),
        ({"k": 0}, "k and shortlist must be >= 1, got 0 and 10"),
        ({"shortlist": -1}, "k and shortlist must be >= 1, got 5 and -1"),
    ]:
        with pytest.raises(ValueError) as err:
            match_encounters(anns, q, cat, **kwargs)
        assert str(err.value) == message
