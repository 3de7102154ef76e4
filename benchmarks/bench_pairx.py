#!/usr/bin/env python
"""PAIR-X re-ranking against SIFT (issue 35): four arms on the same shortlists of the same trained model.

For each query the top ``--k`` gallery images by cosine (within its species) are re-scored four ways, every
fusion fitted on validation queries and scored on test:

- **global**: the cosine alone;
- **+ SIFT**: ``cosine + w[species] * inliers / (inliers + scale)`` (:func:`animal_reid.rerank.fit_fusion`, as
  ``identify --rerank local`` ships it);
- **+ PAIR-X**: ``cosine + w_r * residual + w_c * coverage + w_s * similarity``
  (:func:`animal_reid.rerank.fit_score_fusion`, one formula for all species; ``--pairx-scores`` names the PAIR-X
  scores fitted);
- **+ both**: the SIFT bonus and the PAIR-X scores in that one formula.

Per species: top-1 and mAP of the whole ranking (shortlist re-scored, the rest by cosine), queries gained and
lost against global. Cost: seconds per re-ranked query at several K (feature maps cached; relevance per pair),
seconds per full explanation, cache size per 1,000 images. ``--max-queries-per-species`` takes a seeded sample of
each species' queries (the gallery stays whole) where a full split would take hours: the report says how many.

    python benchmarks/bench_pairx.py --protocol open --corpus corpus/real --cap-per-identity 8 \\
        --model ../shared/models/real6-lite0-224 --max-queries-per-species 300 \\
        --out benchmarks/results/pairx_real6.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from animal_reid.rerank import (
    PAIRX_SCORES,
    LocalFeatureConfig,
    PairxReranker,
    ScoreFusion,
    fit_fusion,
    fit_score_fusion,
)
from benchmarks import report
from benchmarks.bench_rerank import (
    PROTOCOLS,
    Ranked,
    correct_candidates,
    embed_splits,
    extract_features,
    load_model,
    machine,
    protocol_pairs,
    read_splits,
)

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_pairx")
ARMS = ("global", "sift", "pairx", "both")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--model", required=True, help="an exported model directory, or 'imagenet'")
    p.add_argument("--name", default=None)
    p.add_argument("--protocol", default="open", choices=sorted(PROTOCOLS))
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--cap-per-identity", type=int, default=None)
    p.add_argument("--subsample", type=int, default=1)
    p.add_argument("--max-queries-per-species", type=int, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--relevance", default=None, choices=("lrp", "gradxact"), help="default: the model's")
    p.add_argument("--stage", default=None, help="backbone stage (default: deepest grid >= 14 x 14)")
    p.add_argument("--cost-ks", default="10,20,50")
    p.add_argument("--cost-queries", type=int, default=10)
    p.add_argument("--explain-pairs", type=int, default=5, help="full explanations timed")
    p.add_argument("--cache-dir", default=str(ROOT / "runs/rerank_cache"))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--method", default="sift")
    p.add_argument("--max-side", type=int, default=384)
    p.add_argument("--max-keypoints", type=int, default=512)
    p.add_argument("--geometry", default="fundamental")
    p.add_argument(
        "--cost-only", action="store_true",
        help="time re-scoring and explanations only (no accuracy), e.g. again on a quiet machine; OUT gets the costs",
    )  # fmt: skip
    p.add_argument(
        "--max-species-loss", type=int, default=None,
        help="the PAIR-X fusions may lose at most this many validation queries net on any species (default: no limit)",
    )  # fmt: skip
    p.add_argument(
        "--scores-cache", default=None,
        help="an .npz of both sides' SIFT and PAIR-X scores: written after scoring, read instead of scoring when its "
        "settings match (a refit with other fusion options costs seconds, not the relevance passes)",
    )  # fmt: skip
    p.add_argument(
        "--pairx-scores", default=",".join(PAIRX_SCORES),
        help=f"the PAIR-X scores the fusions may weigh, comma-separated among {','.join(PAIRX_SCORES)}",
    )  # fmt: skip
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    args.pairx_scores = tuple(s.strip() for s in args.pairx_scores.split(",") if s.strip())
    unknown = sorted(set(args.pairx_scores) - set(PAIRX_SCORES))
    if unknown or not args.pairx_scores:
        p.error(f"--pairx-scores: expected names among {', '.join(PAIRX_SCORES)}, got {args.pairx_scores}")
    return args


def sample_queries(r: Ranked, n: int | None, seed: int) -> Ranked:
    """At most ``n`` queries per species (a seeded choice, kept in order); the gallery is untouched."""
    if n is None:
        return r
    rng = np.random.default_rng(seed)
    species = np.array([q.species for q in r.queries], dtype=object)
    keep = []
    for sp in sorted(set(species.tolist())):
        rows = np.flatnonzero(species == sp)
        keep += sorted(rng.choice(rows, size=min(n, len(rows)), replace=False).tolist())
    keep = np.array(sorted(keep))
    return Ranked([r.queries[i] for i in keep], r.gallery, r.q_emb[keep], r.g_emb, r.full[keep], r.idx[keep],
                  r.cos[keep])  # fmt: skip


def query_metrics(
    full: np.ndarray, idx: np.ndarray, short: np.ndarray, queries, gallery
) -> dict[str, np.ndarray]:
    """Per query: top-1 hit and average precision of the whole ranking with the shortlist scores ``short``
    (the rest keep their cosine; -inf: not eligible), and whether the query can be scored at all."""
    g_ids = np.array([g.identity for g in gallery], dtype=object)
    top1, ap, scorable = np.zeros(len(queries)), np.zeros(len(queries)), np.zeros(len(queries), dtype=bool)
    for qi, q in enumerate(queries):
        row = full[qi].copy()
        row[idx[qi]] = np.where(idx[qi] >= 0, short[qi], row[idx[qi]])
        eligible = np.isfinite(row)
        pos = eligible & (g_ids == q.identity)
        if not pos.any():
            continue
        scorable[qi] = True
        order = np.argsort(-np.where(eligible, row, -np.inf), kind="stable")[: int(eligible.sum())]
        hits = pos[order]
        top1[qi] = float(hits[0])
        ranks = np.flatnonzero(hits) + 1
        ap[qi] = float(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return {"top1": top1, "ap": ap, "scorable": scorable}


BORDERS = (0, 1)  # rings of edge cells left out of the matches; chosen per arm on validation


def side_scores(args, rr, pr: PairxReranker, r: Ranked) -> dict:
    """SIFT inliers and PAIR-X scores (per border width) of every shortlist of one side."""
    t0 = time.perf_counter()
    inliers, _ = rr.verify(r.queries, r.gallery, r.idx)
    t1 = time.perf_counter()
    pairx = pr.score_shortlists(r.queries, r.gallery, r.idx, BORDERS)
    t2 = time.perf_counter()
    logger.info("%d queries: SIFT %.0f s, PAIR-X %.0f s", len(r.queries), t1 - t0, t2 - t1)
    return {"sift": inliers, "pairx": pairx, "sift_s": t1 - t0, "pairx_s": t2 - t1}


def _named(s: dict, border: int, with_sift: bool, pairx_scores=PAIRX_SCORES) -> dict[str, np.ndarray]:
    """The scores one fusion weighs: the named PAIR-X scores at ``border`` (and SIFT's inliers)."""
    names = {n: s["pairx"][border][n] for n in pairx_scores}
    return {"sift": s["sift"], **names} if with_sift else names


CACHE_KEYS = ("model", "corpus", "protocol", "k", "cap_per_identity", "subsample", "max_queries_per_species", "seed",
              "relevance", "stage", "method", "max_side", "max_keypoints", "geometry")  # fmt: skip


def _flat(s: dict, side: str) -> dict[str, np.ndarray]:
    out = {f"{side}/sift": np.asarray(s["sift"]), f"{side}/times": np.array([s["sift_s"], s["pairx_s"]])}
    for b, named in s["pairx"].items():
        out.update({f"{side}/pairx/{b}/{n}": np.asarray(v) for n, v in named.items()})
    return out


def _unflat(z, side: str) -> dict:
    pairx: dict[int, dict] = {}
    for key in z.files:
        parts = key.split("/")
        if parts[0] == side and parts[1] == "pairx":
            pairx.setdefault(int(parts[2]), {})[parts[3]] = z[key]
    sift_s, pairx_s = z[f"{side}/times"].tolist()
    return {"sift": z[f"{side}/sift"], "pairx": pairx, "sift_s": sift_s, "pairx_s": pairx_s}


def cached_scores(args, compute) -> tuple[dict, dict]:
    """``compute()`` -> (validation, test) side scores, or read back from ``--scores-cache`` when its settings match
    this call's (another file is never overwritten with different settings: a one-line error instead)."""
    if not args.scores_cache:
        return compute()
    path = Path(args.scores_cache)
    settings = json.dumps({k: getattr(args, k) for k in CACHE_KEYS}, sort_keys=True)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if str(z["settings"]) != settings:
                raise SystemExit(
                    f"{path}: scores of other settings ({z['settings']}); give another --scores-cache"
                )
            missing = sorted({f"pairx/{b}/{n}" for b in BORDERS for n in args.pairx_scores}
                             - {k.split("/", 1)[1] for k in z.files if k.startswith("validation/")})  # fmt: skip
            if missing:
                raise SystemExit(
                    f"{path}: has no {', '.join(missing)} (an older cache); give another --scores-cache"
                )
            logger.info("side scores read from %s", path)
            return _unflat(z, "validation"), _unflat(z, "test")
    vs, ts = compute()
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, settings=np.array(settings), **_flat(vs, "validation"), **_flat(ts, "test"))
    tmp.replace(path)
    return vs, ts


