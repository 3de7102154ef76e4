"""Discovery of new individuals: hand-worked clusterings, constraints, the approximate graph against the exact one,
cluster_quality against sklearn and brute force, proposed ids, and bad inputs as one-line errors."""

import itertools
import logging
import math

import numpy as np
import pytest

from animal_reid import extras
from animal_reid.season import clustering_quality
from animal_reid.season.discovery import cluster_quality, discover, knn_graph, proposed_ids

needs_search = pytest.mark.skipif(
    bool(extras.missing_modules("search")), reason="the search extra is missing"
)


def _angles(*degrees: float) -> np.ndarray:
    """Unit rows in the plane (padded to 4-D) at these angles: cosine of two rows = cos(angle between them)."""
    a = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    out = np.zeros((len(a), 4), dtype=np.float32)
    out[:, 0], out[:, 1] = np.cos(a), np.sin(a)
    return out


def _clustered(n_ids: int, per_id: int, dim: int = 64, same_cos: float = 0.7, seed: int = 0):
    """``n_ids`` identities of ``per_id`` unit rows each (mean same-identity cosine ``same_cos``), rows shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    ident = rng.permutation(np.repeat(np.arange(n_ids), per_id))
    x = centres[ident] + math.sqrt((1 / same_cos - 1) / dim) * rng.normal(size=(ident.shape[0], dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), ident


# ---------------------------------------------------------------------------------------------------------------
# hand-worked clusterings
@needs_search
def test_three_tight_clusters_get_three_labels():
    x = _angles(0, 3, 6, 120, 123, 126, 240, 243, 246)
    rows = [0, 3, 6, 1, 4, 7, 2, 5, 8]  # interleaved: labels follow each cluster's first row
    assert discover(x[rows], 0.9).tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2]


@needs_search
def test_cannot_link_splits_same_photo_rows_even_when_similar():
    # a 0 deg, b 10 deg (same photo as a), c 4 deg. Edges by similarity: a-c (4), c-b (6), a-b (10).
    # a-c merge; c-b would put a and b together: refused; a-b refused. c stays with a.
    x = _angles(0, 10, 4)
    stats: dict = {}
    labels = discover(x, math.cos(math.radians(15)), cannot_link=["p1", "p1", None], stats=stats)
    assert labels.tolist() == [0, 1, 0]
    assert (stats["refused_merges"], stats["conflicting_components"], stats["edges"]) == (2, 1, 3)
    assert discover(x, math.cos(math.radians(15))).tolist() == [0, 0, 0]  # unconstrained: one cluster


@needs_search
def test_cannot_link_keeps_unrelated_components_untouched():
    x = _angles(0, 1, 90, 91, 200)
    labels = discover(x, 0.99, cannot_link=["p", "q", "p", "r", None])
    assert labels.tolist() == [0, 0, 1, 1, 2]


@needs_search
def test_components_carry_every_value_of_their_rows():
    # A 0 (p1), B 3 (p2), C 4, D 8 (p1), E 9 (p2); joined up to 5.5 deg: B-C, D-E (1), A-B (3), A-C, C-D (4),
    # B-D, C-E (5). {A, B, C} holds p1 and p2, {D, E} too: C-D, B-D and C-E are refused.
    stats: dict = {}
    labels = discover(
        _angles(0, 3, 4, 8, 9),
        math.cos(math.radians(5.5)),
        cannot_link=["p1", "p2", None, "p1", "p2"],
        stats=stats,
    )
    assert labels.tolist() == [0, 0, 0, 1, 1]
    assert (stats["edges"], stats["refused_merges"]) == (7, 3)


def _reference_clustering(x, threshold, photos):
    """Brute force: every pair's cosine, pairs joined in descending order unless their clusters share a photo."""
    n = x.shape[0]
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    edges = sorted((-sims[i, j], i, j) for i in range(n) for j in range(i + 1, n) if sims[i, j] >= threshold)
    cluster = list(range(n))
    for _, i, j in edges:
        ci, cj = cluster[i], cluster[j]
        if ci == cj:
            continue
        members_i = [r for r in range(n) if cluster[r] == ci]
        members_j = [r for r in range(n) if cluster[r] == cj]
        pi = {photos[r] for r in members_i if photos[r] is not None}
        if pi & {photos[r] for r in members_j if photos[r] is not None}:
            continue
        for r in members_j:
            cluster[r] = ci
    first: dict = {}
    return [first.setdefault(c, len(first)) for c in cluster]


