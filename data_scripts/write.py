"""Write a built corpus: Parquet shards with embedded image bytes, dataset card, build report; push it.

Layout (the "Corpus" contract in docs/CONTRACTS.md)::

    README.md                                   dataset card, YAML ``configs:`` (one per species + ``all``)
    build_report.json                           what was read, skipped (and why), split and counted
    data/<species>/<split>-NNNNN-of-NNNNN.parquet

The ``all`` config reads every species' shards through a glob (``data/*/<split>-*``): nothing is stored twice.
A split with no rows in a config has no shard and is not listed for that config (``datasets`` cannot load
an empty split from files); the splitter keeps every split with a positive fraction non-empty whenever a
species has enough identities (open set) or encounters (closed set).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from .schema import COLUMNS, SPECIES, SPLITS, hf_features
from .sources.base import SourceInfo

if TYPE_CHECKING:  # pyarrow and yaml (the data extra) are imported where used: --help needs neither
    import pyarrow as pa

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_BYTES = 256 * 1024 * 1024


@dataclass
class OutRow:
    """One row of the corpus as written (``data`` is the embedded image file)."""

    data: bytes
    file_name: str
    image_id: str
    identity: str
    species: str
    viewpoint: str | None
    encounter: str
    bbox: tuple[float, float, float, float] | None
    theta: float
    source: str
    license: str
    split: str


def arrow_schema() -> pa.Schema:
    """The Arrow schema with the ``datasets`` features in its metadata (Image column, float32 bbox list)."""
    return hf_features().arrow_schema


def to_table(rows: Sequence[OutRow], schema: pa.Schema | None = None) -> pa.Table:
    import pyarrow as pa

    schema = schema or arrow_schema()
    columns = {
        "image": [{"bytes": r.data, "path": r.file_name} for r in rows],
        "image_id": [r.image_id for r in rows],
        "identity": [r.identity for r in rows],
        "species": [r.species for r in rows],
        "species_common": [SPECIES[r.species].common for r in rows],
        "species_scientific": [SPECIES[r.species].scientific for r in rows],
        "viewpoint": [r.viewpoint for r in rows],
        "encounter": [r.encounter for r in rows],
        "bbox": [list(r.bbox) if r.bbox is not None else None for r in rows],
        "theta": [float(r.theta) for r in rows],
        "source": [r.source for r in rows],
        "license": [r.license for r in rows],
        "split": [r.split for r in rows],
    }
    arrays = [pa.array(columns[name], type=schema.field(name).type) for name in COLUMNS]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_shards(
    rows: Sequence[OutRow],
    out_dir: Path,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = False,
) -> dict:
    """Write ``data/<species>/<split>-*.parquet``; return ``{species: {split: [file names]}}``."""
    import pyarrow.parquet as pq

    schema = arrow_schema()
    grouped: dict[str, dict[str, list[OutRow]]] = defaultdict(lambda: {s: [] for s in SPLITS})
    for r in rows:
        grouped[r.species][r.split].append(r)
    written: dict[str, dict[str, list[str]]] = {}
    for species in tqdm(sorted(grouped), desc="write parquet", unit="species", disable=not progress):
        folder = Path(out_dir) / "data" / species
        with naming(folder):
            folder.mkdir(parents=True, exist_ok=True)
        written[species] = {}
        for split in SPLITS:
            part = sorted(grouped[species][split], key=lambda r: r.image_id)
            if not part:
                written[species][split] = []
                continue
            shards: list[list[OutRow]] = [[]]
            size = 0
            for r in part:
                if shards[-1] and size + len(r.data) > max_shard_bytes:
                    shards.append([])
                    size = 0
                shards[-1].append(r)
                size += len(r.data)
            names = []
            for i, shard in enumerate(shards):
                name = f"{split}-{i:05d}-of-{len(shards):05d}.parquet"
                with naming(folder / name):
                    pq.write_table(to_table(shard, schema), folder / name, row_group_size=500)
                names.append(f"data/{species}/{name}")
            written[species][split] = names
    return written


def _counts(rows: Sequence[OutRow]) -> dict:
    out: dict[str, dict] = {}
    for key, subset in [
        ("all", rows),
        *((s, [r for r in rows if r.species == s]) for s in sorted({r.species for r in rows})),
    ]:
        entry = {"images": len(subset), "identities": len({r.identity for r in subset})}
        for split in SPLITS:
            part = [r for r in subset if r.split == split]
            entry[split] = {
                "images": len(part),
                "identities": len({r.identity for r in part}),
                "encounters": len({r.encounter for r in part}),
            }
        out[key] = entry
    return out


def card_configs(written: dict[str, dict[str, list[str]]]) -> list[dict]:
    """YAML ``configs:``: ``all`` (default) globs every species' shards; one config per species."""
    present = [split for split in SPLITS if any(files.get(split) for files in written.values())]
    configs = [
        {
            "config_name": "all",
            "default": True,
            "data_files": [{"split": split, "path": f"data/*/{split}-*.parquet"} for split in present],
        }
    ]
    for sp in sorted(written):
        configs.append(
            {
                "config_name": sp,
                "data_files": [
                    {"split": split, "path": f"data/{sp}/{split}-*.parquet"}
                    for split in SPLITS
                    if written[sp].get(split)
                ],
            }
        )
    return configs