def fit_arms(
    val: Ranked,
    s: dict,
    pairx_config: dict,
    sift_config: dict,
    max_species_loss=None,
    pairx_scores=PAIRX_SCORES,
) -> dict:
    """The three fusions, fitted on the validation shortlists; for PAIR-X and both, the border width whose fit
    scores best on validation (top-1, then reciprocal rank; ties: no border)."""
    correct = correct_candidates(val.queries, val.gallery, val.idx)
    species = [q.species for q in val.queries]
    cos = np.where(val.idx >= 0, val.cos, -np.inf)
    out = {"sift": fit_fusion(cos, s["sift"], correct, species, feature_config=sift_config)}
    for arm, with_sift in (("pairx", False), ("both", True)):
        fits = {
            b: fit_score_fusion(cos, _named(s, b, with_sift, pairx_scores), correct, species,
                                pairx_config={**pairx_config, "border": b},
                                feature_config=sift_config if with_sift else None,
                                max_species_loss=max_species_loss)
            for b in BORDERS
        }  # fmt: skip
        best = max(BORDERS, key=lambda b: (fits[b].curve["validation_top1_fused"],
                                           fits[b].curve["validation_mrr_fused"], -b))  # fmt: skip
        out[arm] = fits[best]
        out[f"{arm}_by_border"] = {b: f.curve for b, f in fits.items()}
    return out


