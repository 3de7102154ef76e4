"""How well a clustering recovers the true individuals: AnimalCLEF 2026's adjusted Rand index and adjusted mutual
information, and pairwise precision / recall, all from contingency counts (never a pair matrix), so a million rows
cost seconds.

``cluster_quality(true_labels, predicted) -> {"ari", "ami", "pairwise_precision", "pairwise_recall", "n_true",
"n_pred"}``. ARI is sklearn's ``adjusted_rand_score``; AMI sklearn's ``adjusted_mutual_info_score`` (arithmetic
normaliser) except where sklearn's expected mutual information, a loop over every (true, predicted) cluster pair,
would take minutes: then the same sum is taken over distinct cluster-size pairs times their multiplicities
(:func:`expected_mutual_information`; equal to sklearn's to rounding, as the tests check).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["cluster_quality", "expected_mutual_information", "AMI_SKLEARN_MAX_CELLS"]

AMI_SKLEARN_MAX_CELLS = 4_000_000  # true x predicted clusters up to which sklearn's own AMI runs


def _label_codes(values, name: str) -> np.ndarray:
    """Integer codes 0..L-1 of one label per row (numbers or strings; None / NaN / "" are errors)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one label per row (1-D), got shape {arr.shape}")
    if arr.dtype.kind in "iub":
        return np.unique(arr, return_inverse=True)[1].reshape(-1)
    table: dict = {}
    out = np.empty(arr.shape[0], dtype=np.int64)
    for i, v in enumerate(arr.tolist()):
        if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
            raise ValueError(f"{name}: row {i} has no label ({v!r})")
        out[i] = table.setdefault(v, len(table))
    return out


def _pairs(counts: np.ndarray) -> int:
    c = counts.astype(np.int64)
    return int((c * (c - 1) // 2).sum())


def expected_mutual_information(a: np.ndarray, b: np.ndarray, n: int) -> float:
    """sklearn's expected mutual information of two labelings with cluster sizes ``a`` and ``b`` (``n`` rows),
    summed over distinct size pairs times their multiplicities (sklearn loops over every cluster pair)."""
    from scipy.special import gammaln

    if a.size == 1 or b.size == 1:
        return 0.0
    (ua, ca), (ub, cb) = np.unique(a, return_counts=True), np.unique(b, return_counts=True)
    total = 0.0
    for ai, mult_a in zip(ua.tolist(), ca.tolist(), strict=True):
        for bj, mult_b in zip(ub.tolist(), cb.tolist(), strict=True):
            nij = np.arange(max(1, ai + bj - n), min(ai, bj) + 1, dtype=np.float64)
            if nij.size == 0:
                continue
            gln = (gammaln(ai + 1) + gammaln(bj + 1) + gammaln(n - ai + 1) + gammaln(n - bj + 1) - gammaln(n + 1)
                   - gammaln(nij + 1) - gammaln(ai - nij + 1) - gammaln(bj - nij + 1) - gammaln(n - ai - bj + nij + 1))  # fmt: skip
            term = (nij / n) * (np.log(n) + np.log(nij) - math.log(ai) - math.log(bj)) * np.exp(gln)
            total += mult_a * mult_b * float(term.sum())
    return total


def _ami(t: np.ndarray, p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_mutual_info_score, mutual_info_score

    if a.size * b.size <= AMI_SKLEARN_MAX_CELLS or a.size == 1 or b.size == 1:
        return float(adjusted_mutual_info_score(t, p))
    n, eps = t.shape[0], np.finfo(np.float64).eps
    mi = mutual_info_score(t, p)
    emi = expected_mutual_information(a, b, n)
    h = [float(-((c / n) * (np.log(c) - math.log(n))).sum()) for c in (a, b)]
    den, num = (h[0] + h[1]) / 2 - emi, mi - emi  # sklearn's arithmetic normaliser, signs kept off zero
    den = min(den, -eps) if den < 0 else max(den, eps)
    num = min(num, -eps) if num < 0 else max(num, eps)
    return float(num / den)


def cluster_quality(true_labels, predicted) -> dict:
    """ARI and AMI (sklearn's; AMI's expectation summed by cluster size where sklearn's loop over every cluster
    pair would be too slow), pairwise precision / recall (pairs in one predicted cluster that share a true label;
    None when there is no pair), from contingency counts."""
    from sklearn.metrics import adjusted_rand_score

    t, p = _label_codes(true_labels, "true_labels"), _label_codes(predicted, "predicted")
    if t.shape[0] != p.shape[0]:
        raise ValueError(
            f"predicted has {p.shape[0]} labels, true_labels {t.shape[0]}: expected one each per row"
        )
    if t.shape[0] == 0:
        raise ValueError("cluster_quality needs at least one row")
    a, b = np.bincount(t), np.bincount(p)
    cells = np.unique(t * b.shape[0] + p, return_counts=True)[1]
    same, pred_pairs, true_pairs = _pairs(cells), _pairs(b), _pairs(a)
    return {
        "ari": float(adjusted_rand_score(t, p)),
        "ami": _ami(t, p, a, b),
        "pairwise_precision": same / pred_pairs if pred_pairs else None,
        "pairwise_recall": same / true_pairs if true_pairs else None,
        "n_true": int(a.shape[0]),
        "n_pred": int(b.shape[0]),
    }