@needs_search
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_constrained_clustering_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    x, _ = _clustered(8, 5, dim=16, same_cos=0.55, seed=seed)
    photos = [None if v >= 12 else f"p{v}" for v in rng.integers(0, 20, size=40)]
    labels = discover(x, 0.3, cannot_link=photos, k=39, index="exact")
    assert labels.tolist() == _reference_clustering(x, 0.3, photos)


@needs_search
def test_must_link_joins_an_encounter_even_when_dissimilar():
    # rows at 0 and 90 deg form one encounter: one node at their mean, 45 deg, which joins the row at 45 deg
    x = _angles(0, 90, 45, 180)
    stats: dict = {}
    labels = discover(x, 0.95, must_link_groups=["e1", "e1", None, None], stats=stats)
    assert labels.tolist() == [0, 0, 0, 1]
    assert (stats["rows"], stats["nodes"], stats["clusters"]) == (4, 3, 2)
    assert stats["node_of_row"].tolist() == [0, 0, 1, 2]
    assert discover(x, 0.95).tolist() == [0, 1, 2, 3]


@needs_search
def test_must_link_group_with_two_rows_of_one_photo_is_an_error_or_dissolved(caplog):
    x = _angles(0, 90, 45, 2)
    groups, photos = ["e1", "e1", "e1", None], ["p7", None, "p7", None]
    with pytest.raises(ValueError) as err:
        discover(x, 0.95, must_link_groups=groups, cannot_link=photos)
    assert str(err.value) == (
        "must_link_groups: group 'e1' holds rows 0 and 2 of one cannot_link value 'p7' "
        "(two animals of one photo are never one individual)"
    )
    with caplog.at_level(logging.WARNING, logger="animal_reid.season.discovery"):
        labels = discover(x, 0.95, must_link_groups=groups, cannot_link=photos, conflicts="split")
    assert labels.tolist() == [0, 1, 2, 0]
    assert (
        "group 'e1' holds rows 0 and 2 of one cannot_link value 'p7': the group is dissolved" in caplog.text
    )


@needs_search
@pytest.mark.parametrize("threshold", [1.0, 0.9999, 0.99999])
def test_threshold_above_every_similarity_gives_singletons(threshold):
    x, _ = _clustered(5, 4, seed=3)
    assert discover(x, threshold).tolist() == list(range(20))


@needs_search
def test_threshold_minus_one_joins_every_neighbour():
    x, _ = _clustered(2, 4, seed=1)
    assert discover(x, -1.0).tolist() == [0] * 8


@needs_search
def test_missing_group_values_are_no_constraint():
    x = _angles(0, 1, 2, 3)
    for missing in (None, float("nan"), ""):
        assert (
            discover(x, 0.99, must_link_groups=[missing] * 4, cannot_link=[missing] * 4).tolist() == [0] * 4
        )


@needs_search
def test_non_unit_rows_are_normalised_and_empty_input_gives_no_labels():
    x = _angles(0, 3, 120, 123) * np.array([[2.0], [0.5], [3.0], [7.0]], dtype=np.float32)
    assert discover(x, 0.9).tolist() == [0, 0, 1, 1]
    assert discover(np.zeros((0, 4), np.float32), 0.5).tolist() == []
    assert discover(_angles(10), 0.5).tolist() == [0]


