"""``identify --explain DIR``: a PAIR-X explanation sheet per query, against its top candidates.

After identification each query is explained (:func:`animal_reid.explain.explain_pair`, with the identifier's model
and processor) against the gallery image that gave each of its first ``--explain-top`` candidates its score, each
image cropped to its own box and rotation; :func:`animal_reid.explain.sheets.write_sheet` writes
``DIR/<query stem>.png`` and ``.json``. ``DIR`` follows ``--out``'s policy (:class:`~animal_reid.manifest.OutputFolder`:
new or empty, or an earlier run's output with ``--overwrite``; locked while the run lasts; the sheets moved into
place when all are written). A query or a gallery image that cannot be read is left out, listed in
``DIR/skipped.csv`` (``path,role,reason``) together with the queries identification skipped, and counted in the
summary line; it never stops the others.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..manifest import OutputError, OutputFolder, describe_os_error
from .engine import QueryResult
from .inputs import SkippedImage, UsageError, error_reason, is_image_error, item_path
from .outputs import SKIPPED_FILE, write_skipped

logger = logging.getLogger(__name__)

TOOL = "animal-reid identify --explain"
DEFAULT_TOP = 3  # candidates explained per query
DEFAULT_MATCHES = 10  # correspondences drawn per candidate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--explain",
        default=None,
        metavar="DIR",
        help="write a PAIR-X explanation sheet per query into DIR (<query>.png and .json; docs/explain.md); "
        "DIR follows --out's rules (new or empty, or an earlier run's with --overwrite)",
    )
    p.add_argument(
        "--explain-top",
        type=int,
        default=None,
        metavar="N",
        help=f"candidates explained per query (default {DEFAULT_TOP}, at most --top-k)",
    )
    p.add_argument(
        "--explain-matches",
        type=int,
        default=None,
        metavar="M",
        help=f"correspondences drawn per candidate (default {DEFAULT_MATCHES})",
    )


def check_args(args: argparse.Namespace) -> None:
    """The ``--explain`` options, before anything is loaded; raises :class:`UsageError` naming the culprit."""
    sizes = (("--explain-top", args.explain_top), ("--explain-matches", args.explain_matches))
    if args.explain is None:
        for name, value in sizes:
            if value is not None:
                raise UsageError(f"{name} needs --explain DIR")
        return
    for name, value in sizes:
        if value is not None and value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")
    folder = Path(args.explain).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--explain {args.explain} exists and is not a folder")
    here, out = folder.resolve(), Path(args.out).expanduser().resolve()
    if here.is_relative_to(out) or out.is_relative_to(here):
        raise UsageError(
            f"--explain {args.explain} and --out {args.out} must be separate folders, neither inside the other"
        )
    for flag, src in [("--gallery", args.gallery)] + [("--queries", q) for q in args.queries]:
        src_dir = Path(src).resolve()
        if src_dir.is_dir() and here.is_relative_to(src_dir):
            raise UsageError(
                f"--explain {args.explain} lies inside {flag} {src}: its sheets would become inputs"
            )


def explain_folder(args: argparse.Namespace):
    """``--explain`` as a locked :class:`OutputFolder` (a context manager), or a null context without it."""
    if args.explain is None:
        return nullcontext()
    return OutputFolder(
        Path(args.explain).expanduser(),
        tool=TOOL,
        overwrite=args.overwrite,
        what="--explain",
        keep=[args.gallery, *args.queries, args.out],
    )


@dataclass
class ExplainRun:
    """What :func:`write_explanations` did: the folder, the sheets written, the images left out."""

    folder: Path
    sheets: list[Path] = field(default_factory=list)
    skipped: list[SkippedImage] = field(default_factory=list)

    def summary(self) -> str:
        """The part of the run's summary line about explanations."""
        n = len(self.skipped)
        left = f", {n} image{'s' * (n != 1)} left out ({self.folder / SKIPPED_FILE})" if n else ""
        return f"; explanation sheets of {len(self.sheets)} queries in {self.folder}{left}"


