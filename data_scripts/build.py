"""Build a corpus: read sources, validate, split, write Parquet + card + report, optionally push.

Command line (``python -m data_scripts.build --help``)::

    python -m data_scripts.build --sources synthetic --out corpus/synthetic          # no download needed
    python -m data_scripts.build --sources real --out corpus/real --split closed     # the six in ../shared/data
    python -m data_scripts.build --sources whaleshark --download --out corpus/ws     # LILA download first

``--out`` must be new or empty, or hold a corpus this command built (it carries a manifest of its files);
``--overwrite`` replaces only the files that manifest lists, once the new corpus is complete: files you put
beside a corpus are kept, a listed file you edited is kept aside as ``<name>.edited-<time>``, and any other
folder (a project, a corpus built before manifests existed) is refused. One build writes an output at a time.
``--coco`` and ``--miewid`` paths, like every path here, are relative to the current folder.
Errors are one line, ``error: <message>``, with exit status 2 (bad arguments, an output folder it
must not replace) or 1 (the build failed); ``-v`` adds the traceback. ``--help`` needs only the base install;
building needs the ``data`` extra (datasets, pyarrow), and without it the command says so in one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NoReturn

from animal_reid.extras import require_extra
from animal_reid.manifest import OutputError, OutputFolder, describe_os_error

from .schema import SPECIES, Record
from .sources import (
    LOCAL_SOURCES,
    REAL8_SOURCES,
    SOURCES,
    Source,
    Synthetic,
    SyntheticConfig,
    coco_source,
    get_source,
    miewid_source,
)
from .splits import POLICIES, Item, SplitConfig, apply_cap, assign_splits, check_disjoint
from .validate import ValidatedRow, ValidationResult, validate
from .write import DEFAULT_MAX_SHARD_BYTES, OutRow, push_to_hub, write_corpus, write_report

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOL = "data_scripts.build"
SOURCE_GROUPS: dict[str, tuple[str, ...]] = {
    "real": LOCAL_SOURCES,  # the six of the earlier results: unchanged, so their commands build the same corpus
    "real8": REAL8_SOURCES,  # the six + humpback flukes (humpbackwhaleid) and cat faces (catfaces)
    "lila": ("whaleshark", "gzgc", "leopard", "hyena", "beluga"),
}


class UsageError(ValueError):
    """A bad command line (unknown option, source or species, malformed value): exit status 2."""


class BuildError(RuntimeError):
    """The build cannot make a corpus (no valid rows): nothing is written, exit status 1."""


def default_data_root() -> Path:
    """``$REID_DATA_ROOT``, else ``../shared/data`` next to the repository."""
    env = os.environ.get("REID_DATA_ROOT")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def resolve_sources(names: Sequence[str]) -> list[Source]:
    """Source names or group names (``real``, ``lila``) to declarations, in order, without repeats."""
    out: list[Source] = []
    names = [n for name in names for n in name.split(",") if n]  # "liondata,nyaladata" works too
    for name in names:
        for member in SOURCE_GROUPS.get(name, (name,)):
            try:
                src = get_source(member)
            except KeyError as err:
                raise UsageError(f"{err.args[0]}; groups: {sorted(SOURCE_GROUPS)}") from None
            if src not in out:
                out.append(src)
    return out


@dataclass
class BuildResult:
    out_dir: Path
    counts: dict
    report: dict
    rows_written: int
    seconds: float
    problems: list = field(default_factory=list)


def _rel_to(path: Path | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return None


def _no_rows_message(n_read: int, result, out_dir: Path) -> str:
    """One line saying why nothing was written: the skip reasons and the first skipped row."""
    text = f"no valid rows to write: read {n_read} rows"
    if result.problems:
        first = result.problems[0]
        reasons = ", ".join(f"{k}: {v}" for k, v in result.skipped_by_reason().items())
        detail = f", {first.detail}" if first.detail else ""
        text += f", skipped all ({reasons}; first: {first.image_id}: {first.reason}{detail})"
    return f"{text}; {out_dir} left as it was"


def default_min_per_identity(split: SplitConfig, min_per_identity: int | None = None) -> int:
    """The fewest images an identity needs to be kept: ``min_per_identity``, else 2 (open set) or 1 (closed)."""
    if min_per_identity is None:
        # open set: an identity needs a query and a match; closed set: a lone image is still a database entry
        # (and the benchmark files hold such identities)
        min_per_identity = 2 if split.policy == "open" else 1
    if min_per_identity < 1:
        raise ValueError(f"min_per_identity must be >= 1, got {min_per_identity}")
    return min_per_identity


def check_available(sources: Sequence[Source], data_root: Path) -> None:
    """Raise :class:`FileNotFoundError` naming the sources not found under ``data_root`` and where they belong."""
    missing = [s.info.name for s in sources if not s.available(data_root)]
    if missing:
        raise FileNotFoundError(
            f"sources {missing} not found under {data_root}: expected "
            + ", ".join(str(get_source(m).location(data_root)) if m in SOURCES else m for m in missing)
            + " (set --data-root / REID_DATA_ROOT, or --download)"
        )


def read_source(src: Source, data_root: Path) -> tuple[list[Record], dict]:
    """One source's records, and what was read (images, identities, species) against what the source reports."""
    t = time.perf_counter()
    recs = list(src.records(data_root))
    info = src.info
    n_img, n_id = len(recs), len({r.identity for r in recs if r.identity})
    summary = {
        "images": n_img,
        "identities": n_id,
        "reported_images": info.reported_images,
        "reported_identities": info.reported_identities,
        "matches_reported": (info.reported_images in (None, n_img))
        and (info.reported_identities in (None, n_id)),
        "species": sorted({r.species for r in recs}),
        "scan_seconds": round(time.perf_counter() - t, 3),
    }
    if not summary["matches_reported"]:
        logger.warning(
            "%s: read %d images / %d identities, the source reports %s / %s",
            info.name,
            n_img,
            n_id,
            info.reported_images,
            info.reported_identities,
        )
    return recs, summary


