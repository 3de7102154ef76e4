"""The command line of identification (``python -m animal_reid.identify``, ``animal-reid-identify``).

Every option and path is checked before the model is loaded (:func:`check_args`) and ``--out`` is locked for the
whole run (:class:`animal_reid.manifest.OutputFolder`: a second run on the same folder is refused; ``--overwrite``
replaces only the files the previous run listed in its manifest); errors are one line ``error: <message>`` on
stderr, exit status 2 for bad arguments and unusable output folders (:class:`UsageError`,
:class:`~animal_reid.manifest.OutputError`) and 1 for failures (``-v`` adds the traceback). See :mod:`animal_reid.identify` for what the options mean.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
import traceback
from pathlib import Path

from ..manifest import OutputError, OutputFolder, describe_os_error
from .cache import default_cache_dir
from .engine import Identifier, QueryResult
from .explain_out import add_arguments as add_explain_arguments
from .explain_out import check_args as check_explain_args
from .explain_out import explain_folder, write_explanations
from .inputs import ON_ERROR, BadImageError, BadImages, ImageItem, UsageError, read_gallery, read_queries
from .outputs import SKIPPED_FILE, write_results, write_skipped
from .thresholds import GALLERY_THRESHOLD, checked_threshold, load_threshold

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")


class _Parser(argparse.ArgumentParser):
    """argparse raising :class:`UsageError` (one line from ``main``) instead of printing usage and exiting."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m animal_reid.identify",
        description="Rank the known individuals of a gallery for each query image and flag new individuals.",
    )
    p.add_argument(
        "--model", required=True, help="model directory or Hub repo id (AutoModel, trust_remote_code)"
    )
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    p.add_argument(
        "--gallery", required=True, help="folder per individual, CSV (path,identity,...) or corpus dir"
    )
    p.add_argument(
        "--gallery-config", default=None, help="corpus config (default: 'all' if present, else all)"
    )
    p.add_argument("--gallery-split", action="append", default=None, help="corpus split(s) (default: all)")
    p.add_argument(
        "--queries", nargs="+", required=True, help="image files, folders or CSVs (path[,identity])"
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder: new or empty, or the output of an earlier identify run with --overwrite; one run "
        "at a time (locked)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files an earlier identify run wrote in --out (and --explain; listed in its manifest) and "
        "only those: files you added there are kept, ones of ours you edited are kept aside as <name>.edited-<time>",
    )
    p.add_argument("--top-k", type=int, default=5, help="candidate individuals per query (>= 1)")
    p.add_argument(
        "--threshold",
        default=None,
        help="new-individual threshold: a cosine in [-1, 1], a thresholds or bands JSON (animal-reid calibrate), "
        "or 'gallery' (calibrated per species on the labelled gallery itself)",
    )
    p.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="skip",
        help="unusable image (corrupt, truncated, empty, unsupported type): skip it and list it in "
        "OUT/skipped.csv (default), or raise: stop at the first",
    )
    p.add_argument("--cache-dir", default=None, help=f"embedding cache (default {default_cache_dir()})")
    p.add_argument("--no-cache", action="store_true", help="embed everything, read and write no cache")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="worker processes decoding images (0: one background thread, fastest on a few CPU cores)",
    )
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--no-match-sheets", action="store_true")
    add_rerank_arguments(p)
    add_explain_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks with errors")
    return p


def add_rerank_arguments(p: argparse.ArgumentParser) -> None:
    """``--rerank`` and its options."""
    p.add_argument(
        "--rerank",
        choices=("none", "local", "pairx"),
        default="none",
        help="local: re-score each query's shortlist with verified SIFT keypoint matches; pairx: with the "
        "correspondences of the model's own feature maps (PAIR-X scores); docs/rerank.md",
    )
    p.add_argument("--rerank-k", type=int, default=20, help="shortlist size re-scored per query (>= 1)")
    p.add_argument("--rerank-workers", type=int, default=1, help="threads matching keypoints (>= 1)")
    p.add_argument(
        "--rerank-time-budget",
        type=float,
        default=None,
        help="seconds per query; candidates not matched in time keep their cosine (default: no limit)",
    )
    p.add_argument(
        "--rerank-fusion",
        default=None,
        help="fitted fusion JSON (default: rerank_fusion.json, for pairx rerank_pairx_fusion.json, in --model, "
        "else in a --gallery folder)",
    )


