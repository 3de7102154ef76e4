"""Local-feature re-ranking (issue 14): accuracy with and without, and cost, on a closed or an open split.

``--protocol closed`` (the Lion / Nyala splits), MegaDescriptor's protocol: test images query train + validation
(1-NN cosine, same-encounter images kept); the fusion is fitted on validation images querying train, never on test.
``--protocol open`` (the six-species identity-disjoint split, individuals never trained on), the paper's protocol
as in ``reid_real.py`` table 2: within each split and species, every image queries all the others (itself and
its own individual's same-encounter images left out); the fusion is fitted on validation, scored on test.

The global shortlist (top ``--k`` by cosine within the query's species) is re-scored by
:class:`animal_reid.rerank.LocalReranker`; the full ranking (re-scored shortlist, then the rest by cosine) is scored
as a score matrix (query rows = scores, gallery rows = the identity matrix, so the dot product is the score).

    python benchmarks/bench_rerank.py --model imagenet --out benchmarks/results/rerank_imagenet.json
    python benchmarks/bench_rerank.py --model runs/bench224/runs/t1_ours/export --name t1_ours \\
        --out benchmarks/results/rerank_t1_ours.json
    python benchmarks/bench_rerank.py --protocol open --corpus runs/bench_real6/corpora/open \\
        --cap-per-identity 8 --model imagenet --out benchmarks/results/rerank6_imagenet.json

Runs in one process on one thread (torch, OpenCV) unless ``--workers`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from animal_reid.identify import Identifier, read_gallery
from animal_reid.metrics import encode_labels, evaluate_reid, rank_queries, summarize
from animal_reid.openset import OpenSetThreshold, open_set_report
from animal_reid.rerank import (
    LocalFeatureConfig,
    LocalReranker,
    RerankOutput,
    best_match_in_shortlist,
    fit_fusion,
    unknown_identities,
)
from animal_reid.rerank.fusion import Fusion
from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("bench_rerank")


class _OneThread:
    """``encode`` on one torch thread, eager (the benchmark must not take the machine's cores)."""

    def __init__(self, model):
        self.model = model

    def encode(self, images, **kw):
        return self.model.encode(images, engine="torch", decode_threads=1, **kw)


def load_model(spec: str):
    """``(model, processor, cache key)`` for ``imagenet`` (Lite0 ImageNet features) or an export directory."""
    from animal_reid.identify import model_cache_key

    if spec == "imagenet":
        from animal_reid.weights import load_imagenet_backbone
        from modeling import AnimalReIDConfig, AnimalReIDImageProcessor, AnimalReIDModel

        cfg = AnimalReIDConfig(
            backbone="efficientnet_lite0", embedding_dim=0, pooling="avg", neck_bn=False, image_size=224
        )
        model = AnimalReIDModel(cfg)
        load_imagenet_backbone(model)
        proc = AnimalReIDImageProcessor.from_model_config(cfg)
        key = "imagenet-lite0-avg-224"
    else:
        from transformers import AutoImageProcessor, AutoModel

        model = AutoModel.from_pretrained(spec, trust_remote_code=True)
        proc = AutoImageProcessor.from_pretrained(spec, trust_remote_code=True)
        key = model_cache_key(spec, proc)[0]
    return model.eval(), proc, key


def shortlist(
    q: np.ndarray, g: np.ndarray, q_items, g_items, k: int, loo: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(full cosine [Q, G], top-k indices [Q, k], their cosines)``; other species are at -inf.

    ``loo`` (queries are the gallery, the open protocol): each query itself and its own individual's images from
    the same encounter are at -inf too, as :func:`animal_reid.metrics.leave_one_out` leaves them out.
    """
    s = q @ g.T
    s[_col(q_items, "species")[:, None] != _col(g_items, "species")[None, :]] = -np.inf
    if loo:
        np.fill_diagonal(s, -np.inf)
        q_enc, g_enc = _col(q_items, "encounter"), _col(g_items, "encounter")
        known = np.array([e is not None for e in q_enc], dtype=bool)
        same_id = _col(q_items, "identity")[:, None] == _col(g_items, "identity")[None, :]
        same = same_id & (q_enc[:, None] == g_enc[None, :]) & known[:, None]
        s[same] = -np.inf
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return s, idx, np.take_along_axis(s, idx, 1)


def _col(items, name: str) -> np.ndarray:
    return np.asarray([getattr(it, name) for it in items], dtype=object)


def evaluate_scores(scores: np.ndarray, q_items, g_items, loo: bool = False) -> dict:
    """evaluate_reid of a score matrix: query rows are the scores, the gallery is the identity matrix.

    ``loo``: queries are the gallery (the open protocol), ranked per species with themselves and their own
    individual's same-encounter images left out, exactly as :func:`animal_reid.metrics.leave_one_out`.
    """
    s = np.where(np.isfinite(scores), scores, -1e9).astype(np.float32)
    if loo:
        lab, enc, sp = encode_labels(
            _col(q_items, "identity"), _col(q_items, "encounter"), _col(q_items, "species")
        )
        per = {}
        for code in np.unique(sp):
            i = np.flatnonzero(sp == code)
            per[str(q_items[i[0]].species)] = rank_queries(
                s[np.ix_(i, i)], np.eye(len(i), dtype=np.float32), lab[i], lab[i], enc[i], enc[i],
                query_gallery_index=np.arange(len(i)),
            )  # fmt: skip
        return summarize(per, "leave_one_out", topk=(1, 5))
    return evaluate_reid(
        s,
        [q.identity for q in q_items],
        None,
        [q.species for q in q_items],
        gallery_embeddings=np.eye(len(g_items), dtype=np.float32),
        gallery_labels=[g.identity for g in g_items],
        gallery_species=[g.species for g in g_items],
        topk=(1, 5),
    )


PROTOCOLS = {
    "closed": "closed set, MegaDescriptor: test queries train+validation (1-NN cosine, same-encounter kept); "
    "fusion fitted on validation queries against train only",
    "open": "open split (test individuals never trained on), the paper's leave-one-out within species: every "
    "image queries the other images of its split, its own individual's same-encounter images left out; fusion "
    "fitted on validation, scored on test",
}


def read_splits(args) -> dict[str, list]:
    """The splits the protocol reads (the open one needs no train images), capped and subsampled as asked."""
    from animal_reid.training.data import cap_per_identity

    names = ("validation", "test") if args.protocol == "open" else ("train", "validation", "test")
    out = {}
    for name in names:
        items = read_gallery(args.corpus, None, [name])
        if args.cap_per_identity:
            items = [
                items[i]
                for i in cap_per_identity([it.identity for it in items], args.cap_per_identity, args.seed)
            ]
        out[name] = items[:: args.subsample]
    return out


def protocol_pairs(protocol: str, splits: dict, emb: dict) -> tuple[dict, bool]:
    """``({"fit": (queries, gallery, their embeddings...), "test": ...}, leave-one-out)`` of the protocol."""
    va, te = splits["validation"], splits["test"]
    if protocol == "open":
        return {
            "fit": (va, va, emb["validation"], emb["validation"]),
            "test": (te, te, emb["test"], emb["test"]),
        }, True
    tr = splits["train"]
    g_emb = np.concatenate([emb["train"], emb["validation"]])
    return {
        "fit": (va, tr, emb["validation"], emb["train"]),
        "test": (te, [*tr, *va], emb["test"], g_emb),
    }, False


def check_global(base: dict, q_emb, g_emb, q_items, g_items, loo: bool) -> None:
    """The global figures from the score matrix must equal :func:`evaluate_reid` on the embeddings themselves
    (up to float rounding)."""
    lab, sp = [q.identity for q in q_items], [q.species for q in q_items]
    if loo:
        check = evaluate_reid(q_emb, lab, [q.encounter for q in q_items], sp, topk=(1, 5))
    else:
        check = evaluate_reid(q_emb, lab, None, sp, gallery_embeddings=g_emb, gallery_labels=[g.identity for g in g_items],
                              gallery_species=[g.species for g in g_items], topk=(1, 5))  # fmt: skip
    # float32 products of different shapes (the whole matrix here, one species at a time there) round differently
    # in the last bit, so an exact near-tie may swap two gallery images: 1e-3 allows that, not a protocol error
    if abs(check["top1"] - base["top1"]) > 1e-3 or abs(check["mAP"] - base["mAP"]) > 1e-3:
        raise AssertionError(f"score-matrix evaluation disagrees with evaluate_reid: {check} vs {base}")


def _pick(r: dict) -> dict:
    out = {sp: {"top1": m["top1"], "top5": m["top5"], "mAP": m["mAP"], "n_queries": m["n_queries"]}
           for sp, m in r["per_species"].items()}  # fmt: skip
    out["macro"] = {"top1": r["top1"], "top5": r["top5"], "mAP": r["mAP"], "n_queries": r["n_queries"]}
    return out


def _side(items, gallery, idx, cos, fused) -> dict:
    """One split's shortlists for :func:`open_set`: global and fused scores, candidate and true individuals."""
    return {"global": cos, "reranked": fused, "labels": [[gallery[g].identity for g in row] for row in idx],
            "true": [q.identity for q in items], "species": [q.species for q in items]}  # fmt: skip


def _f4(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def open_set(fit: dict, test: dict, unknown_fraction: float = 0.5) -> tuple[dict, dict]:
    """The new-individual decision on global and on fused scores: fitted on validation, scored on test.

    ``fit`` / ``test``: ``{"global": [Q, K] scores, "reranked": [Q, K] scores, "labels": [Q, K] candidate
    individuals, "true": [Q], "species": [Q]}``. ``unknown_fraction`` of each split's individuals (seeded, different
    seeds per split) are treated as absent from the gallery: their own images are taken out of their shortlists.
    Returns ``(thresholds, report)``: an OpenSetThreshold per score and the test figures (BAKS, BAUS, their
    geometric mean, AUROC) per score.
    """
    thresholds, report = {}, {}
    unk_fit = unknown_identities(fit["true"], unknown_fraction, seed=0)
    unk_test = unknown_identities(test["true"], unknown_fraction, seed=1)
    for name in ("global", "reranked"):
        best, lab = best_match_in_shortlist(fit[name], fit["labels"], fit["true"], unk_fit)
        thresholds[name] = OpenSetThreshold.fit(best, lab, fit["true"], unk_fit, fit["species"])
        best, lab = best_match_in_shortlist(test[name], test["labels"], test["true"], unk_test)
        pred = thresholds[name].predict(best, lab, test["species"])
        report[name] = open_set_report(test["true"], pred, best, unk_test, test["species"])
    return thresholds, report


def loaded_fusion(path: str, config: LocalFeatureConfig, k: int) -> Fusion:
    """A fusion fitted earlier (``--fusion``), checked to have been fitted with these local features and this K."""
    fusion = Fusion.load(path)
    # through from_dict, so a file written before a setting existed reads as that setting's default
    fitted = LocalFeatureConfig.from_dict(fusion.feature_config or {})
    if fitted != config or fusion.shortlist_k != k:
        raise ValueError(
            f"{path}: fitted with {fusion.feature_config} at K = {fusion.shortlist_k}, not with this run's "
            f"{config.to_dict()} at K = {k}"
        )
    return fusion


def render_markdown(result: dict) -> str:
    """The result as a Markdown table (with / without re-ranking per species), the fusion curve and the cost."""
    return "\n".join(
        accuracy_lines(result) + fusion_lines(result) + open_set_lines(result) + cost_lines(result)
    )


def accuracy_lines(result: dict) -> list[str]:
    """The page's title, settings and command, and the table of top-1 / mAP with and without re-ranking."""
    lines = [
        f"# Local-feature re-ranking: {result['name']} ({result['date'] if 'date' in result else result['machine']['date']})",
        "",
        f"{result['protocol']}. Shortlist K = {result['k']}, {result['feature_config']['method'].upper()} "
        f"at {result['feature_config']['max_side']} px (at most {result['feature_config']['max_keypoints']} keypoints), "
        f"ratio {result['feature_config']['ratio']}, MAGSAC fundamental matrix ({result['feature_config']['ransac_px']} px).",
        "",
        f"Command: `{result['command']}`",
        "",
        "| split | species | queries | top-1 global | top-1 re-ranked | mAP global | mAP re-ranked | true individual in shortlist |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split in ("validation", "test"):
        held = result[split].get("shortlist_holds_true_individual", {})
        for sp, g in result[split]["global"].items():
            r = result[split]["reranked"][sp]
            frac = f"{held[sp]:.3f}" if sp in held else ""
            lines.append(f"| {split} | {sp} | {g['n_queries']} | {_f4(g['top1'])} | {_f4(r['top1'])} | {_f4(g['mAP'])} | "
                         f"{_f4(r['mAP'])} | {frac} |")  # fmt: skip
    return lines


def fusion_lines(result: dict) -> list[str]:
    """Which rows the fusion saw, the fusion itself, and its validation top-1 against the weight."""
    f = result["fusion"]
    where = (
        "Validation rows are the data the fusion was fitted on; test rows are held out."
        if not result.get("fusion_loaded")
        else "The fusion was loaded, not fitted on these validation rows (for a refit model they are training "
        "images: for the record only); test rows are held out."
    )
    lines = [
        "",
        where,
        "",
        f"{'Loaded' if result.get('fusion_loaded') else 'Fitted'} fusion (validation only): `cosine + w * inliers / "
        f"(inliers + {f['scale']:g})`, global w = {f['weight']:g}, "
        f"per species {json.dumps(f['per_species'])} (file `{result['fusion_file']}`).",
        "",
    ]
    curve = f.get("curve") or {"weights": [], "top1": {}}  # a loaded fusion may carry none
    if curve["weights"]:
        lines += [
            "Validation top-1 against w (at the fitted scale"
            + (", from the loaded file: the model it was fitted with" if result.get("fusion_loaded") else "")
            + "):",
            "",
            "| w | " + " | ".join(curve["top1"]) + " |",
            "|---|" + "---|" * len(curve["top1"]),
        ]
    for i, w in enumerate(curve["weights"]):
        if i % 2 == 0:
            lines.append(
                f"| {w:g} | " + " | ".join(f"{v[i]:.4f}" for v in f["curve"]["top1"].values()) + " |"
            )
    return lines


def open_set_lines(result: dict) -> list[str]:
    """The new-individual decision's test figures per score and species (none when it was left out)."""
    lines = []
    if "open_set" in result:
        lines += ["", f"New-individual decision ({result['open_set']['protocol']}): test, per species", "",
                  "| score | species | BAKS | BAUS | √(BAKS·BAUS) | AUROC |", "|---|---|---|---|---|---|"]  # fmt: skip
        for score, rep in result["open_set"]["test"].items():
            for sp, r in rep["per_species"].items():
                lines.append(f"| {score} | {sp} | {_pct(r['BAKS'])} | {_pct(r['BAUS'])} | {_pct(r['geometric_mean'])} | "
                             f"{_pct(r['AUROC'])} |")  # fmt: skip
    return lines


def cost_lines(result: dict) -> list[str]:
    """What re-ranking costs: seconds per query and pair at each K, the local-feature cache and extraction."""
    c = result["cost"]
    lines = ["", f"Cost (one thread, {result['machine']['cpus']} cores shared with a training run; load average at "
              f"the end {', '.join(f'{x:.1f}' for x in result['machine']['loadavg_at_end'])}), features cached:", "",
              "| K | s per query | s per pair |", "|---|---|---|"]  # fmt: skip
    for k, v in c["s_per_query"].items():
        lines.append(f"| {k} | {v['s_per_query']:.4f} | {v['s_per_pair']:.5f} |")
    lines += [
        "",
        f"Local-feature cache: {c['cache_mb_per_1000_images']} MB per 1,000 images (the cache holds "
        f"{c.get('cache_images', 'n/a')} images; this run {c['n_images']}, "
        f"{c['keypoints_per_image']['mean']:.0f} keypoints on average); extraction "
        f"{c['feature_extraction_s_per_image'] or 'n/a (all cached)'} s per image; image status {json.dumps(c['image_status'])}.",
        "",
    ]
    return lines


def correct_candidates(queries, gallery, idx) -> np.ndarray:
    """[Q, K] bool: the shortlisted gallery image shows the query's individual."""
    return np.array(
        [[gallery[j].identity == q.identity for j in row] for q, row in zip(queries, idx, strict=True)]
    )


def _dump(path: str, sides: dict) -> None:
    """Save each side's shortlists (``{side: (queries, cosine, inliers, correct)}``) as arrays: ``{side}_cosine``,
    ``_inliers``, ``_correct``, ``_species``."""
    arrays = {}
    for side, (q, cos, inl, correct) in sides.items():
        arrays[f"{side}_cosine"], arrays[f"{side}_inliers"] = np.asarray(cos), np.asarray(inl)
        arrays[f"{side}_correct"] = np.asarray(correct, dtype=bool)
        arrays[f"{side}_species"] = np.array([a.species for a in q], dtype=str)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default=str(ROOT / "runs/bench224/corpora/closed"))
    p.add_argument("--model", default="imagenet", help="'imagenet' or an exported model directory")
    p.add_argument("--name", default=None, help="label of the model in the results (default: from --model)")
    p.add_argument("--k", type=int, default=20, help="shortlist re-scored for the accuracy figures")
    p.add_argument("--cost-ks", default="10,20,50")
    p.add_argument("--cost-queries", type=int, default=30, help="test queries timed per K")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--method", default="sift", choices=("sift", "orb"))
    p.add_argument("--max-side", type=int, default=384)
    p.add_argument("--max-keypoints", type=int, default=512)
    p.add_argument("--geometry", default="fundamental", choices=("fundamental", "homography"))
    p.add_argument("--cache-dir", default=str(ROOT / "runs/rerank_cache"))
    p.add_argument(
        "--subsample", type=int, default=1, help="keep every n-th image of each split (smoke runs)"
    )
    p.add_argument("--protocol", default="closed", choices=sorted(PROTOCOLS))
    p.add_argument(
        "--cap-per-identity", type=int, default=None,
        help="keep at most N images per identity in each split, chosen as training's max_eval_images_per_identity "
        "chooses them (with --seed), so the global figures are those of the training run's evaluation",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--significance", type=float, default=1.0,
        help="sign-test level a species' own fusion weight must pass on validation (1: always kept; see fit_fusion)",
    )  # fmt: skip
    p.add_argument(
        "--fusion", default=None,
        help="use this fusion file (fitted on validation with another model, e.g. the one a refit repeats, whose "
        "validation images it trained on) instead of fitting one; the open-set decision is then left out",
    )  # fmt: skip
    p.add_argument("--out", required=True)
    p.add_argument(
        "--dump-shortlists", default=None,
        help="also save the validation and test shortlists (cosine, inliers, correct, species) to this .npz, "
        "to study fusion rules offline without re-matching",
    )  # fmt: skip
    p.add_argument(
        "--render-only", action="store_true", help="write OUT.md from an existing OUT (JSON) and stop"
    )
    return p.parse_args(argv)


def render_only(out: str) -> dict:
    """``--render-only``: OUT.md from an existing OUT (JSON); that result."""
    result = json.loads(Path(out).read_text())
    report.write_text(Path(out).with_suffix(".md"), render_markdown(result))
    return result


def embed_splits(args: argparse.Namespace, splits: dict[str, list]) -> tuple[dict[str, np.ndarray], int]:
    """``(global embeddings per split, images embedded now)``: one torch thread, cached under ``--cache-dir``."""
    model, proc, key = load_model(args.model)
    ident = Identifier(_OneThread(model), proc, key, Path(args.cache_dir) / "embeddings", {"model": args.model},
                       batch_size=16)  # fmt: skip
    return {s: ident.embed(items) for s, items in splits.items()}, ident.n_embedded


def extract_features(
    args: argparse.Namespace, config: LocalFeatureConfig, splits: dict[str, list]
) -> tuple[LocalReranker, dict]:
    """The reranker, with every image's local features extracted (or cached), and what they cost."""
    every = [it for items in splits.values() for it in items]
    rr = LocalReranker(
        Fusion(weight=0.0), config, k=args.k, workers=args.workers, cache_dir=Path(args.cache_dir) / "local",
        progress=False,
    )  # fmt: skip
    t0 = time.perf_counter()
    feats = rr.store.features(every, args.workers, progress=False)
    t_feat = time.perf_counter() - t0
    n_computed = rr.store.n_computed
    status = {s: sum(f.status == s for f in feats) for s in sorted({f.status for f in feats})}
    kp = np.array([len(f) for f in feats])
    # the cache folder may hold other corpora's images too (same settings): size per image it holds
    cache_bytes, cached_images = rr.store.cache.nbytes(), max(1, len(rr.store.cache))
    return rr, {
        "feature_extraction_s_per_image": round(t_feat / max(1, n_computed), 4) if n_computed else None,
        "features_computed_this_run": n_computed,
        "keypoints_per_image": {
            "mean": float(kp.mean()),
            "median": float(np.median(kp)),
            "max": int(kp.max()),
        },
        "image_status": status,
        "cache_bytes": cache_bytes,
        "cache_images": cached_images,
        "cache_mb_per_1000_images": round(cache_bytes / cached_images * 1000 / 1e6, 2),
        "n_images": len(every),
    }


@dataclass
class Ranked:
    """Queries ranked by cosine against a gallery: embeddings, full matrix [Q, G], top-K indices and cosines."""

    queries: list
    gallery: list
    q_emb: np.ndarray
    g_emb: np.ndarray
    full: np.ndarray
    idx: np.ndarray
    cos: np.ndarray

    @classmethod
    def of(cls, pair: tuple, k: int, loo: bool) -> Ranked:
        """The shortlists of one ``(queries, gallery, their embeddings)`` pair of :func:`protocol_pairs`."""
        queries, gallery, q_emb, g_emb = pair
        return cls(queries, gallery, q_emb, g_emb, *shortlist(q_emb, g_emb, queries, gallery, k, loo))


@dataclass
class Verified:
    """The validation shortlists geometrically verified: inliers, stats, which candidates are correct."""

    inliers: np.ndarray
    stats: dict
    correct: np.ndarray
    fit_s: float


def fit_on_validation(
    args: argparse.Namespace, rr: LocalReranker, config: LocalFeatureConfig, val: Ranked
) -> tuple[Fusion, Verified]:
    """Verify the validation shortlists and fit the fusion on them (or load ``--fusion``)."""
    t0 = time.perf_counter()
    inliers, stats = rr.verify(val.queries, val.gallery, val.idx)
    correct = correct_candidates(val.queries, val.gallery, val.idx)
    if args.fusion:
        fusion = loaded_fusion(args.fusion, config, args.k)
    else:
        fusion = fit_fusion(val.cos, inliers, correct, [q.species for q in val.queries],
                            feature_config=config.to_dict(), shortlist_k=args.k,
                            significance=args.significance)  # fmt: skip
    verified = Verified(inliers, stats, correct, time.perf_counter() - t0)
    logger.info(
        "fitted fusion: weight %s, scale %s, per species %s", fusion.weight, fusion.scale, fusion.per_species
    )
    return fusion, verified


def accuracy(
    val: Ranked, verified: Verified, te: Ranked, out: RerankOutput, fusion: Fusion, loo: bool
) -> tuple[dict, dict, np.ndarray]:
    """``(test figures, validation figures, fused validation shortlist scores)``, global and re-ranked."""
    fused_full = te.full.copy()
    np.put_along_axis(fused_full, te.idx, out.scores, 1)
    base = evaluate_scores(te.full, te.queries, te.gallery, loo)
    check_global(base, te.q_emb, te.g_emb, te.queries, te.gallery, loo)
    reranked = evaluate_scores(fused_full, te.queries, te.gallery, loo)
    # validation too (the data the fusion was fitted on), for the record
    v_fused_short = fusion.fuse(val.cos, verified.inliers, [q.species for q in val.queries])
    v_fused = val.full.copy()
    np.put_along_axis(v_fused, val.idx, v_fused_short, 1)
    test = {"global": _pick(base), "reranked": _pick(reranked), "stats": out.stats,
            "shortlist_holds_true_individual": shortlist_recall(te)}  # fmt: skip
    validation = {"global": _pick(evaluate_scores(val.full, val.queries, val.gallery, loo)),
                  "reranked": _pick(evaluate_scores(v_fused, val.queries, val.gallery, loo)),
                  "stats": verified.stats}  # fmt: skip
    return test, validation, v_fused_short


def shortlist_recall(te: Ranked) -> dict[str, float]:
    """Per species, the fraction of queries whose shortlist holds an image of their own individual."""
    return {
        sp: float(np.mean([any(te.gallery[g].identity == q.identity for g in row)
                           for q, row in zip(te.queries, te.idx, strict=True) if q.species == sp]))
        for sp in sorted({q.species for q in te.queries})
    }  # fmt: skip


def open_set_decision(
    val: Ranked, v_fused_short: np.ndarray, te: Ranked, out: RerankOutput, fusion: Fusion, fusion_path: Path
) -> dict:
    """The new-individual decision on fused scores (fitted on validation, like the fusion); saves the fusion."""
    thresholds, open_report = open_set(
        _side(val.queries, val.gallery, val.idx, val.cos, v_fused_short),
        _side(te.queries, te.gallery, te.idx, te.cos, out.scores),
    )
    fusion.open_set_threshold = thresholds["reranked"].to_dict()
    fusion.save(fusion_path)
    return {"protocol": "half the individuals of each split (seeded) treated as absent from the gallery: "
            "their images taken out of their shortlists; threshold fitted on validation, scored on test",
            "thresholds": {k: v.to_dict() for k, v in thresholds.items()}, "test": open_report}  # fmt: skip


def cost_per_query(
    args: argparse.Namespace, fusion: Fusion, config: LocalFeatureConfig, te: Ranked, loo: bool
) -> dict[str, dict]:
    """Seconds per query at several K (features cached: matching + fusion only), on the first test queries."""
    cost = {}
    nq = min(args.cost_queries, len(te.queries))
    ks = [int(k) for k in args.cost_ks.split(",")]
    _, c_idx, c_cos = shortlist(te.q_emb[:nq], te.g_emb, te.queries[:nq], te.gallery, max(ks), loo)
    for k in ks:
        r = LocalReranker(fusion, config, k=k, workers=args.workers, cache_dir=Path(args.cache_dir) / "local",
                          progress=False)  # fmt: skip
        t0 = time.perf_counter()
        r.rerank(te.queries[:nq], te.gallery, c_idx[:, :k], c_cos[:, :k])
        dt = time.perf_counter() - t0
        cost[str(k)] = {"s_per_query": round(dt / nq, 4), "queries": nq, "s_per_pair": round(dt / (nq * k), 5),
                        "features_computed": r.store.n_computed}  # fmt: skip
    return cost


def machine(args: argparse.Namespace) -> dict:
    """Where and when the run happened (cores, workers, threads, Python, load at the end, date)."""
    return {"cpus": os.cpu_count(), "workers": args.workers, "threads": 1, "python": platform.python_version(),
            "loadavg_at_end": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip


def write_report(out_path: Path, result: dict) -> None:
    """OUT (JSON) and OUT.md; prints the per-species figures and the cost."""
    report.write_results(out_path, result, render_markdown(result))
    for split in ("validation", "test"):
        for sp, m in result[split]["global"].items():
            r2 = result[split]["reranked"][sp]
            print(
                f"{split:10s} {sp:6s} top1 {_f4(m['top1'])} -> {_f4(r2['top1'])}   mAP {_f4(m['mAP'])} -> {_f4(r2['mAP'])}"
            )
    print(json.dumps(result["cost"], indent=1))


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.render_only:
        return render_only(args.out)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    report.require_extra("dev", "cv2")  # OpenCV: the local features
    import torch

    torch.set_num_threads(1)
    name = args.name or ("imagenet" if args.model == "imagenet" else Path(args.model).parent.name)
    t_start = time.perf_counter()
    splits = read_splits(args)
    emb, n_embedded = embed_splits(args, splits)
    logger.info("embeddings ready (%d embedded now, %.0f s)", n_embedded, time.perf_counter() - t_start)
    config = LocalFeatureConfig(method=args.method, max_side=args.max_side, max_keypoints=args.max_keypoints,
                                geometry=args.geometry)  # fmt: skip
    rr, extraction = extract_features(args, config, splits)
    pairs, loo = protocol_pairs(args.protocol, splits, emb)
    val = Ranked.of(pairs["fit"], args.k, loo)  # validation -> train, or validation itself
    fusion, verified = fit_on_validation(args, rr, config, val)
    out_path = Path(args.out)
    # saved once its open-set threshold is fitted, below
    fusion_path = Path(args.fusion) if args.fusion else out_path.with_name(out_path.stem + "_fusion.json")
    te = Ranked.of(pairs["test"], args.k, loo)  # test -> its gallery (train + validation, or test itself)
    rr.fusion = fusion
    t0 = time.perf_counter()
    out = rr.rerank(te.queries, te.gallery, te.idx, te.cos)
    t_test = time.perf_counter() - t0
    if args.dump_shortlists:
        _dump(args.dump_shortlists, {"val": (val.queries, val.cos, verified.inliers, verified.correct),
                                     "test": (te.queries, te.cos, out.inliers, correct_candidates(te.queries, te.gallery, te.idx))})  # fmt: skip
    test, validation, v_fused_short = accuracy(val, verified, te, out, fusion, loo)
    open_result = None if args.fusion else open_set_decision(val, v_fused_short, te, out, fusion, fusion_path)
    cost = {"s_per_query": cost_per_query(args, fusion, config, te, loo), **extraction,
            "fit_s": round(verified.fit_s, 2), "test_rerank_s": round(t_test, 2)}  # fmt: skip
    result = {
        "model": args.model,
        "name": name,
        "corpus": args.corpus,
        "protocol": PROTOCOLS[args.protocol],
        "k": args.k,
        "feature_config": config.to_dict(),
        "fusion": fusion.to_dict(),
        "fusion_file": str(fusion_path.resolve().relative_to(ROOT) if fusion_path.resolve().is_relative_to(ROOT) else fusion_path),
        "fusion_loaded": bool(args.fusion),
        "test": test,
        "validation": validation,
        "cost": cost,
        "machine": machine(args),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "command": "python benchmarks/bench_rerank.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }  # fmt: skip
    if open_result is not None:
        result["open_set"] = open_result
    write_report(out_path, result)
    return result


if __name__ == "__main__":
    main()
