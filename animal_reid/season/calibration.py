"""Calibrating decision bands on a labelled catalogue, at the error rates the user states.

No held-out season is needed: the catalogue plays the season (the idea of
:meth:`animal_reid.openset.OpenSetThreshold.fit_gallery`, at the level of encounters). Within its species, every
encounter of the catalogue (a seeded sample of ``max_queries_per_species`` where there are more; an image without
an encounter is its own) is matched twice against the rest of the catalogue, its images' scores fused per
individual by the season's rule (:func:`animal_reid.season.matching.fuse`), viewpoint-aware when viewpoints are
given:

* as a **known** animal (leave-one-encounter-out): its own encounter removed; kept when its individual has another
  encounter;
* as a **new** animal (leave-one-identity-out): its whole individual removed, so the catalogue's held-out individuals
  play the animals never seen; kept when another individual of the species remains.

Then per species (:func:`fit_bands`), at the targets:

* ``new_below``: the highest threshold that calls at most ``max_known_called_new`` of the known queries new;
* ``known_above``: the lowest threshold that calls at most ``max_wrong_known`` of the *wrong* queries known, the
  wrong ones being the new queries (any candidate is wrong) and the known queries whose best candidate is another
  individual; never below ``new_below`` (then there is no unsure band).

Thresholds lie midway between consecutive distinct scores. A species with fewer than ``min_queries`` known or new
queries gets the default band, fitted on every species' queries pooled, with a warning that says how many
encounters it has. The expected rates (known called new, unsure, wrong known; with counts) are the ones the bands
give on these queries.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from .decisions import Band, Bands
from .matching import DEFAULT_VIEWPOINTS, RULES, ViewpointTable, rank

logger = logging.getLogger(__name__)

__all__ = [
    "CalibrationError",
    "bands_table",
    "calibrate",
    "catalogue_counts",
    "check_catalogue",
    "check_targets",
    "fit_bands",
    "simulated_queries",
]

_CHUNK_ROWS = 512  # query rows scored against a species' catalogue at once


class CalibrationError(ValueError):
    """A catalogue or target that cannot give bands; one line saying why."""


def _group_keys(identities: np.ndarray, encounters) -> np.ndarray:
    """One key per row: its (encounter, identity), or the row itself when it has no encounter."""
    if encounters is None:
        return np.array([f"row:{i}" for i in range(len(identities))], dtype=object)
    return np.array(
        [
            f"enc:{e}|{t}" if e not in (None, "") else f"row:{i}"
            for i, (e, t) in enumerate(zip(encounters, identities, strict=True))
        ],
        dtype=object,
    )


def _query_species(ctx: dict, sp_rows: np.ndarray, queries: list[np.ndarray], out: dict) -> None:
    """Score the query encounters ``queries`` (row arrays) of one species as known and as new into ``out``."""
    emb, lab, enc, vp, table, rule = (ctx[k] for k in ("emb", "lab", "enc", "vp", "table", "rule"))
    order = sp_rows[np.argsort(lab[sp_rows], kind="stable")]  # the species' rows, grouped by identity
    names, starts = np.unique(lab[order], return_index=True)
    col_enc = enc[order]
    g_views = vp[order]
    batch: list[np.ndarray] = []
    for qi, rows in enumerate(queries):
        batch.append(rows)
        if sum(len(b) for b in batch) < _CHUNK_ROWS and qi + 1 < len(queries):
            continue
        flat = np.concatenate(batch)
        sims = (emb[flat] @ emb[order].T).astype(np.float64)
        sims[~table.matrix(vp[flat], g_views)] = -np.inf
        at = 0
        for q in batch:
            block = sims[at : at + len(q)]
            at += len(q)
            _score_query(block, q, lab[q[0]], enc[q[0]], col_enc, lab[order], names, starts, rule, out)
        batch = []


def _score_query(block, q, true, key, col_enc, col_lab, names, starts, rule, out) -> None:
    for unknown, drop in ((False, col_enc == key), (True, col_lab == true)):
        if unknown and drop.all():
            continue  # no other individual in the species
        if not unknown and not ((col_lab == true) & ~drop).any():
            continue  # the individual has no other encounter
        masked = np.where(drop[None, :], -np.inf, block)
        per_id = np.maximum.reduceat(masked, starts, axis=1)
        order, fused = rank(np.where(np.isfinite(per_id), per_id, np.nan), rule)
        best = names[order[0]] if len(order) else None
        out["score"].append(float(fused[order[0]]) if len(order) else -math.inf)
        out["best"].append(best)
        out["true"].append(true)
        out["unknown"].append(unknown)


def _encounters_of(keys: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """``rows`` grouped by encounter key, groups in key order."""
    order = rows[np.argsort(keys[rows].astype(str), kind="stable")]
    _, starts = np.unique(keys[order].astype(str), return_index=True)
    return np.split(order, starts[1:])


def simulated_queries(
    embeddings,
    identities: Sequence[str],
    species: Sequence[str | None] | None = None,
    encounters: Sequence[str | None] | None = None,
    viewpoints: Sequence[str | None] | None = None,
    table: ViewpointTable | None = DEFAULT_VIEWPOINTS,
    rule: str = "max",
    max_queries_per_species: int | None = 2000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The catalogue's encounters as known and new queries (module docstring): arrays ``species``, ``true``,
    ``best`` (the best candidate), ``score`` (its fused score; -inf when nothing compares) and ``unknown``."""
    if rule not in RULES:
        raise CalibrationError(f"fusion rule must be one of {', '.join(RULES)}, got {rule!r}")
    emb = np.asarray(embeddings, dtype=np.float32)
    n = len(identities)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise CalibrationError(
            f"embeddings must be [N, D] with one row per identity, got {emb.shape} for {n}"
        )
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    lab = np.asarray([str(t) for t in identities], dtype=object)
    spc = np.asarray(
        ["" if s is None else str(s) for s in (species if species is not None else [None] * n)], object
    )
    views = viewpoints if (viewpoints is not None and table is not None) else [None] * n
    ctx = {
        "emb": emb, "lab": lab, "enc": _group_keys(lab, encounters), "rule": rule,
        "vp": np.asarray(["" if v is None else str(v) for v in views], dtype=object),
        "table": table if table is not None else ViewpointTable(()),
    }  # fmt: skip
    out: dict[str, list] = {k: [] for k in ("species", "true", "best", "score", "unknown")}
    rng = np.random.default_rng(seed)
    for sp in sorted(set(spc.tolist())):
        sp_rows = np.flatnonzero(spc == sp)
        queries = _encounters_of(ctx["enc"], sp_rows)
        if max_queries_per_species is not None and len(queries) > max_queries_per_species:
            pick = np.sort(rng.choice(len(queries), size=max_queries_per_species, replace=False))
            queries = [queries[j] for j in pick]
        before = len(out["true"])
        _query_species(ctx, sp_rows, queries, out)
        out["species"] += [sp] * (len(out["true"]) - before)
    return {
        "species": np.asarray(out["species"], dtype=object),
        "true": np.asarray(out["true"], dtype=object),
        "best": np.asarray(out["best"], dtype=object),
        "score": np.asarray(out["score"], dtype=np.float64),
        "unknown": np.asarray(out["unknown"], dtype=bool),
    }