def read_sources(sources: Sequence[Source], data_root: Path) -> tuple[list[Record], dict[str, dict]]:
    """Every source's records, in order, and per source name what :func:`read_source` says was read."""
    records: list[Record] = []
    read: dict[str, dict] = {}
    for src in sources:
        recs, read[src.info.name] = read_source(src, data_root)
        records.extend(recs)
    return records, read


def _out_row(valid: ValidatedRow, split: str) -> OutRow:
    """A validated row as written into ``split``."""
    rec = valid.record
    return OutRow(
        data=valid.data,
        file_name=valid.file_name,
        image_id=rec.image_id,
        identity=rec.identity,
        species=rec.species,
        viewpoint=rec.viewpoint,
        encounter=rec.encounter,
        bbox=rec.bbox,
        theta=rec.theta,
        source=rec.source,
        license=rec.license,
        split=split,
    )


def split_rows(
    result: ValidationResult, split: SplitConfig, data_root: Path
) -> tuple[list[OutRow], list[Item], dict]:
    """The validated rows capped per identity and dealt to splits: the rows to write, the capped items and the
    splitter's per-species notes."""
    items = [
        Item(
            r.record.image_id,
            r.record.identity,
            r.record.encounter,
            r.record.species,
            _rel_to(r.record.path, data_root),
        )
        for r in result.rows
    ]
    kept, capped = apply_cap(items, split.cap_per_identity, split.seed)
    assignment, notes = assign_splits(kept, split, data_root)
    by_id = {r.record.image_id: r for r in result.rows}
    rows = [_out_row(by_id[it.image_id], assignment[it.image_id]) for it in kept]
    return rows, capped, notes


def split_report(split: SplitConfig, min_per_identity: int, notes: dict, rows: Sequence[OutRow]) -> dict:
    """The build report's ``split`` section: the settings, per-species notes and identities in several splits."""
    disjoint = {}
    for species in sorted({r.species for r in rows}):
        disjoint[species] = check_disjoint(
            [(r.identity, r.encounter, r.split) for r in rows if r.species == species]
        )
    return {
        "policy": split.policy,
        "seed": split.seed,
        "fractions": list(split.fractions),
        "min_per_identity": min_per_identity,
        "cap_per_identity": split.cap_per_identity,
        "leave_out": list(split.leave_out),
        "use_benchmarks": split.use_benchmarks,
        "description": _split_description(split),
        "per_species": notes,
        "in_several_splits": disjoint,
    }


