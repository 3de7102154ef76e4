"""Build a corpus: read sources, validate, split, write Parquet + card + report, optionally push.

Command line (``python -m data_scripts.build --help``)::

    python -m data_scripts.build --sources synthetic --out corpus/synthetic          # no download needed
    python -m data_scripts.build --sources real --out corpus/real --split closed     # the six in ../shared/data
    python -m data_scripts.build --sources whaleshark --download --out corpus/ws     # LILA download first
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .schema import SPECIES
from .sources import (
    LOCAL_SOURCES,
    SOURCES,
    Source,
    Synthetic,
    SyntheticConfig,
    coco_source,
    get_source,
    miewid_source,
)
from .splits import POLICIES, Item, SplitConfig, apply_cap, assign_splits, check_disjoint
from .validate import validate
from .write import DEFAULT_MAX_SHARD_BYTES, OutRow, push_to_hub, write_corpus

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_GROUPS: dict[str, tuple[str, ...]] = {
    "real": LOCAL_SOURCES,
    "lila": ("whaleshark", "gzgc", "leopard", "hyena", "beluga"),
}


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
            src = get_source(member)
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
) -> BuildResult:
    """Build a corpus from ``sources`` into ``out_dir`` and return its counts and report."""
    t0 = time.perf_counter()
    data_root = Path(data_root) if data_root is not None else default_data_root()
    split = split or SplitConfig()
    if min_per_identity is None:
        # open set: an identity needs a query and a match; closed set: a lone image is still a database entry
        # (and the benchmark files hold such identities)
        min_per_identity = 2 if split.policy == "open" else 1
    if min_per_identity < 1:
        raise ValueError(f"min_per_identity must be >= 1, got {min_per_identity}")
    missing = [s.info.name for s in sources if not s.available(data_root)]
    if missing:
        raise FileNotFoundError(
            f"sources {missing} not found under {data_root}: expected "
            + ", ".join(str(get_source(m).location(data_root)) if m in SOURCES else m for m in missing)
            + " (set --data-root / REID_DATA_ROOT, or --download)"
        )
    records = []
    read: dict[str, dict] = {}
    for src in sources:
        t = time.perf_counter()
        recs = list(src.records(data_root))
        records.extend(recs)
        info = src.info
        n_img, n_id = len(recs), len({r.identity for r in recs if r.identity})
        read[info.name] = {
            "images": n_img,
            "identities": n_id,
            "reported_images": info.reported_images,
            "reported_identities": info.reported_identities,
            "matches_reported": (info.reported_images in (None, n_img))
            and (info.reported_identities in (None, n_id)),
            "species": sorted({r.species for r in recs}),
            "scan_seconds": round(time.perf_counter() - t, 3),
        }
        if not read[info.name]["matches_reported"]:
            logger.warning(
                "%s: read %d images / %d identities, the source reports %s / %s",
                info.name,
                n_img,
                n_id,
                info.reported_images,
                info.reported_identities,
            )
    t_read = time.perf_counter()
    result = validate(records, min_per_identity=min_per_identity, workers=workers, progress=progress)
    t_valid = time.perf_counter()

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
    rows: list[OutRow] = []
    for it in kept:
        v = by_id[it.image_id]
        rec = v.record
        rows.append(
            OutRow(
                data=v.data,
                file_name=v.file_name,
                image_id=rec.image_id,
                identity=rec.identity,
                species=rec.species,
                viewpoint=rec.viewpoint,
                encounter=rec.encounter,
                bbox=rec.bbox,
                theta=rec.theta,
                source=rec.source,
                license=rec.license,
                split=assignment[it.image_id],
            )
        )
    disjoint = {}
    for species in sorted({r.species for r in rows}):
        disjoint[species] = check_disjoint(
            [(r.identity, r.encounter, r.split) for r in rows if r.species == species]
        )
    report = {
        "sources": read,
        "data_root": str(data_root),
        "rows_read": len(records),
        "rows_valid": len(result.rows),
        "rows_capped": len(capped),
        "rows_written": len(rows),
        "skipped_by_reason": result.skipped_by_reason(),
        "skipped_by_source": result.skipped_by_source(),
        "skipped": [asdict(p) for p in result.problems[:max_problems_listed]],
        "skipped_listed": min(len(result.problems), max_problems_listed),
        "warnings": result.warnings,
        "duplicates_across_identities": result.duplicates_across_identities,
        "split": {
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
        },
    }
    t_write0 = time.perf_counter()
    counts = write_corpus(rows, Path(out_dir), [s.info for s in sources], report, max_shard_bytes, progress)
    seconds = time.perf_counter() - t0
    report["timing"] = {
        "seconds": round(seconds, 2),
        "read_seconds": round(t_read - t0, 2),
        "validate_decode_seconds": round(t_valid - t_read, 2),
        "write_seconds": round(time.perf_counter() - t_write0, 2),
        "images_per_second": round(len(records) / max(seconds, 1e-9), 1),
        "decode_workers": workers,
    }
    # rewrite the report with the timing (the card does not carry timings, so it stays reproducible)
    (Path(out_dir) / "build_report.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return BuildResult(Path(out_dir), counts, report, len(rows), seconds, result.problems)


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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``--config FILE.yaml`` sets defaults (keys = option names, ``-`` or ``_``)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    p = argparse.ArgumentParser(
        prog="python -m data_scripts.build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sources",
        nargs="+",
        default=["synthetic"],
        help=f"source names or groups; groups: {', '.join(f'{k}={list(v)}' for k, v in SOURCE_GROUPS.items())}; "
        f"sources: {', '.join(sorted(SOURCES))} (default: synthetic)",
    )
    p.add_argument(
        "--coco",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="an extra Wildbook/LILA COCO export (folder with annotations/ and images/)",
    )
    p.add_argument(
        "--miewid",
        action="append",
        default=[],
        metavar="NAME=CSV",
        help="an extra MiewID CSV (or folder of CSVs)",
    )
    p.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where sources live (default $REID_DATA_ROOT or ../shared/data)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder of the corpus")
    p.add_argument(
        "--download", action="store_true", help="download (resumably) and extract sources that are missing"
    )
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
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument(
        "--config", type=Path, default=None, help="YAML file of option defaults (the command line wins)"
    )
    if known.config is not None:
        import yaml

        values = yaml.safe_load(known.config.read_text()) or {}
        dests = {a.dest for a in p._actions}
        defaults = {}
        for key, value in values.items():
            dest = key.replace("-", "_")
            if dest not in dests:
                raise SystemExit(
                    f"{known.config}: unknown option {key!r}; expected one of {sorted(dests - {'help'})}"
                )
            defaults[dest] = Path(value) if dest in ("out", "data_root") and value is not None else value
        p.set_defaults(**defaults)
        for action in p._actions:  # a required option given in the file is no longer required
            if action.dest in defaults:
                action.required = False
    return p.parse_args(argv)


def _named(spec: str, flag: str) -> tuple[str, str]:
    if "=" not in spec:
        raise SystemExit(f"{flag} expects NAME=PATH, got {spec!r}")
    name, path = spec.split("=", 1)
    return name, path


def main(argv: Sequence[str] | None = None) -> BuildResult:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    data_root = args.data_root or default_data_root()
    try:
        sources = resolve_sources(args.sources)
    except KeyError as err:
        raise SystemExit(f"error: {err.args[0]}; groups: {sorted(SOURCE_GROUPS)}") from None
    synth_cfg = SyntheticConfig(
        patterns=tuple(args.synthetic_patterns),
        identities_per_species=args.synthetic_identities,
        images_per_identity=args.synthetic_images,
        encounters_per_identity=args.synthetic_encounters,
        image_size=args.synthetic_size,
        seed=args.seed,
    )
    sources = [
        Synthetic(synth_cfg, workers=args.workers, progress=not args.no_progress)
        if isinstance(s, Synthetic)
        else s
        for s in sources
    ]
    sources += [coco_source(*_named(s, "--coco")) for s in args.coco]
    sources += [miewid_source(*_named(s, "--miewid")) for s in args.miewid]
    if args.download:
        for src in sources:
            if not src.available(data_root):
                logger.info("downloading %s into %s", src.info.name, data_root)
                src.download(data_root, progress=not args.no_progress)
    split = SplitConfig(
        policy=args.split,
        seed=args.seed,
        fractions=tuple(args.fractions),
        cap_per_identity=args.cap_per_identity,
        leave_out=tuple(args.leave_out),
        use_benchmarks=not args.no_benchmark_splits,
    )
    result = build(
        sources,
        args.out,
        data_root=data_root,
        split=split,
        min_per_identity=args.min_per_identity,
        workers=args.workers,
        progress=not args.no_progress,
        max_shard_bytes=args.max_shard_mb * 1024 * 1024,
    )
    result.report["cli"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (Path(args.out) / "build_report.json").write_text(
        json.dumps(result.report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
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