# ---------------------------------------------------------------------------------------------------------------
# the approximate graph
@needs_search
@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_approximate_graph_agrees_with_exact(method):
    x, ident = _clustered(400, 5, same_cos=0.75, seed=7)  # 2,000 rows
    exact, approx = knn_graph(x, 10, "exact"), knn_graph(x, 10, method)
    assert (exact.method, approx.method) == ("exact", method)
    assert (exact.indices >= 0).all() and not (exact.indices == np.arange(2000)[:, None]).any()
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.indices, exact.indices, strict=True)])
    assert recall >= 0.95
    labels_exact, labels_approx = discover(x, 0.55, index="exact"), discover(x, 0.55, index=method)
    assert cluster_quality(labels_exact, labels_approx)["ari"] >= 0.99
    assert cluster_quality(ident, labels_exact)["ari"] >= 0.95


@needs_search
def test_exact_scores_are_the_cosines_in_descending_order():
    x, _ = _clustered(10, 3, seed=2)
    g = knn_graph(x, 4, "exact")
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_allclose(g.scores, np.sort(sims, axis=1)[:, ::-1][:, :4], atol=1e-6)
    np.testing.assert_allclose(g.scores, np.take_along_axis(sims, g.indices, 1), atol=1e-6)


@needs_search
def test_k_beyond_the_rows_pads_with_minus_one():
    g = knn_graph(_angles(0, 10, 25), 5, "exact")
    assert g.indices.tolist() == [[1, 2, -1, -1, -1], [0, 2, -1, -1, -1], [1, 0, -1, -1, -1]]
    assert np.isinf(g.scores[:, 2:]).all()


@needs_search
@pytest.mark.parametrize("method", ["exact", "ivf", "auto"])
def test_labels_stable_given_the_seed(method):
    x, _ = _clustered(400, 5, same_cos=0.6, seed=11)
    groups = np.arange(2000) // 2
    first = discover(x, 0.5, index=method, seed=3, must_link_groups=groups)
    again = discover(x, 0.5, index=method, seed=3, must_link_groups=groups)
    assert first.tolist() == again.tolist()
    assert first[0] == 0 and set(first.tolist()) == set(range(int(first.max()) + 1))


# ---------------------------------------------------------------------------------------------------------------
# cluster_quality
def _brute_pairs(t, p):
    same = pred = true = 0
    for i, j in itertools.combinations(range(len(t)), 2):
        pred += p[i] == p[j]
        true += t[i] == t[j]
        same += (p[i] == p[j]) and (t[i] == t[j])
    return same / pred if pred else None, same / true if true else None


@needs_search
def test_cluster_quality_hand_worked():
    # true pairs: aa aa aa bb = 4; predicted pairs: 00, 11 11 11 = 4; shared: (a, 0) 1 + (b, 1) 1 = 2
    q = cluster_quality(["a", "a", "a", "b", "b"], [0, 0, 1, 1, 1])
    assert (q["pairwise_precision"], q["pairwise_recall"], q["n_true"], q["n_pred"]) == (0.5, 0.5, 2, 2)
    perfect = cluster_quality(["x", "y", "y"], [5, 2, 2])
    assert perfect == {"ari": 1.0, "ami": 1.0, "pairwise_precision": 1.0, "pairwise_recall": 1.0,
                       "n_true": 2, "n_pred": 2}  # fmt: skip
    singletons = cluster_quality([1, 2, 3], [1, 2, 3])
    assert (singletons["pairwise_precision"], singletons["pairwise_recall"]) == (None, None)


@needs_search
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cluster_quality_against_sklearn_and_brute_force(seed, monkeypatch):
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

    rng = np.random.default_rng(seed)
    n = 60
    t = rng.integers(0, [3, 8, 20, 60][seed], size=n)
    p = rng.integers(0, [5, 10, 40, 2][seed], size=n)
    q = cluster_quality([f"id{v}" for v in t], p)
    assert q["ari"] == pytest.approx(adjusted_rand_score(t, p), abs=1e-12)
    assert q["ami"] == pytest.approx(adjusted_mutual_info_score(t, p), abs=1e-12)
    assert (q["pairwise_precision"], q["pairwise_recall"]) == pytest.approx(_brute_pairs(t, p))
    assert (q["n_true"], q["n_pred"]) == (len(set(t)), len(set(p)))
    monkeypatch.setattr(clustering_quality, "AMI_SKLEARN_MAX_CELLS", 0)  # the size-grouped expectation
    assert cluster_quality(t, p)["ami"] == pytest.approx(adjusted_mutual_info_score(t, p), abs=1e-9)