def rows_report(
    read: dict[str, dict],
    data_root: Path,
    n_read: int,
    result: ValidationResult,
    n_capped: int,
    n_written: int,
    max_problems_listed: int,
) -> dict:
    """The build report's counts: per source, rows read / valid / capped / written, and the skipped rows."""
    return {
        "sources": read,
        "data_root": str(data_root),
        "rows_read": n_read,
        "rows_valid": len(result.rows),
        "rows_capped": n_capped,
        "rows_written": n_written,
        "skipped_by_reason": result.skipped_by_reason(),
        "skipped_by_source": result.skipped_by_source(),
        "skipped": [asdict(p) for p in result.problems[:max_problems_listed]],
        "skipped_listed": min(len(result.problems), max_problems_listed),
        "warnings": result.warnings,
        "duplicates_across_identities": result.duplicates_across_identities,
    }


def timing_report(marks: dict[str, float], seconds: float, n_read: int, workers: int) -> dict:
    """The build report's ``timing``: ``marks`` holds the ``start``, ``read``, ``validated`` and ``write`` times."""
    return {
        "seconds": round(seconds, 2),
        "read_seconds": round(marks["read"] - marks["start"], 2),
        "validate_decode_seconds": round(marks["validated"] - marks["read"], 2),
        "write_seconds": round(time.perf_counter() - marks["write"], 2),
        "images_per_second": round(n_read / max(seconds, 1e-9), 1),
        "decode_workers": workers,
    }


def download_missing(sources: Sequence[Source], data_root: Path, progress: bool) -> None:
    """Fetch and extract the sources not found under ``data_root``."""
    for src in sources:
        if not src.available(data_root):
            logger.info("downloading %s into %s", src.info.name, data_root)
            src.download(data_root, progress=progress)


def write_staged(out: OutputFolder, rows, sources, report: dict, marks: dict, opts: dict) -> dict:
    """Write the corpus into a staging folder of ``out`` and put it in place of the previous one; an
    :class:`OSError` (disk full, permission denied) becomes a :class:`BuildError` naming the file."""
    try:
        stage = out.staging()
        counts = write_corpus(rows, stage, sources, report, opts["max_shard_bytes"], opts["progress"])
        report["timing"] = timing_report(
            marks, time.perf_counter() - marks["start"], marks["n"], opts["workers"]
        )
        write_report(stage, report)  # again, with the timing (the card carries none: it stays reproducible)
    except OSError as err:
        raise BuildError(
            f"cannot write the corpus: {describe_os_error(err, err.filename or out.path)}; the previous "
            f"content of {out.path} is left as it was"
        ) from err
    try:
        out.commit(stage)
    except OSError as err:  # rare: the files are complete, moving them in (or the manifest) failed
        raise BuildError(
            f"cannot put the new corpus in place: {describe_os_error(err, err.filename or out.path)}; "
            f"{out.path} may hold part of it: run the build again with --overwrite"
        ) from err
    return counts


def build(
    sources: Sequence[Source],
    out_dir: Path,
    *,
    data_root: Path | None = None,
    split: SplitConfig | None = None,
    min_per_identity: int | None = None,
    workers: int = 2,
    progress: bool = True,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    max_problems_listed: int = 10_000,
    overwrite: bool = False,
    download: bool = False,
    report_extra: dict | None = None,
) -> BuildResult:
    """Build a corpus from ``sources`` into ``out_dir`` and return its counts and report.

    ``out_dir`` is an :class:`~animal_reid.manifest.OutputFolder`: missing or empty, or holding a corpus built
    here with ``overwrite`` true (:class:`~animal_reid.manifest.OutputError` otherwise, and when it holds the
    current folder, ``data_root`` or a source). It is locked for the whole build (``download`` included); the
    corpus is written into a staging folder inside it and replaces the files of the previous manifest only once
    complete: a failed build, or one with no valid rows (:class:`BuildError`), leaves ``out_dir`` as it was.
    ``report_extra`` is added to the build report.
    """
    marks = {"start": time.perf_counter()}
    data_root = Path(data_root) if data_root is not None else default_data_root()
    out_dir = Path(out_dir)
    if out_dir.is_symlink():  # replace the files of the folder it points at, not the link
        out_dir = out_dir.resolve()
    keep = [data_root, *(s.location(data_root) for s in sources)]
    split = split or SplitConfig()
    min_per_identity = default_min_per_identity(split, min_per_identity)
    with OutputFolder(out_dir, tool=TOOL, overwrite=overwrite, what="--out", keep=keep) as out:
        if download:
            download_missing(sources, data_root, progress)
        check_available(sources, data_root)
        records, read = read_sources(sources, data_root)
        marks["read"] = time.perf_counter()
        result = validate(records, min_per_identity=min_per_identity, workers=workers, progress=progress)
        marks["validated"] = time.perf_counter()
        rows, capped, notes = split_rows(result, split, data_root)
        if not rows:
            raise BuildError(_no_rows_message(len(records), result, out_dir))
        report = {
            **rows_report(read, data_root, len(records), result, len(capped), len(rows), max_problems_listed),
            "split": split_report(split, min_per_identity, notes, rows),
            **(report_extra or {}),
        }
        marks["write"], marks["n"] = time.perf_counter(), len(records)
        opts = {"max_shard_bytes": max_shard_bytes, "progress": progress, "workers": workers}
        counts = write_staged(out, rows, [s.info for s in sources], report, marks, opts)
    return BuildResult(out_dir, counts, report, len(rows), report["timing"]["seconds"], result.problems)