def _candidates(scores: np.ndarray) -> np.ndarray:
    """Thresholds to try: midpoints between consecutive distinct finite scores, and just outside their range."""
    u = np.unique(scores[np.isfinite(scores)])
    if len(u) == 0:
        return np.array([0.0])
    margin = max(1e-6, float(np.diff(u).min()) / 2 if len(u) > 1 else 1e-6)
    return np.concatenate([[u[0] - margin], (u[1:] + u[:-1]) / 2, [u[-1] + margin]])


def _new_below(known: np.ndarray, share: float) -> float:
    """The highest candidate threshold that calls at most ``share`` of ``known`` new (score below it)."""
    cands = _candidates(known)
    below = np.searchsorted(np.sort(known), cands, side="left") / len(known)
    ok = np.flatnonzero(below <= share + 1e-12)
    return float(cands[ok[-1]] if len(ok) else cands[0])


def _known_above(wrong: np.ndarray, share: float) -> float:
    """The lowest candidate threshold that calls at most ``share`` of ``wrong`` known (score at or above it)."""
    if len(wrong) == 0:
        return -math.inf
    cands = _candidates(wrong)
    at_or_above = 1.0 - np.searchsorted(np.sort(wrong), cands, side="left") / len(wrong)
    ok = np.flatnonzero(at_or_above <= share + 1e-12)
    return float(cands[ok[0]])