def write_explanations(
    folder: OutputFolder,
    results: Sequence[QueryResult],
    model: Any,
    processor: Any,
    *,
    top: int | None = None,
    matches: int | None = None,
    skipped: Sequence[SkippedImage] = (),
) -> ExplainRun:
    """A sheet per result into ``folder`` (staged, then committed), explaining its first ``top`` candidates with
    ``matches`` lines each; ``skipped``: the images identification left out (its queries are listed again)."""
    top = DEFAULT_TOP if top is None else top
    matches = DEFAULT_MATCHES if matches is None else matches
    run = ExplainRun(folder.path, skipped=[s for s in skipped if s.role == "query"])
    stage, stems = folder.staging(), set()
    try:
        for i, r in enumerate(results, 1):
            logger.info("explaining query %d/%d: %s", i, len(results), r.query)
            path = stage / unique_stem(r.query, stems)
            if explain_query(r, model, processor, path, top=top, matches=matches, skipped=run.skipped):
                run.sheets.append(folder.path / f"{path.name}.png")
        write_skipped(run.skipped, stage)
        folder.commit(stage)
    except OSError as err:
        raise OutputError(
            f"cannot write the explanations into --explain {describe_os_error(err, folder.path)}"
        ) from err
    return run


def unique_stem(query: str, taken: set[str]) -> str:
    """A file name stem for ``query``: its stem, made safe, numbered when another query had it already."""
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(query).stem)[:80] or "query"
    name, k = stem, 1
    while name.lower() in taken:
        k += 1
        name = f"{stem}-{k}"
    taken.add(name.lower())
    return name


def _unusable(err: BaseException) -> bool:
    """Whether ``err`` is about an image (unreadable, corrupt, a box that does not fit), not a bug."""
    return is_image_error(err) or isinstance(err, OSError)


def explain_query(
    result: QueryResult, model: Any, processor: Any, path: Path, *, top: int, matches: int, skipped: list
) -> bool:
    """Write ``path``'s sheet for ``result``; unusable images go to ``skipped``. Whether a sheet was written."""
    from ..explain.draw import load_photo
    from ..explain.sheets import write_sheet

    q = result.item
    try:
        load_photo(q.image)
    except Exception as err:
        if not _unusable(err):
            raise
        skipped.append(SkippedImage(item_path(q), "query", f"not explained: {error_reason(err, q)}", q))
        return False
    rows, found = _explain_candidates(result, model, processor, top=top, matches=matches, skipped=skipped)
    if not rows:
        reason = "not explained: no candidate's gallery image could be used"
        skipped.append(SkippedImage(item_path(q), "query", reason, q))
        return False
    write_sheet(
        path,
        q.image,
        rows,
        found,
        query_box=q.bbox,
        query_theta=q.theta,
        query_name=result.query,
        top=matches,
    )
    return True


def _explain_candidates(
    result: QueryResult, model: Any, processor: Any, *, top: int, matches: int, skipped: list
) -> tuple[list[dict], list]:
    """``(sheet rows, explanations)`` of the query against its first ``top`` candidates' gallery images."""
    from ..explain import explain_pair

    q, rows, found = result.item, [], []
    for c, g in list(zip(result.candidates, result.candidate_items, strict=True))[:top]:
        boxes, thetas = (q.bbox, g.bbox), (q.theta, g.theta)
        try:
            found.append(
                explain_pair(model, processor, q.image, g.image, boxes=boxes, thetas=thetas, top=matches)
            )
        except Exception as err:
            if not _unusable(err):
                raise
            reason = f"not explained against query {result.query}: {error_reason(err, g)}"
            skipped.append(SkippedImage(item_path(g), "gallery", reason, g))
            continue
        rows.append({**_candidate_fields(c), "image": g.image, "box": g.bbox, "theta": g.theta})
    return rows, found


def _candidate_fields(candidate: dict) -> dict:
    """What a sheet row says about a candidate: rank, individual, species, score, and the image's name."""
    out = {k: candidate.get(k) for k in ("rank", "identity", "species", "score")}
    out["name"] = candidate.get("image")
    return out