def fused(arm: str, fusions: dict, r: Ranked, s: dict) -> np.ndarray:
    cos = np.where(r.idx >= 0, r.cos, -np.inf)
    if arm == "global":
        return cos
    if arm == "sift":
        return fusions["sift"].fuse(cos, s["sift"], [q.species for q in r.queries])
    fusion = fusions[arm]
    names = [n for n in PAIRX_SCORES if n in fusion.weights]
    return fusion.fuse(cos, _named(s, fusion.pairx_config["border"], arm == "both", names))


def per_species(r: Ranked, metrics: dict[str, dict]) -> dict:
    """Per species and arm: top-1, mAP, scorable queries, gained / lost against global."""
    species = np.array([q.species for q in r.queries], dtype=object)
    out = {}
    for sp in sorted(set(species.tolist())):
        base = metrics["global"]
        rows = (species == sp) & base["scorable"]
        if not rows.any():
            continue
        row = {"queries": int((species == sp).sum()), "scorable": int(rows.sum())}
        for arm, m in metrics.items():
            row[arm] = {"top1": float(m["top1"][rows].mean()), "mAP": float(m["ap"][rows].mean()),
                        "gained": int(((m["top1"] > base["top1"]) & rows).sum()),
                        "lost": int(((m["top1"] < base["top1"]) & rows).sum())}  # fmt: skip
        out[sp] = row
    return out


def score_side(r: Ranked, fusions: dict, s: dict) -> dict:
    metrics = {
        arm: query_metrics(r.full, r.idx, fused(arm, fusions, r, s), r.queries, r.gallery) for arm in ARMS
    }
    return per_species(r, metrics)


def cost(pr: PairxReranker, te: Ranked, args, model, processor) -> dict:
    """Seconds per re-ranked query at each K (maps cached) and per full explanation; cache size."""
    from animal_reid.explain import explain_pair

    out: dict = {}
    nq = min(args.cost_queries, len(te.queries))
    order = np.argsort(-te.full[:nq], axis=1, kind="stable")
    for k in (int(x) for x in args.cost_ks.split(",")):
        pr.maps(
            [te.gallery[j] for j in np.unique(order[:, :k])]
        )  # cached beforehand: timing the scoring only
        t0 = time.perf_counter()
        for qi in range(nq):
            pr.scores(te.queries[qi], [te.gallery[j] for j in order[qi, :k]])
        out[f"s_per_query_k{k}"] = round((time.perf_counter() - t0) / nq, 3)
    pairs = [
        (te.queries[i], te.gallery[te.idx[i, 0]]) for i in range(min(args.explain_pairs, len(te.queries)))
    ]
    t0 = time.perf_counter()
    for q, g in pairs:
        explain_pair(model, processor, q.image, g.image, boxes=(q.bbox, g.bbox), thetas=(q.theta, g.theta),
                     method=args.relevance)  # fmt: skip
    out["s_per_explanation"] = round((time.perf_counter() - t0) / max(1, len(pairs)), 3)
    if pr.cache is not None:
        out["cache_mb_per_1000_images"] = round(pr.cache.nbytes() / max(1, len(pr.cache)) * 1000 / 1e6, 2)
    out["cost_queries"] = nq
    return out