def _expected(q: dict[str, np.ndarray], band: Band) -> dict:
    """The rates (and counts) ``band`` gives on the queries ``q``."""
    s, u = q["score"], q["unknown"]
    right = q["best"] == q["true"]
    known_s, new_s = s[~u], s[u]
    wrong = u | (~u & ~right)
    called_known = s >= band.known_above
    unsure = (s >= band.new_below) & ~called_known

    def rate(k: int, n: int) -> dict:
        return {"rate": (k / n) if n else None, "count": int(k), "of": int(n)}

    return {
        "known_called_new": rate(int((known_s < band.new_below).sum()), len(known_s)),
        "known_unsure": rate(int(unsure[~u].sum()), len(known_s)),
        "known_right": rate(int((called_known & right & ~u).sum()), len(known_s)),
        "new_called_new": rate(int((new_s < band.new_below).sum()), len(new_s)),
        "new_unsure": rate(int(unsure[u].sum()), len(new_s)),
        "wrong_known": rate(int((called_known & wrong).sum()), int(wrong.sum())),
    }


def _fit_band(
    q: dict[str, np.ndarray], max_known_called_new: float, max_wrong_known: float, source: str
) -> Band:
    u = q["unknown"]
    new_below = _new_below(q["score"][~u], max_known_called_new)
    wrong = u | (q["best"] != q["true"])
    known_above = max(_known_above(q["score"][wrong], max_wrong_known), new_below)
    band = Band(known_above, new_below, source)
    band.expected = _expected(q, band)
    return band


