"""Scoring a season run against its truth: known animals by encounter and by image, new animals by clustering.

* **Known animals**: an encounter (or an image, matched alone) is right only when called known with its true
  identity; also the shares called unsure and new (the calibration promised a rate for the latter).
* **New animals**: the share called new, and over every annotation that is truly new or called new, the adjusted
  Rand index and adjusted mutual information of the proposed individuals against the true ones (AnimalCLEF 2026's
  score) with pairwise precision and recall. An annotation that is not called new keeps its assignment as its
  predicted label (a known individual, or its own singleton when unsure), so calling a new animal known costs.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def known_rates(annotations, assignments, truth_identity: dict[str, str], known: set[str]) -> dict:
    """Rates over the annotations of known animals, per encounter and per annotation."""
    enc_right: dict[str, bool] = {}
    counts = defaultdict(int)
    for ann, a in zip(annotations, assignments, strict=True):
        ident = truth_identity[ann.annotation_id]
        if ident not in known:
            continue
        right = a.decision == "known" and a.individual == ident
        counts["images"] += 1
        counts["right"] += right
        counts[a.decision] += 1
        enc_right[a.encounter] = enc_right.get(a.encounter, True) and right
    n = max(counts["images"], 1)
    return {
        "images": counts["images"],
        "encounters": len(enc_right),
        "right_per_image": counts["right"] / n,
        "right_per_encounter": sum(enc_right.values()) / max(len(enc_right), 1),
        "unsure": counts["unsure"] / n,
        "called_new": counts["new"] / n,
    }


def new_rates(annotations, assignments, truth_identity: dict[str, str], known: set[str]) -> dict:
    """Share of truly new annotations called new, and clustering quality over truly-new-or-called-new ones."""
    from animal_reid.season.discovery import cluster_quality

    true_labels, predicted = [], []
    n_new = called = 0
    for ann, a in zip(annotations, assignments, strict=True):
        ident = truth_identity[ann.annotation_id]
        is_new = ident not in known
        n_new += is_new
        called += is_new and a.decision == "new"
        if is_new or a.decision == "new":
            true_labels.append(ident)
            predicted.append(a.individual if a.individual else f"unsure:{ann.annotation_id}")
    out = {"images": n_new, "individuals": len({truth_identity[a.annotation_id] for a in annotations
                                                 if truth_identity[a.annotation_id] not in known}),
           "called_new": called / max(n_new, 1)}  # fmt: skip
    if true_labels:
        _, t = np.unique(np.array(true_labels, dtype=object).astype(str), return_inverse=True)
        _, p = np.unique(np.array(predicted, dtype=object).astype(str), return_inverse=True)
        out.update(cluster_quality(t, p))
    return out


def score(annotations, assignments, truth_identity: dict[str, str], known: set[str], species=None) -> dict:
    """Known and new rates, over all species or one."""
    pairs = [(n, a) for n, a in zip(annotations, assignments, strict=True) if species in (None, n.species)]
    anns = [n for n, _ in pairs]
    asg = [a for _, a in pairs]
    return {
        "known": known_rates(anns, asg, truth_identity, known),
        "new": new_rates(anns, asg, truth_identity, known),
    }


def objective(result: dict) -> float:
    """What validation maximises: the mean of known encounters right, new images called new, and ARI."""
    k, n = result["known"], result["new"]
    return (k["right_per_encounter"] + n["called_new"] + n.get("ari", 0.0)) / 3.0
