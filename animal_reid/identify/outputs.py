"""Outputs of identification: ``results.csv``, ``results.json``, ``skipped.csv`` and the match sheets.

Every file is written under a temporary name and renamed into place (:func:`animal_reid.io.write_atomic`). The
command line writes them into a staging folder of its ``--out`` (:class:`animal_reid.manifest.OutputFolder`),
moved into place when the run is complete: files of a previous run that this one does not write (match sheets of
more queries) are removed because the manifest lists them, never by their names.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..io import write_atomic
from .engine import QueryResult
from .inputs import SkippedImage

logger = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.csv"
SKIPPED_FIELDS = ("path", "role", "reason")
OUTPUT_NAMES = ("results.csv", "results.json", SKIPPED_FILE, "match_sheets")


def write_results(
    results: Sequence[QueryResult], out_dir: str | os.PathLike, match_sheets: bool = True
) -> Path:
    """Write ``results.csv``, ``results.json`` and (optionally) ``match_sheets/*.png`` into ``out_dir``.

    Each file is written under a temporary name and renamed into place; nothing else in ``out_dir`` is touched. A
    match sheet that cannot be drawn is logged and left out.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = [
        "query",
        "rank",
        "identity",
        "score",
        "species",
        "image",
        "new_individual",
        "threshold",
        "query_identity",
        "correct",
    ]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in results:
        for c in r.candidates:
            w.writerow(
                {
                    **{k: c[k] for k in ("rank", "identity", "score", "species", "image")},
                    "query": r.query,
                    "new_individual": "" if r.new_individual is None else r.new_individual,
                    "threshold": "" if r.threshold is None else r.threshold,
                    "query_identity": r.query_identity or "",
                    "correct": "" if r.correct is None else r.correct,
                }
            )
    _write_text(out / "results.csv", buf.getvalue())
    _write_text(out / "results.json", json.dumps([r.to_dict() for r in results], indent=2))
    if match_sheets:
        _write_match_sheets(results, out / "match_sheets")
    return out


def _write_text(path: Path, text: str) -> None:
    data = text.encode()
    write_atomic(path, lambda f: f.write(data))


def _write_match_sheets(results: Sequence[QueryResult], sheets: Path) -> None:
    from ..plots import match_sheet

    for i, r in enumerate(results):
        if r.item is None:
            continue
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(r.query).stem)[:60]
        verdict = None
        if r.new_individual is not None:
            verdict = (
                f"NEW individual (< {r.threshold:.3f})"
                if r.new_individual
                else f"known (>= {r.threshold:.3f})"
            )
        path = sheets / f"{i:04d}_{stem}.png"
        try:
            match_sheet(
                r.item.open(),
                [
                    {"image": it.open(), "identity": c["identity"], "score": c["score"]}
                    for c, it in zip(r.candidates, r.candidate_items, strict=True)
                ],
                path,
                query_label=r.query_identity,
                verdict=verdict,
            )
        except Exception as err:  # noqa: BLE001 - results are written; one sheet must not stop the others
            logger.warning("no match sheet for %s: %s", r.query, err)
            continue
        if r.matches is not None and r.candidates:
            from ..rerank.reranker import draw_match_sheet

            mpath = sheets / f"{i:04d}_{stem}_matches.png"
            captions = [
                f"{c['rank']}. {c['identity']}  fused {c['score']:.3f}  cosine {c.get('cosine', c['score']):.3f}  "
                f"{'no keypoints' if m.n_inliers < 0 else f'{m.n_inliers} verified matches'}"
                for c, m in zip(r.candidates, r.matches, strict=True)
            ]
            try:
                draw_match_sheet(r.item, r.candidate_items, r.matches, captions, mpath, r.match_config)
            except Exception as err:  # noqa: BLE001 - as above
                logger.warning("no keypoint match sheet for %s: %s", r.query, err)


def write_skipped(skipped: Sequence[SkippedImage], out_dir: str | os.PathLike) -> Path:
    """Write ``skipped.csv`` (``path,role,reason``, one row per image left out; header only when none)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(SKIPPED_FIELDS)
    w.writerows((s.path, s.role, s.reason) for s in skipped)
    _write_text(out / SKIPPED_FILE, buf.getvalue())
    return out / SKIPPED_FILE