@needs_search
@pytest.mark.parametrize(
    "true, pred",
    [
        (list(range(30)), list(range(30))),  # all singletons both sides
        (list(range(30)), [0] * 15 + [1] * 15),
        ([i // 3 for i in range(30)], [i // 5 for i in range(30)]),
    ],
)
def test_size_grouped_ami_matches_sklearn_on_edge_cases(true, pred, monkeypatch):
    from sklearn.metrics import adjusted_mutual_info_score

    monkeypatch.setattr(clustering_quality, "AMI_SKLEARN_MAX_CELLS", 0)
    assert cluster_quality(true, pred)["ami"] == pytest.approx(
        adjusted_mutual_info_score(true, pred), abs=1e-9
    )


# ---------------------------------------------------------------------------------------------------------------
# proposed ids
def test_proposed_ids_number_clusters_per_species_by_first_row():
    assert proposed_ids([0, 1, 0, 2], "lion") == [
        "new:lion:0001",
        "new:lion:0002",
        "new:lion:0001",
        "new:lion:0003",
    ]
    assert proposed_ids([3, 1, 3, 0], ["lion", "nyala", "lion", "nyala"], prefix="s2026") == [
        "s2026:lion:0001", "s2026:nyala:0001", "s2026:lion:0001", "s2026:nyala:0002",
    ]  # fmt: skip
    assert proposed_ids(np.arange(9_999), "cow")[-1] == "new:cow:9999"
    wide = proposed_ids(np.arange(10_000), "cow")
    assert (wide[0], wide[-1]) == ("new:cow:00001", "new:cow:10000")
    assert proposed_ids(np.zeros(0, dtype=np.int64), "cow") == []


# ---------------------------------------------------------------------------------------------------------------
# bad inputs: one line each
def _x(n=4):
    return _angles(*range(0, 10 * n, 10))


@pytest.mark.parametrize("row, value", [(2, float("nan")), (0, float("inf")), (3, -float("inf"))])
def test_non_finite_embeddings(row, value):
    x = _x()
    x[row, 1] = value
    with pytest.raises(ValueError) as err:
        discover(x, 0.5)
    assert str(err.value) == f"embeddings: row {row} is not finite (nan or inf)"


@pytest.mark.parametrize("row", [0, 1, 3])
def test_zero_embedding_rows(row):
    x = _x()
    x[row] = 0
    with pytest.raises(ValueError) as err:
        discover(x, 0.5)
    assert str(err.value) == f"embeddings: row {row} is all zeros (no direction)"


@pytest.mark.parametrize(
    "emb, shape",
    [
        (np.ones(4), "(4,)"),
        (np.ones((2, 3, 4)), "(2, 3, 4)"),
        (np.ones((5, 0)), "(5, 0)"),
        (np.float32(1), "()"),
    ],
)
def test_wrong_shapes(emb, shape):
    with pytest.raises(ValueError) as err:
        discover(emb, 0.5)
    assert str(err.value) == f"embeddings must be a 2-D [N, D] array with D >= 1, got shape {shape}"


@pytest.mark.parametrize(
    "emb", [np.array([["a", "b"]]), np.array([[None, 1.0]], dtype=object), np.ones((2, 2), bool)]
)
def test_non_numeric_embeddings(emb):
    with pytest.raises(ValueError, match=r"^embeddings must be numbers, got dtype "):
        discover(emb, 0.5)


@pytest.mark.parametrize(
    "threshold, message",
    [
        (1.5, "threshold must be in [-1, 1] (a cosine similarity), got 1.5"),
        (-1.01, "threshold must be in [-1, 1] (a cosine similarity), got -1.01"),
        (float("nan"), "threshold must be in [-1, 1] (a cosine similarity), got nan"),
        (float("inf"), "threshold must be in [-1, 1] (a cosine similarity), got inf"),
        ("0.5", "threshold must be a number in [-1, 1], got '0.5'"),
        (None, "threshold must be a number in [-1, 1], got None"),
        (True, "threshold must be a number in [-1, 1], got True"),
    ],
)
def test_threshold_out_of_range(threshold, message):
    with pytest.raises(ValueError) as err:
        discover(_x(), threshold)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"must_link_groups": ["a", "b", "c"]},
            "must_link_groups has 3 entries, expected 4 (one per embedding row)",
        ),
        ({"cannot_link": list(range(5))}, "cannot_link has 5 entries, expected 4 (one per embedding row)"),
        ({"cannot_link": np.arange(0)}, "cannot_link has 0 entries, expected 4 (one per embedding row)"),
        (
            {"must_link_groups": "abcd"},
            "must_link_groups must be a sequence with one value per embedding row, got str",
        ),
        ({"cannot_link": 7}, "cannot_link must be a sequence with one value per embedding row, got int"),
        ({"cannot_link": [1, [2], 3, 4]}, "cannot_link: row 1 holds an unhashable list"),
    ],
)
def test_group_arrays_of_wrong_length_or_kind(kwargs, message):
    with pytest.raises(ValueError) as err:
        discover(_x(), 0.5, **kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k must be an integer >= 1, got 0"),
        ({"k": 2.5}, "k must be an integer >= 1, got 2.5"),
        ({"k": True}, "k must be an integer >= 1, got True"),
        ({"index": "flat"}, "index must be one of ('auto', 'exact', 'hnsw', 'ivf'), got 'flat'"),
        ({"index": None}, "index must be one of ('auto', 'exact', 'hnsw', 'ivf'), got None"),
        ({"conflicts": "merge"}, "conflicts must be one of ('error', 'split'), got 'merge'"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError) as err:
        discover(_x(), 0.5, **kwargs)
    assert str(err.value) == message


@needs_search
@pytest.mark.parametrize(
    "true, pred, message",
    [
        ([1, 2, 3], [1, 2], "predicted has 2 labels, true_labels 3: expected one each per row"),
        ([], [], "cluster_quality needs at least one row"),
        (["a", None, "b"], [0, 1, 2], "true_labels: row 1 has no label (None)"),
        (["a", "b"], ["x", ""], "predicted: row 1 has no label ('')"),
        ([[1, 2]], [[1, 2]], "true_labels must be one label per row (1-D), got shape (1, 2)"),
    ],
)
def test_cluster_quality_bad_inputs(true, pred, message):
    with pytest.raises(ValueError) as err:
        cluster_quality(true, pred)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "labels, species, message",
    [
        ([0, -1], "lion", "labels must be non-negative integer cluster ids, one per row"),
        ([0.0, 1.0], "lion", "labels must be non-negative integer cluster ids, one per row"),
        ([[0, 1]], "lion", "labels must be non-negative integer cluster ids, one per row"),
        ([0, 1], ["lion"], "species has 1 entries, expected 2 (one per row)"),
        ([0, 1], "li:on", "species: row 0 has 'li:on', expected a non-empty name without ':'"),
        ([0, 1], ["lion", ""], "species: row 1 has '', expected a non-empty name without ':'"),
        ([0, 1, 0], ["lion", "lion", "nyala"], "cluster 0 holds rows 0 (lion) and 2 (nyala) of two species"),
    ],
)
def test_proposed_ids_bad_inputs(labels, species, message):
    with pytest.raises(ValueError) as err:
        proposed_ids(labels, species)
    assert str(err.value) == message