def _check_args(args: argparse.Namespace) -> None:
    """Every option and path, before anything expensive; raises :class:`UsageError` naming the culprit."""
    for name, value, low in (("--top-k", args.top_k, 1), ("--batch-size", args.batch_size, 1)):
        if value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    if args.num_workers < 0:
        raise UsageError(f"--num-workers must be >= 0, got {args.num_workers}")
    rerank = args.rerank != "none"
    if rerank:
        _check_rerank_args(args)
    if args.threshold is not None:
        _check_threshold_arg(args.threshold, rerank)
    _check_model(args.model)
    if not Path(args.gallery).exists():
        raise UsageError(f"--gallery {args.gallery}: no such file or folder")
    for q in args.queries:
        if not Path(q).exists():
            raise UsageError(f"--queries {q}: no such file or folder")
    if args.cache_dir is not None and not args.no_cache:
        c = Path(args.cache_dir).expanduser()
        if c.exists() and not c.is_dir():
            raise UsageError(f"--cache-dir {args.cache_dir} exists and is not a folder")
    if args.device is not None:
        _check_device(args.device)
    _check_out(args)
    check_explain_args(args)


def _check_rerank_args(args: argparse.Namespace) -> None:
    for name, value in (("--rerank-k", args.rerank_k), ("--rerank-workers", args.rerank_workers)):
        if value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")
    budget = args.rerank_time_budget
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise UsageError(f"--rerank-time-budget must be a number of seconds > 0, got {budget}")
    if args.rerank_fusion is not None:
        if not Path(args.rerank_fusion).is_file():
            raise UsageError(f"--rerank-fusion {args.rerank_fusion}: no such file")
        try:
            _fusion_kind(args.rerank).load(args.rerank_fusion)
        except (OSError, ValueError) as err:
            raise UsageError(f"--rerank-fusion {args.rerank_fusion}: {err}") from err


def _fusion_kind(rerank: str):
    """The fusion class of a ``--rerank`` choice (SIFT's per-species one, or the score fusion of PAIR-X)."""
    from ..rerank import Fusion, ScoreFusion

    return Fusion if rerank == "local" else ScoreFusion


def _cli_reranker(args: argparse.Namespace, ident: Identifier):
    """The re-ranker the CLI options describe (fusion: --rerank-fusion, the model's, the gallery folder's)."""
    from ..rerank import FUSION_FILE, PAIRX_FUSION_FILE, LocalReranker, PairxReranker

    path = args.rerank_fusion
    name = FUSION_FILE if args.rerank == "local" else PAIRX_FUSION_FILE
    if path is None:
        for d in (ident.model_dir, Path(args.gallery)):
            if d is not None and d.is_dir() and (d / name).is_file():
                path = d / name
                break
    fusion = None
    if path is not None:
        logger.info("%s re-ranking with the fusion in %s", args.rerank, path)
        fusion = _fusion_kind(args.rerank).load(path)
    cache_dir = ident.cache.dir.parent if ident.cache is not None else None
    if args.rerank == "pairx":
        key = ident.cache.dir.name if ident.cache is not None else "model"
        return PairxReranker(
            ident.model, ident.processor, fusion, k=args.rerank_k, cache_dir=cache_dir, model_key=key
        )
    return LocalReranker(
        fusion,
        k=args.rerank_k,
        workers=args.rerank_workers,
        time_budget_s=args.rerank_time_budget,
        cache_dir=cache_dir,
        progress=None if not args.quiet else False,
    )


def accuracy_summary(results: list[QueryResult]) -> str:
    """``, top-1 correct a/b`` over queries of gallery individuals, and the new-individual verdicts over the rest."""
    known = [r.correct for r in results if r.correct is not None and r.query_in_gallery is not False]
    new = [r.correct for r in results if r.correct is not None and r.query_in_gallery is False]
    out = f", top-1 correct {sum(known)}/{len(known)}" if known else ""
    if new:
        out += f", called new {sum(new)}/{len(new)} of the queries whose individual is not in the gallery"
    return out