def render_card(counts: dict, sources: Sequence[SourceInfo], report: dict) -> str:
    """The dataset card: YAML metadata (configs, licence, tags) and a Markdown body with counts and citations."""
    import yaml

    species = [k for k in counts if k != "all"]
    licenses = sorted({s.license for s in sources})
    meta = {
        "pretty_name": "Multispecies animal re-identification corpus",
        "license": "other",
        "license_details": "; ".join(f"{s.name}: {s.license}" for s in sources),
        "task_categories": ["image-feature-extraction", "image-classification"],
        "tags": ["animal-re-identification", "wildlife", "re-id", "metric-learning"],
        "size_categories": [_size_category(counts.get("all", {}).get("images", 0))],
        "configs": card_configs(report["files"]),
    }
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [
        "# Multispecies animal re-identification corpus",
        "",
        "Photos of individually known animals from several public re-ID sources, in one schema: each row is an",
        "image (bytes embedded), its identity namespaced as `<source>:<species>:<original id>`, species (key,",
        "common and scientific name), viewpoint, encounter (the sighting that must not straddle splits),",
        "bounding box `[x, y, w, h]` and `theta` when the source has them, source and licence.",
        "Built by `python -m data_scripts.build` of the `animal-reid` project.",
        "",
        "```python",
        "from datasets import load_dataset",
        f'ds = load_dataset("<this repo or folder>", "{species[0] if species else "all"}")  # or "all"',
        "```",
        "",
        "## Splits",
        "",
        f"Policy: **{report['split']['policy']}**, seed {report['split']['seed']}, fractions "
        f"{report['split']['fractions']} (train/validation/test), minimum {report['split']['min_per_identity']} "
        f"images per identity, cap {report['split']['cap_per_identity']}"
        + (
            f", left out (all test): {', '.join(report['split']['leave_out'])}"
            if report["split"]["leave_out"]
            else ""
        )
        + ".",
        "",
    ]
    lines += [report["split"]["description"], ""]
    lines += [
        "## Counts per config",
        "",
        "| config | species | images | identities | train img / id | validation img / id | test img / id |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key in ["all", *species]:
        c = counts[key]
        name = "all species" if key == "all" else f"{SPECIES[key].common} (*{SPECIES[key].scientific}*)"
        cells = " | ".join(f"{c[s]['images']} / {c[s]['identities']}" for s in SPLITS)
        lines.append(f"| `{key}` | {name} | {c['images']} | {c['identities']} | {cells} |")
    lines += [
        "",
        "## Sources",
        "",
        "| source | species | licence | version | reported images / identities | read |",
        "|---|---|---|---|---|---|",
    ]
    for s in sources:
        read = report["sources"].get(s.name, {})
        reported = f"{s.reported_images or '?'} / {s.reported_identities or '?'}"
        lines.append(
            f"| [{s.name}]({s.url}) | {', '.join(s.species)} | {s.license} | {s.version} | {reported} | "
            f"{read.get('images', '?')} / {read.get('identities', '?')} |"
        )
    skipped = report.get("skipped_by_reason", {})
    lines += [
        "",
        "Rows skipped by validation: " + (", ".join(f"{k}: {v}" for k, v in skipped.items()) or "none") + ".",
    ]
    lines += ["", "## Licences", ""]
    lines += [f"- {lic}: " + ", ".join(s.name for s in sources if s.license == lic) for lic in licenses]
    lines += [
        "",
        "Each row's `license` column carries its source's licence. Several sources state no licence or forbid",
        "redistribution: do not publish a corpus built from them without the owners' permission.",
        "",
        "## Citation",
        "",
        "Cite every source you use:",
        "",
    ]
    for s in sources:
        lines += [f"**{s.name}**", "", "```bibtex", s.citation.strip(), "```", ""]
    return "\n".join(lines) + "\n"


def _size_category(n: int) -> str:
    for limit, label in [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ]:
        if n < limit:
            return label
    return "n>1M"


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """An :class:`OSError` raised while writing ``path`` carries it as ``filename`` (pyarrow's do not), so the
    message can name the file (:func:`animal_reid.manifest.describe_os_error`)."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            err.filename = str(path)
        raise


def write_report(out_dir: Path, report: dict) -> None:
    """``build_report.json``."""
    path = Path(out_dir) / "build_report.json"
    with naming(path):
        path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_corpus(
    rows: Sequence[OutRow],
    out_dir: Path,
    sources: Sequence[SourceInfo],
    report: dict,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = False,
) -> dict:
    """Write shards, card and report into ``out_dir``, a new or empty folder (the builder passes the staging
    folder of its output, see :class:`animal_reid.manifest.OutputFolder`); return the counts. A folder that
    already holds shards is refused: nothing is deleted here. An :class:`OSError` names the file it was writing."""
    out_dir = Path(out_dir)
    old = sorted((out_dir / "data").glob("*/*.parquet"))
    if old:
        raise FileExistsError(f"{out_dir} already holds shards ({old[0]}): write a corpus into a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    report["files"] = write_shards(rows, out_dir, max_shard_bytes, progress)
    counts = _counts(rows)
    report["counts"] = counts
    card = out_dir / "README.md"
    with naming(card):
        card.write_text(render_card(counts, sources, report), encoding="utf-8")
    write_report(out_dir, report)
    return counts


def corpus_files(out_dir: Path) -> list[str]:
    """The files of a built corpus, relative to its folder: those its manifest lists (files a user put beside
    the corpus, the manifest, lock and staging folders are not the corpus); without a manifest (a corpus built
    before manifests existed) the card, the report and the shards."""
    from animal_reid.manifest import Manifest

    out_dir = Path(out_dir)
    manifest = Manifest.read(out_dir)
    if manifest is not None:
        return sorted(manifest.files)
    names = ["README.md", "build_report.json"]
    names += [p.relative_to(out_dir).as_posix() for p in sorted((out_dir / "data").glob("*/*.parquet"))]
    return [n for n in names if (out_dir / n).is_file()]


def push_to_hub(
    out_dir: Path, repo_id: str, *, private: bool = False, token: str | None = None, create_pr: bool = False
):
    """Upload a built corpus as a Hub dataset repository: the files of :func:`corpus_files` only (card, report
    and shards), never the lock, the staging folders, the manifest or files a user put beside the corpus."""
    from huggingface_hub import HfApi

    from animal_reid.manifest import LOCK_NAME, MANIFEST_NAME, STAGING_PREFIX

    out_dir = Path(out_dir)
    for required in ("README.md", "data"):
        if not (out_dir / required).exists():
            raise FileNotFoundError(f"{out_dir} is not a built corpus: expected {required} in it")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=str(out_dir),
        repo_id=repo_id,
        repo_type="dataset",
        commit_message="Upload multispecies re-ID corpus",
        create_pr=create_pr,
        allow_patterns=corpus_files(out_dir),
        ignore_patterns=[LOCK_NAME, MANIFEST_NAME, f"{STAGING_PREFIX}*", f"{STAGING_PREFIX}*/**"],
    )