def check_targets(max_known_called_new: float, max_wrong_known: float) -> None:
    for name, v in (("max_known_called_new", max_known_called_new), ("max_wrong_known", max_wrong_known)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not (0.0 <= v <= 1.0):
            raise CalibrationError(f"{name} must be a share in [0, 1], got {v!r}")


def catalogue_counts(identities, species=None, encounters=None) -> dict[str, dict[str, int]]:
    """Per species (``""``: unknown): images, encounters and individuals of the catalogue."""
    lab = np.asarray([str(t) for t in identities], dtype=object)
    spc = np.asarray(
        ["" if s is None else str(s) for s in (species if species is not None else [None] * len(lab))]
    )
    keys = _group_keys(lab, encounters)
    return {
        sp: {
            "images": int((spc == sp).sum()),
            "encounters": len(set(keys[spc == sp].tolist())),
            "individuals": len(set(lab[spc == sp].tolist())),
        }
        for sp in sorted(set(spc.tolist()))
    }


def check_catalogue(identities, species=None, encounters=None, where: str = "the catalogue") -> None:
    """:class:`CalibrationError` (one line) unless some species has two individuals and some individual has two
    encounters: what simulating new and known animals needs."""
    if len(identities) == 0:
        raise CalibrationError(
            f"{where} is empty: calibration needs labelled images of at least two individuals"
        )
    counts = catalogue_counts(identities, species, encounters)
    names = sorted({str(t) for t in identities})
    if len(names) == 1:
        raise CalibrationError(
            f"{where} holds one individual only ({names[0]!r}): calibration needs two individuals of one species "
            "(each held out in turn plays a new animal)"
        )
    if all(c["individuals"] < 2 for c in counts.values()):
        raise CalibrationError(
            f"{where}: no species has two individuals (held out in turn, they play new animals)"
        )
    keys = _group_keys(np.asarray([str(t) for t in identities], dtype=object), encounters)
    per_id: dict[str, set] = {}
    for t, k in zip(identities, keys, strict=True):
        per_id.setdefault(str(t), set()).add(k)
    if all(len(v) < 2 for v in per_id.values()):
        raise CalibrationError(
            f"{where}: no individual has two encounters ({len(identities)} images of {len(names)} individuals): a "
            "known animal is simulated by matching one of its encounters against its others"
        )


def fit_bands(
    queries: dict[str, np.ndarray],
    max_known_called_new: float = 0.05,
    max_wrong_known: float = 0.05,
    rule: str = "max",
    min_queries: int = 20,
    counts: dict[str, dict[str, int]] | None = None,
) -> Bands:
    """Bands fitted on :func:`simulated_queries` at the targets (module docstring)."""
    check_targets(max_known_called_new, max_wrong_known)
    u = queries["unknown"]
    if not (~u).any() or not u.any():
        raise CalibrationError(
            f"calibration needs known and new queries, got {int((~u).sum())} known and {int(u.sum())} new"
        )
    default = _fit_band(queries, max_known_called_new, max_wrong_known, "all species")
    species: dict[str, Band] = {}
    for sp in sorted(set(queries["species"].tolist())):
        m = queries["species"] == sp
        q = {k: v[m] for k, v in queries.items()}
        nk, nu = int((~q["unknown"]).sum()), int(q["unknown"].sum())
        if nk >= min_queries and nu >= min_queries:
            band = _fit_band(q, max_known_called_new, max_wrong_known, "species")
        else:
            band = Band(default.known_above, default.new_below, "default")
            band.expected = _expected(q, band)
            c = (counts or {}).get(sp, {})
            logger.warning(
                "species %s: %s encounters of %s individuals give %d known and %d new calibration queries "
                "(fewer than %d): it uses the default band, fitted on all species",
                sp or "(none)", c.get("encounters", "?"), c.get("individuals", "?"), nk, nu, min_queries,
            )  # fmt: skip
        band.expected["catalogue"] = (counts or {}).get(sp, {})
        if sp:
            species[sp] = band
    if counts:
        default.expected["catalogue"] = {
            k: sum(c[k] for c in counts.values()) for k in ("images", "encounters", "individuals")
        }
    targets = {"max_known_called_new": max_known_called_new, "max_wrong_known": max_wrong_known}
    return Bands(default, species, rule, targets, {"min_queries": min_queries})


def calibrate(
    embeddings,
    identities: Sequence[str],
    species: Sequence[str | None] | None = None,
    encounters: Sequence[str | None] | None = None,
    viewpoints: Sequence[str | None] | None = None,
    max_known_called_new: float = 0.05,
    max_wrong_known: float = 0.05,
    rule: str = "max",
    table: ViewpointTable | None = DEFAULT_VIEWPOINTS,
    min_queries: int = 20,
    max_queries_per_species: int | None = 2000,
) -> Bands:
    """Bands for a labelled catalogue (embeddings and labels per image), at the targets: the whole calibration."""
    check_targets(max_known_called_new, max_wrong_known)
    check_catalogue(identities, species, encounters)
    q = simulated_queries(
        embeddings, identities, species, encounters, viewpoints, table, rule, max_queries_per_species
    )
    counts = catalogue_counts(identities, species, encounters)
    bands = fit_bands(q, max_known_called_new, max_wrong_known, rule, min_queries, counts)
    aware = viewpoints is not None and table is not None and any(viewpoints)
    bands.calibration.update(
        {
            "method": "leave-one-encounter-out (known animals), leave-one-identity-out (new animals)",
            "viewpoint_aware": bool(aware),
            "incompatible_viewpoints": [list(p) for p in table.incompatible] if aware else [],
            "max_queries_per_species": max_queries_per_species,
            "images": len(identities),
        }
    )
    return bands


def _pct(r: dict) -> str:
    return "-" if not r or r.get("of") in (0, None) else f"{r['count']}/{r['of']} ({100 * r['rate']:.1f}%)"


def bands_table(bands: Bands) -> str:
    """The per-species bands and expected rates as a text table (the default band last)."""
    head = ("species", "images", "enc.", "indiv.", "new_below", "known_above", "known called new",
            "known unsure", "new unsure", "wrong known", "band")  # fmt: skip
    rows = [head]
    entries = [*sorted(bands.species.items()), ("(default)", bands.default)]
    for name, b in entries:
        e, c = b.expected, b.expected.get("catalogue") or {}
        rows.append((
            name, str(c.get("images", "")), str(c.get("encounters", "")), str(c.get("individuals", "")),
            f"{b.new_below:.4f}", f"{b.known_above:.4f}", _pct(e.get("known_called_new")),
            _pct(e.get("known_unsure")), _pct(e.get("new_unsure")), _pct(e.get("wrong_known")), b.source,
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