def render(result: dict) -> str:
    lines = [f"# PAIR-X re-ranking: {result['name']}", "", f"`{result['command']}`", "",
             f"Protocol: {result['protocol']}; K = {result['k']}; relevance {result['relevance']}.", "",
             "| species (test queries scored) | global | + SIFT | + PAIR-X | + both |", "|---|---|---|---|---|"]  # fmt: skip
    for sp, row in result["test"].items():
        cells = [f"{row['global']['top1'] * 100:.1f} / {row['global']['mAP'] * 100:.1f}"]
        for arm in ARMS[1:]:
            a = row[arm]
            cells.append(f"{a['top1'] * 100:.1f} / {a['mAP'] * 100:.1f} (+{a['gained']} −{a['lost']})")
        lines.append(f"| {sp} ({row['scorable']}) | " + " | ".join(cells) + " |")
    lines += ["", "Fusions (fitted on validation):", "", "```", json.dumps(result["fusions"], indent=1), "```",
              "", "Cost:", "", "```", json.dumps(result["cost"], indent=1), "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


def cost_report(args, argv, pr: PairxReranker, te: Ranked, model, processor) -> dict:
    """``--cost-only``: the costs alone, with the machine's load, into OUT."""
    result = {"model": args.model, "relevance": args.relevance or "model default", "stage": pr.stage,
              "cost": cost(pr, te, args, model, processor), "machine": machine(args),
              "command": "python benchmarks/bench_pairx.py " + " ".join(argv if argv is not None else sys.argv[1:])}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    splits = read_splits(args)
    emb, _ = embed_splits(args, splits)
    pairs, loo = protocol_pairs(args.protocol, splits, emb)
    val = sample_queries(Ranked.of(pairs["fit"], args.k, loo), args.max_queries_per_species, args.seed)
    te = sample_queries(Ranked.of(pairs["test"], args.k, loo), args.max_queries_per_species, args.seed)
    sift_config = LocalFeatureConfig(method=args.method, max_side=args.max_side, max_keypoints=args.max_keypoints,
                                     geometry=args.geometry)  # fmt: skip
    model, processor, key = load_model(args.model)
    pairx_config = {"stage": args.stage, "method": args.relevance}
    pr = PairxReranker(model, processor, ScoreFusion(pairx_config=pairx_config), k=args.k,
                       cache_dir=Path(args.cache_dir) / "pairx", model_key=key)  # fmt: skip
    if args.cost_only:
        return cost_report(args, argv, pr, te, model, processor)

    def compute() -> tuple[dict, dict]:
        rr, _ = extract_features(args, sift_config, splits)
        return side_scores(args, rr, pr, val), side_scores(args, rr, pr, te)

    vs, ts = cached_scores(args, compute)
    fusions = fit_arms(val, vs, pairx_config, sift_config.to_dict(), args.max_species_loss, args.pairx_scores)
    result = {
        "name": args.name or Path(args.model).name,
        "model": args.model,
        "corpus": args.corpus,
        "protocol": PROTOCOLS[args.protocol],
        "k": args.k,
        "relevance": args.relevance or "model default",
        "stage": pr.stage,
        "max_queries_per_species": args.max_queries_per_species,
        "max_species_loss": args.max_species_loss,
        "pairx_scores": list(args.pairx_scores),
        "validation": score_side(val, fusions, vs),
        "test": score_side(te, fusions, ts),
        "fusions": {k: f if k.endswith("_by_border") else f.to_dict() for k, f in fusions.items()},
        "scoring_s": {
            "validation": [round(vs["sift_s"], 1), round(vs["pairx_s"], 1)],
            "test": [round(ts["sift_s"], 1), round(ts["pairx_s"], 1)],
        },  # fmt: skip
        "cost": cost(pr, te, args, model, processor),
        "machine": machine(args),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "command": "python benchmarks/bench_pairx.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    out = Path(args.out)
    for arm in (
        "pairx",
        "both",
    ):  # beside the model as rerank_pairx_fusion.json, identify --rerank pairx uses it
        fusions[arm].save(out.with_name(f"{out.stem}_{arm}_fusion.json"))
    report.write_results(out, result, render(result))
    print(render(result))
    return result


if __name__ == "__main__":
    main()