def _check_threshold_arg(value: str, fused: bool = False) -> None:
    if value == GALLERY_THRESHOLD:
        if fused:
            raise UsageError(
                "--threshold gallery calibrates cosines; with --rerank local pass a fused-score threshold"
            )
        return
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if fused:  # fused scores are a cosine plus a non-negative bonus
            if not (math.isfinite(number) and number >= -1.0):
                raise UsageError(f"--threshold must be a fused score >= -1, got {value}")
            return
        if not (math.isfinite(number) and -1.0 <= number <= 1.0):
            raise UsageError(f"--threshold must be a cosine in [-1, 1], got {value}")
        return
    if not Path(value).is_file():
        raise UsageError(
            f"--threshold must be a number, an open-set threshold JSON file or 'gallery', got {value!r} (no such file)"
        )
    try:
        checked_threshold(
            load_threshold(Path(value)), f"--threshold {value}", -1.0, math.inf if fused else 1.0
        )
    except ValueError as err:
        raise UsageError(str(err)) from err


def _check_model(spec: str) -> None:
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UsageError(
                f"--model {spec}: the folder holds no config.json, so it is not a model directory"
            )
    elif p.exists():
        raise UsageError(f"--model {spec} is a file; expected a model directory or a Hub repo id")
    elif not _HUB_ID.fullmatch(spec):
        raise UsageError(f"--model {spec}: no such model directory, and not a Hub repo id (owner/name)")


def _check_device(spec: str) -> None:
    import torch

    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"--device {spec!r} is not a torch device ({err})") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: CUDA is not available on this machine")


def _check_out(args: argparse.Namespace) -> None:
    """``--out`` is a folder (or new) and not inside an input; the rest (ours, empty, lock) when it is opened."""
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder")
    resolved = out.resolve()
    for flag, src in [("--gallery", args.gallery)] + [("--queries", q) for q in args.queries]:
        src_dir = Path(src).resolve()
        if src_dir.is_dir() and resolved.is_relative_to(src_dir):
            raise UsageError(
                f"--out {args.out} lies inside {flag} {src}: its match sheets would become inputs"
            )


def _output_folder(args: argparse.Namespace) -> OutputFolder:
    """``--out`` under the manifest policy (:mod:`animal_reid.manifest`): locked for the whole run."""
    return OutputFolder(
        Path(args.out).expanduser(),
        tool="animal-reid identify",
        overwrite=args.overwrite,
        what="--out",
        keep=[args.gallery, *args.queries],
    )


def _read_inputs(args: argparse.Namespace, bad: BadImages) -> tuple[list[ImageItem], list[ImageItem]]:
    try:
        gallery = read_gallery(args.gallery, args.gallery_config, args.gallery_split, bad_images=bad)
        queries = read_queries(args.queries, bad_images=bad)
    except BadImageError:
        raise
    except (ValueError, FileNotFoundError) as err:  # what the gallery / query arguments point at is wrong
        raise UsageError(str(err)) from err
    return gallery, queries


def run(argv: list[str] | None = None) -> list[QueryResult]:
    """The command line as a function: parse ``argv``, identify, write outputs, print a summary; returns results.

    Raises :class:`UsageError` for bad arguments (before any model is loaded) and the underlying error for
    failures; :func:`main` turns both into one line and an exit status.
    """
    return _run(_parser().parse_args(argv))


def _run(args: argparse.Namespace) -> list[QueryResult]:
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    package, level = logging.getLogger("animal_reid"), logging.getLogger("animal_reid").level
    if args.verbose:  # every skipped image, not only the first BadImages.LOG_FIRST
        package.setLevel(logging.DEBUG)
    try:
        return _identify_cli(args)
    finally:
        package.setLevel(level)


def _identify_cli(args: argparse.Namespace) -> list[QueryResult]:
    _check_args(args)
    bad = BadImages(args.on_error)
    explained = None
    # --out (and --explain) locked from here until the results are in place
    with _output_folder(args) as folder, explain_folder(args) as explain:
        out, stage, finished = folder.path, folder.staging(), False
        try:
            gallery, queries, ident, results = _identify(args, bad)
            _write(lambda: write_results(results, stage, match_sheets=not args.no_match_sheets), out)
            finished = True
        finally:
            report = _commit(folder, stage, bad, finished)
        if explain is not None:
            top, matches = args.explain_top, args.explain_matches
            explained = write_explanations(
                explain, results, ident.model, ident.processor, top=top, matches=matches, skipped=bad.skipped
            )
    _print_results(args, results, gallery, ident, bad, out, "" if explained is None else explained.summary())
    n_queries = len(queries) + bad.count("query")
    if not results and n_queries:
        raise RuntimeError(f"no usable query image: all {n_queries} were skipped (see {report})")
    return results