def _split_description(split: SplitConfig) -> str:
    if split.policy == "open":
        text = (
            "Open set (identity-disjoint): whole identities go to one split, and identities that share an "
            "encounter go together, so no identity and no encounter appears in two splits; test identities "
            "are never seen in training."
        )
    else:
        text = (
            "Closed set (MegaDescriptor protocol): test identities also have training images; each identity's "
            "encounters are dealt to test / validation / train, so no encounter straddles splits (an identity "
            "with one encounter stays in train). Lion and nyala reproduce the published MegaDescriptor "
            "splits exactly: benchmark test = `test` (queries), benchmark train = `train` + `validation` "
            "(the database); validation holds whole encounters of identities with at least 3 encounters in "
            "benchmark train and none in benchmark test."
        )
    if split.leave_out:
        text += f" Left-out species ({', '.join(split.leave_out)}) are entirely in `test`; the others use no test split."
    return text


def summary_table(result: BuildResult) -> str:
    """A plain-text table of images / identities per config and split, skipped rows and speed."""
    header = f"{'config':<16}{'images':>8}{'ids':>7}" + "".join(
        f"{s:>18}" for s in ("train", "validation", "test")
    )
    lines = [header, "-" * len(header)]
    for key, c in result.counts.items():
        cells = "".join(
            f"{c[s]['images']:>10} /{c[s]['identities']:>6}" for s in ("train", "validation", "test")
        )
        lines.append(f"{key:<16}{c['images']:>8}{c['identities']:>7}{cells}")
    rep = result.report
    lines.append("")
    lines.append(f"read {rep['rows_read']} rows, wrote {rep['rows_written']}, capped {rep['rows_capped']}")
    if rep["skipped_by_reason"]:
        lines.append("skipped: " + ", ".join(f"{k}: {v}" for k, v in rep["skipped_by_reason"].items()))
    for name, r in rep["sources"].items():
        flag = (
            ""
            if r["matches_reported"]
            else "  (source reports {} / {})".format(r["reported_images"], r["reported_identities"])
        )
        lines.append(f"source {name:<14}{r['images']:>7} images {r['identities']:>6} identities{flag}")
    for k, v in rep.get("warnings", {}).items():
        lines.append(f"warning: {k}: {v}")
    t = rep["timing"]
    lines.append(
        f"time {t['seconds']} s ({t['images_per_second']} images/s, {t['decode_workers']} decode workers) -> {result.out_dir}"
    )
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors raise :class:`UsageError` (``main`` prints them as one line)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def _read_config(path: Path) -> dict:
    """The ``--config`` YAML file as a mapping; :class:`UsageError` if it is missing or not one."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--config {path}: {getattr(err, 'strerror', None) or err}") from err
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"--config {path} is not valid YAML ({' '.join(str(err).split())})") from err
    if not isinstance(values, dict):
        raise UsageError(
            f"--config {path}: expected a mapping of option: value, got a {type(values).__name__}"
        )
    return values


def _add_input_output_options(p: argparse.ArgumentParser) -> None:
    """``--sources``, ``--coco``, ``--miewid``, ``--data-root``, ``--out``, ``--overwrite`` and ``--download``."""
    p.add_argument(
        "--sources",
        nargs="+",
        default=None,
        help=f"source names or groups; groups: {', '.join(f'{k}={list(v)}' for k, v in SOURCE_GROUPS.items())}; "
        f"sources: {', '.join(sorted(SOURCES))} (default: synthetic, or none when --coco / --miewid is given)",
    )
    p.add_argument(
        "--coco",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="an extra Wildbook/LILA COCO export (folder with annotations/ and images/), relative to the "
        "current folder",
    )
    p.add_argument(
        "--miewid",
        action="append",
        default=[],
        metavar="NAME=CSV",
        help="an extra MiewID CSV (or folder of CSVs), relative to the current folder",
    )
    p.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where sources live (default $REID_DATA_ROOT or ../shared/data)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder of the corpus (new, empty, or holding a corpus built here)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of the corpus already in --out, and only those (its manifest lists them; "
        "files you added are kept), once the new one is complete",
    )
    p.add_argument(
        "--download", action="store_true", help="download (resumably) and extract sources that are missing"
    )


def _apply_config(p: argparse.ArgumentParser, config: Path) -> None:
    """Make the values of the ``--config`` YAML file the parser's defaults (:class:`UsageError` for a key that
    is no option)."""
    values = _read_config(config)
    dests = {a.dest for a in p._actions}
    defaults = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in dests:
            raise UsageError(f"{config}: unknown option {key!r}; expected one of {sorted(dests - {'help'})}")
        defaults[dest] = Path(value) if dest in ("out", "data_root") and value is not None else value
    p.set_defaults(**defaults)
    for action in p._actions:  # a required option given in the file is no longer required
        if action.dest in defaults:
            action.required = False


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``--config FILE.yaml`` sets defaults (keys = option names, ``-`` or ``_``).

    Raises :class:`UsageError` for a bad command line or config file."""
    pre = _Parser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    p = _Parser(
        prog="python -m data_scripts.build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_input_output_options(p)
    p.add_argument(
        "--split",
        choices=POLICIES,
        default="open",
        help="open (identity-disjoint) or closed (MegaDescriptor)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fractions", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST")
    )
    p.add_argument(
        "--min-per-identity", type=int, default=None, help="default: 2 for open set, 1 for closed set"
    )
    p.add_argument("--cap-per-identity", type=int, default=None)
    p.add_argument(
        "--leave-out",
        nargs="*",
        default=[],
        metavar="SPECIES",
        help=f"species keys held out entirely as test ({', '.join(SPECIES)})",
    )
    p.add_argument(
        "--no-benchmark-splits",
        action="store_true",
        help="closed set: do not reproduce the LionData/NyalaData benchmark files",
    )
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="decode processes")
    p.add_argument("--max-shard-mb", type=int, default=DEFAULT_MAX_SHARD_BYTES // (1024 * 1024))
    p.add_argument("--synthetic-patterns", nargs="+", default=list(SyntheticConfig.patterns))
    p.add_argument("--synthetic-identities", type=int, default=SyntheticConfig.identities_per_species)
    p.add_argument("--synthetic-images", type=int, default=SyntheticConfig.images_per_identity)
    p.add_argument("--synthetic-encounters", type=int, default=SyntheticConfig.encounters_per_identity)
    p.add_argument("--synthetic-size", type=int, default=SyntheticConfig.image_size)
    p.add_argument(
        "--push-to-hub", metavar="REPO_ID", default=None, help="upload the built folder as a Hub dataset"
    )
    p.add_argument("--private", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks on errors")
    p.add_argument(
        "--config", type=Path, default=None, help="YAML file of option defaults (the command line wins)"
    )
    if known.config is not None:
        _apply_config(p, known.config)
    return p.parse_args(argv)


def _named(spec: str, flag: str) -> tuple[str, str]:
    name, sep, path = str(spec).partition("=")
    if not (sep and name and path):
        raise UsageError(f"{flag} expects NAME=PATH, got {spec!r}")
    return name, path


def _input(spec: str, flag: str, data_root: Path) -> tuple[str, Path]:
    """``NAME=PATH`` of ``--coco`` / ``--miewid`` as the name and the absolute path: a relative path is read from
    the current folder, like every path of the command line; a missing one is a :class:`UsageError` naming
    what was typed and where it was looked for (and the data root's copy, where the path was once read)."""
    name, typed = _named(spec, flag)
    path = Path(typed).expanduser()
    full = path if path.is_absolute() else Path.cwd() / path
    if full.exists():
        return name, full
    text = f"{flag} {spec}: {typed} not found (looked for {full}"
    text += ")" if path.is_absolute() else ", relative to the current folder)"
    if not path.is_absolute() and (data_root / path).exists():
        text += f"; {data_root / path} exists: pass {flag} {name}={data_root / path} to read it"
    raise UsageError(text)


def _configs(args: argparse.Namespace) -> tuple[SyntheticConfig, SplitConfig]:
    """The synthetic and split settings of the command line; :class:`UsageError` for a bad value."""
    if args.min_per_identity is not None and args.min_per_identity < 1:
        raise UsageError(f"--min-per-identity must be >= 1, got {args.min_per_identity}")
    if args.max_shard_mb < 1:
        raise UsageError(f"--max-shard-mb must be >= 1, got {args.max_shard_mb}")
    unknown = sorted(set(args.leave_out) - set(SPECIES))
    if unknown:
        raise UsageError(f"--leave-out: unknown species {unknown}; expected keys among {sorted(SPECIES)}")
    try:
        synth = SyntheticConfig(
            patterns=tuple(args.synthetic_patterns),
            identities_per_species=args.synthetic_identities,
            images_per_identity=args.synthetic_images,
            encounters_per_identity=args.synthetic_encounters,
            image_size=args.synthetic_size,
            seed=args.seed,
        )
        split = SplitConfig(
            policy=args.split,
            seed=args.seed,
            fractions=tuple(args.fractions),
            cap_per_identity=args.cap_per_identity,
            leave_out=tuple(args.leave_out),
            use_benchmarks=not args.no_benchmark_splits,
        )
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from err
    return synth, split


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line; an unexpected kind of error is named and points at ``-v``."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    text = "; ".join(line.strip() for line in str(text).splitlines() if line.strip()) or type(err).__name__
    if not isinstance(err, OSError | ValueError | LookupError | RuntimeError | OutputError):
        text = f"{type(err).__name__}: {text} (run with -v for the traceback)"
    return text


def _fail(err: BaseException, status: int, verbose: bool) -> NoReturn:
    if verbose:
        traceback.print_exception(err)
    print(f"error: {_one_line(err)}", file=sys.stderr)
    raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> BuildResult | None:
    """The command line: build, print the summary, optionally push.

    Returns the :class:`BuildResult` when given ``argv``, and None when it reads ``sys.argv`` (so that the
    ``animal-reid-build-corpus`` console script exits 0). An error prints one line, ``error: <message>``,
    to stderr and exits with status 2 (bad arguments, an output folder it must not replace) or 1 (the build
    failed), without a traceback unless ``-v`` / ``--verbose`` is given.
    """
    raw = sys.argv[1:] if argv is None else list(argv)
    verbose = any(a in ("-v", "--verbose") for a in raw)
    try:
        args = parse_args(raw)
        verbose = verbose or bool(args.verbose)
        result = run(args)
    except (UsageError, OutputError) as err:
        _fail(err, 2, verbose)
    except Exception as err:  # every failure reaches the user as one line; -v shows where it came from
        _fail(err, 1, verbose)
    return result if argv is not None else None


def run(args: argparse.Namespace) -> BuildResult:
    """Build from parsed arguments (errors raise; :func:`main` turns them into one line and an exit status)."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    require_extra("animal-reid-build-corpus", "data")  # pyarrow and datasets write the corpus
    data_root = args.data_root or default_data_root()
    synth_cfg, split = _configs(args)
    if args.sources is None:  # the default: synthetic, unless the command line names its own files
        args.sources = [] if args.coco or args.miewid else ["synthetic"]
    sources = resolve_sources(args.sources)
    sources = [
        Synthetic(synth_cfg, workers=args.workers, progress=not args.no_progress)
        if isinstance(s, Synthetic)
        else s
        for s in sources
    ]
    sources += [coco_source(*_input(s, "--coco", data_root)) for s in args.coco]
    sources += [miewid_source(*_input(s, "--miewid", data_root)) for s in args.miewid]
    cli = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result = build(
        sources,
        args.out,
        data_root=data_root,
        split=split,
        min_per_identity=args.min_per_identity,
        workers=args.workers,
        progress=not args.no_progress,
        max_shard_bytes=args.max_shard_mb * 1024 * 1024,
        overwrite=args.overwrite,
        download=args.download,
        report_extra={"cli": cli},
    )
    print(summary_table(result))
    if args.push_to_hub:
        info = push_to_hub(args.out, args.push_to_hub, private=args.private)
        print(f"pushed to {args.push_to_hub}: {info}")
    return result


def _cli() -> None:
    main()


if __name__ == "__main__":
    _cli()
