#!/usr/bin/env python
"""Explanation sheets from real photos (issue 35): a correct match, a wrong top-1 and a new individual.

From one species' split of a built corpus, a seeded fifth of the individuals is held out of the gallery (their
first photo queries as a new individual); every other individual's first photo queries a gallery of its other
photos. Identification runs with the threshold calibrated on the gallery; the first query of each kind (correct
top-1, wrong top-1, called new while absent from the gallery) gets a PAIR-X sheet against its top candidates.
The sheets show licensed photos: they go to ``runs/`` and are never committed.

    python benchmarks/explain_examples.py --model ../shared/models/real6-lite0-224 --corpus corpus/real \\
        --species lion --out runs/explain_examples/lion
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

from animal_reid.identify import Identifier, read_gallery
from animal_reid.identify.explain_out import explain_query

logger = logging.getLogger("explain_examples")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--species", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--max-per-identity", type=int, default=8)
    p.add_argument("--held-out", type=float, default=0.2, help="share of individuals absent from the gallery")
    p.add_argument("--top", type=int, default=3, help="candidates per sheet")
    p.add_argument("--matches", type=int, default=12, help="lines per picture")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def split_items(items: list, held_out: float, cap: int, seed: int) -> tuple[list, list]:
    """``(gallery, queries)``: each individual's first photo queries; a seeded share of them is not in the gallery."""
    by_id: dict[str, list] = {}
    for it in items:
        by_id.setdefault(it.identity, []).append(it)
    ids = sorted(i for i, v in by_id.items() if len(v) >= 2)
    rng = random.Random(seed)
    absent = set(rng.sample(ids, round(held_out * len(ids))))
    gallery, queries = [], []
    for ident in ids:
        first, *rest = by_id[ident][:cap]
        queries.append(first)
        if ident not in absent:
            gallery += rest
    return gallery, queries


def pick(results: list) -> dict[str, object]:
    """The first result of each kind: correct top-1, wrong top-1, new individual (absent and called new)."""

    def top1(r) -> str | None:
        return r.candidates[0]["identity"] if r.candidates else None

    kinds = {
        "correct": lambda r: r.query_in_gallery and top1(r) == r.query_identity,
        "wrong_top1": lambda r: r.query_in_gallery and top1(r) not in (None, r.query_identity),
        "new_individual": lambda r: r.query_in_gallery is False and r.new_individual,
    }
    return {k: next((r for r in results if test(r)), None) for k, test in kinds.items()}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: --out {out} is not empty; choose a new folder")
    items = [it for it in read_gallery(args.corpus, None, [args.split]) if it.species == args.species]
    if not items:
        raise SystemExit(f"error: no {args.species!r} images in split {args.split!r} of {args.corpus}")
    gallery, queries = split_items(items, args.held_out, args.max_per_identity, args.seed)
    ident = Identifier.from_pretrained(args.model, cache_dir=None)
    results = ident.identify(gallery, queries, top_k=args.top, threshold="gallery")
    out.mkdir(parents=True, exist_ok=True)
    summary = {"gallery_images": len(gallery), "queries": len(queries), "sheets": {}}
    for kind, r in pick(results).items():
        if r is None:
            summary["sheets"][kind] = None
            continue
        skipped: list = []
        explain_query(
            r, ident.model, ident.processor, out / kind, top=args.top, matches=args.matches, skipped=skipped
        )
        summary["sheets"][kind] = {"query": r.query, "true": r.query_identity,
                                   "candidates": [c["identity"] for c in r.candidates], "skipped": len(skipped)}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