def _identify(args: argparse.Namespace, bad: BadImages):
    """``(gallery, queries, identifier, results)`` of the run the arguments describe."""
    gallery, queries = _read_inputs(args, bad)
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    ident = Identifier.from_pretrained(
        args.model,
        revision=args.revision,
        cache_dir=cache_dir,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    reranker = _cli_reranker(args, ident) if args.rerank != "none" else None
    results = ident.identify(
        gallery, queries, top_k=args.top_k, threshold=args.threshold, bad_images=bad, rerank=reranker
    )
    return gallery, queries, ident, results


def _write(write, out: Path) -> None:
    """Run ``write()``; an OSError (disk full, permission denied) becomes one line naming ``--out``."""
    try:
        write()
    except OSError as err:
        raise OutputError(f"cannot write the results into --out {describe_os_error(err, out)}") from err


def _commit(folder: OutputFolder, stage: Path, bad: BadImages, finished: bool) -> Path:
    """Put the run's files in place of the previous run's (:meth:`OutputFolder.commit`); returns the report's path.

    A failed run that skipped images commits its report alone, unless ``--out`` holds a previous output: that is
    left as it was (never mixed with this run's files) and the skipped images are only logged.
    """
    report = folder.path / SKIPPED_FILE
    if not finished and (not bad.skipped or folder.previous is not None):
        if bad.skipped:
            print(f"{bad.summary()}; {report} not written: --out holds a previous output, left as it was",
                  file=sys.stderr)  # fmt: skip
        return report
    _write(lambda: write_skipped(bad.skipped, stage), folder.path)
    _write(lambda: folder.commit(stage), folder.path)
    if bad.skipped:
        print(bad.summary(report), file=sys.stderr)
    return report


def _print_results(args, results, gallery, ident, bad: BadImages, out: Path, more: str = "") -> None:
    if not args.quiet:
        for r in results:
            verdict = (
                ""
                if r.new_individual is None
                else ("  -> NEW individual" if r.new_individual else "  -> known")
            )
            truth = (
                ""
                if r.query_identity is None
                else f"  [true: {r.query_identity}, {'ok' if r.correct else 'wrong'}]"
            )
            print(f"{r.query}{verdict}{truth}")
            for c in r.candidates:
                print(f"  {c['rank']}. {c['identity']}  {c['score']:.3f}  ({c['image']})")
    skipped_items = {id(s.item) for s in bad.skipped if s.item is not None}
    used = [g for g in gallery if id(g) not in skipped_items]
    acc = accuracy_summary(results)
    skipped = f"; skipped {len(bad)} unusable images ({SKIPPED_FILE})" if bad.skipped else ""
    st = ident.rerank_stats if args.rerank != "none" else None
    if st is not None and args.rerank == "pairx":
        skipped += (
            f"; re-ranked the shortlists of {st['n_queries']} queries (K = {st['k']}) with PAIR-X scores"
        )
    elif st is not None:
        skipped += (
            f"; re-ranked {st['n_pairs_verified']}/{st['n_pairs']} shortlist pairs with local features "
            f"({st['n_queries_fallback']} queries and {st['n_gallery_fallback']} gallery images without usable "
            f"keypoints kept the cosine, {st['n_pairs_over_time_budget']} pairs over the time budget)"
        )
    print(
        f"{len(results)} queries against {len(used)} gallery images "
        f"({len({g.identity for g in used})} individuals); embedded {ident.n_embedded} images "
        f"({'no cache' if ident.cache is None else f'cache {ident.cache.dir}'}){acc}{skipped}; results in {out}{more}"
    )


def _one_line(err: BaseException) -> str:
    """An exception as one line: its message (the last line of a worker's traceback), with its type if unclear."""
    text = str(err).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
    else:
        text = text.splitlines()[0] if text else ""
    if not text:
        return type(err).__name__
    if isinstance(err, ValueError | OSError | RuntimeError | OutputError) and not isinstance(err, KeyError):
        return text
    return f"{type(err).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``animal-reid-identify``): 0 on success, 2 for bad arguments, 1 for failures.

    Errors are printed as one line ``error: <message>`` on stderr; ``-v`` prints the traceback too.
    """
    args = None
    try:
        args = _parser().parse_args(argv)
        _run(args)
        return 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the console gets one line, not a traceback
        verbose = bool(getattr(args, "verbose", False))
        if verbose:
            traceback.print_exc()
        usage = isinstance(err, UsageError | OutputError)
        hint = "" if verbose or usage else " (-v shows the traceback)"
        print(f"error: {_one_line(err)}{hint}", file=sys.stderr)
        return 2 if usage else 1
