"""Any dataset of the ``wildlife-datasets`` library as a source: its metadata table becomes corpus records.

``wildlife-datasets`` (PyPI, AGPL-3.0) has loaders for about 60 re-ID datasets, and most users of the field
download their data with it. :func:`wildlife_source` wraps one of its dataset classes (``MacaqueFaces``,
``DogFaceNet``, ...) reading a folder in place: each row of the class's metadata table (``path``, ``identity``,
``bbox``, ``date``, ``orientation``, ``species``, ``video``) becomes a :class:`~data_scripts.schema.Record`, and
the build validates, splits and writes it like any declaration here. Licence, citation, url and reported counts
come from the arguments, else from the class's ``summary``; the class's own label fixes apply, as in the library
(``dataset_kwargs={"update_wrong_labels": False}`` reads the labels as published). The library is optional (the
``wildlife`` extra plus ``pip install --no-deps wildlife-datasets``: see data_scripts/README.md) and imported only
when used.

Columns read, per row:

- ``path``: relative to the dataset folder (absolute paths must lie inside it); the record's image id is that
  path, or ``<path>#<image_id>`` where several rows share one photo (several animals);
- ``identity``: an integer or text; the class's ``unknown_name`` (``"unknown"``) is an unidentified animal, skipped;
- ``bbox``: ``[x, y, w, h]`` (a list, an array or its JSON text); missing: the whole photo;
- ``encounter``, else ``video``, else ``date`` (reduced to the day): the encounter, per identity; none: each
  photo is its own encounter;
- ``orientation``: the viewpoint; ``species``: the species (else the one declared or read from the summary).

A row that cannot be read (no path, no identity, a box that is not 4 numbers, a file that is not there) is skipped
and reported naming ``<Class> row <i>``; rows that disagree about one photo are reported by validation naming
both rows; a class that cannot read the folder at all stops the build with one line naming it.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import numbers
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ..schema import SPECIES, Record, normalize_species
from ..validate import MALFORMED_ROW, MISSING_FILE
from .base import UNIDENTIFIED, Source, SourceError, SourceInfo

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[wildlife]" && pip install --no-deps "wildlife-datasets>=1.0.9" (data_scripts/README.md)'
ENCOUNTER_COLUMNS = ("encounter", "video", "date")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _library():
    """``wildlife_datasets.datasets``, or :class:`SourceError` saying how to install it."""
    try:
        return importlib.import_module("wildlife_datasets.datasets")
    except ImportError as err:
        raise SourceError(f"wildlife-datasets is not importable ({err}): {INSTALL_HINT}") from err


def dataset_class(dataset) -> type:
    """A ``wildlife_datasets`` dataset class from the class itself or its name (``"MacaqueFaces"``)."""
    if not isinstance(dataset, str):
        return dataset
    library = _library()
    cls = getattr(library, dataset, None)
    if not isinstance(cls, type):
        names = sorted(getattr(c, "__name__", str(c)) for c in getattr(library, "names_all", []))
        raise SourceError(f"wildlife-datasets has no dataset class {dataset!r}; it has {names}")
    return cls


def species_key(text) -> str:
    """A vocabulary key for a species as the library writes it: a key or alias (``"dog"``), or a common or
    scientific name (``"rhesus macaque"``, ``"Megaptera novaeangliae"``); else the normalised text (which
    validation reports as an unknown species)."""
    key = normalize_species(str(text))
    if key in SPECIES:
        return key
    wanted = str(text).strip().lower()
    for sp in SPECIES.values():
        if wanted in (sp.common.lower(), sp.scientific.lower()):
            return sp.key
    return key


def _citation(cls: type, summary: Mapping, version: str) -> str:
    key = re.sub(r"[^A-Za-z0-9_:-]", "", str(summary.get("cite") or cls.__name__)) or cls.__name__
    where = summary.get("publication_url") or summary.get("url") or ""
    return (
        f"@misc{{{key},\n  title        = {{{cls.__name__}}},\n"
        + (f"  howpublished = {{\\url{{{where}}}}},\n" if where else "")
        + f"  note         = {{read with wildlife-datasets {version} ({cls.__name__}); cite the dataset's "
        f"publication (key {key} in wildlife-datasets' references)}}\n}}"
    )


def _library_version() -> str:
    try:
        from importlib.metadata import version

        return version("wildlife-datasets")
    except Exception:  # not installed as a distribution (a source checkout): the version is unknown
        return "unknown version"


def wildlife_source(
    dataset,
    name: str | None = None,
    folder: str | Path | None = None,
    *,
    species: str | Iterable[str] | None = None,
    license: str | None = None,
    citation: str | None = None,
    url: str | None = None,
    version: str | None = None,
    reported_images: int | None = None,
    reported_identities: int | None = None,
    label_fixes: Mapping[str, str] | None = None,
    exclude: Iterable[str] = (),
    exclude_reason: str = "excluded by the source declaration",
    dataset_kwargs: Mapping | None = None,
) -> WildlifeDatasetsSource:
    """A source (not registered) reading ``folder`` (relative to the data root, default the class name) with the
    ``wildlife_datasets`` class ``dataset`` (the class or its name). ``name`` defaults to
    ``wildlife_<class name in lower case>``. Every metadata argument left out comes from the class's ``summary``
    (``licenses`` and ``licenses_url``, ``cite`` and ``publication_url``, ``url``, ``reported_n_total``,
    ``reported_n_individuals``, ``animals``); ``dataset_kwargs`` go to the class."""
    cls = dataset_class(dataset)
    summary = getattr(cls, "summary", None) or {}
    lib_version = _library_version()
    if species is None:
        species = sorted({species_key(a) for a in summary.get("animals") or ()})
    elif isinstance(species, str):
        species = [species_key(species)]
    else:
        species = [species_key(s) for s in species]
    if license is None:
        stated = summary.get("licenses")
        license = (
            f"{stated} ({summary['licenses_url']})" if stated and summary.get("licenses_url") else stated
        )
        license = license or "unknown (none stated by wildlife-datasets)"
    info = SourceInfo(
        name=name or f"wildlife_{cls.__name__.lower()}",
        species=tuple(species),
        license=license,
        citation=citation if citation is not None else _citation(cls, summary, lib_version),
        url=url if url is not None else str(summary.get("url") or ""),
        version=version or f"read with wildlife-datasets {lib_version} ({cls.__name__})",
        folder=str(folder if folder is not None else cls.__name__),
        description=f"wildlife-datasets {cls.__name__}",
        reported_images=reported_images if reported_images is not None else summary.get("reported_n_total"),
        reported_identities=(
            reported_identities if reported_identities is not None else summary.get("reported_n_individuals")
        ),
        label_fixes=dict(label_fixes or {}),
        exclude=frozenset(exclude),
        exclude_reason=exclude_reason,
    )
    return WildlifeDatasetsSource(cls, info, dict(dataset_kwargs or {}))


class WildlifeDatasetsSource(Source):
    """A ``wildlife_datasets`` dataset class read in place; see the module doc for the columns it maps."""

    def __init__(self, cls: type, info: SourceInfo, dataset_kwargs: Mapping | None = None):
        self.cls = cls
        self.info = info
        self.dataset_kwargs = dict(dataset_kwargs or {})

    def load(self, base: Path):
        """The library's dataset object on ``base`` (its files are not checked there: validation checks them,
        row by row); :class:`SourceError` in one line when the class cannot read the folder."""
        kwargs = {"check_files": False, **self.dataset_kwargs}
        try:
            return self.cls(root=str(base), **kwargs)
        except Exception as err:  # the library raises bare Exceptions, KeyErrors, pandas errors...
            text = " ".join(str(err).split()) or "no message"
            raise SourceError(
                f"source {self.info.name!r}: wildlife_datasets {self.cls.__name__} cannot read {base}: "
                f"{type(err).__name__}: {text[:300]}"
            ) from err

    def scan(self, root: Path) -> Iterator[Record]:
        base = self.location(root)
        ds = self.load(base)
        df = ds.df
        col_path = getattr(ds, "col_path", "path")
        col_label = getattr(ds, "col_label", "identity")
        for column in (col_path, col_label):
            if column not in df.columns:
                raise SourceError(
                    f"source {self.info.name!r}: the metadata of wildlife_datasets {self.cls.__name__} has no "
                    f"{column!r} column (columns {list(df.columns)[:20]})"
                )
        rows = df.to_dict("records")
        paths = Counter(_text(r.get(col_path)) for r in rows)
        unknown = str(getattr(ds, "unknown_name", "unknown"))
        for i, row in enumerate(rows):
            yield self.read_row(row, i, base, col_path, col_label, unknown, paths)

    def read_row(
        self, row: dict, i: int, base: Path, col_path: str, col_label: str, unknown: str, paths: Counter
    ) -> Record:
        """One metadata row as a record, or a skipped record naming ``<Class> row <i>`` and the reason."""
        where = f"{self.cls.__name__} row {i}"
        rel, wid = _text(row.get(col_path)), _text(row.get("image_id"))
        image_id = (rel.replace("\\", "/") if rel else f"<{where}>") + (f"#{wid}" if paths[rel] > 1 else "")
        if not rel:
            return self.skipped(image_id, MALFORMED_ROW, f"{where}: no {col_path}")
        identity = _text(row.get(col_label))
        if identity is None:
            return self.skipped(image_id, MALFORMED_ROW, f"{where}: no {col_label} for {rel}")
        if identity == unknown:
            return self.skipped(image_id, UNIDENTIFIED, f"{where}: identity {unknown!r} for {rel}")
        try:
            bbox = _box(row.get("bbox"))
        except ValueError as err:
            return self.skipped(image_id, MALFORMED_ROW, f"{where}: {err}")
        path = Path(rel) if Path(rel).is_absolute() else base / rel
        if not path.exists() and not path.is_symlink():  # a link outside the folder: reported by records()
            return self.skipped(image_id, MISSING_FILE, f"{where}: {rel} not found in {base}")
        default = self.info.species[0] if len(self.info.species) == 1 else ""
        species = _text(row.get("species"))
        return Record(
            source=self.info.name,
            species=species_key(species) if species else default,
            identity=identity,
            image_id=image_id,
            path=path,
            viewpoint=_text(row.get("orientation")),
            encounter=_encounter(row, identity),
            bbox=bbox,
            extra={"row": f"{where} ({rel})", "wildlife_image_id": wid},
        )


def _missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return not value.strip()
    return type(value).__name__ in ("NAType", "NaTType")  # pandas' missing markers, without importing pandas


def _text(value) -> str | None:
    """A cell as text: ints stay ints (``144``, also when pandas made them ``144.0``), strings are stripped;
    None for a missing cell."""
    if _missing(value):
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _box(value) -> tuple[float, float, float, float] | None:
    """``[x, y, w, h]`` from a list, tuple, array or JSON text; None when missing; :class:`ValueError` otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"bbox: expected 4 numbers [x, y, w, h], got {value[:60]!r}") from None
    if hasattr(value, "tolist"):  # a numpy array
        value = value.tolist()
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise ValueError(f"bbox: expected 4 numbers [x, y, w, h], got {str(value)[:60]!r}")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
        raise ValueError(f"bbox: expected 4 numbers [x, y, w, h], got {str(value)[:60]!r}")
    x, y, w, h = (float(v) for v in value)
    return x, y, w, h


def _encounter(row: dict, identity: str) -> str | None:
    """``<identity>/<column>:<value>`` from the first of :data:`ENCOUNTER_COLUMNS` the row fills (a date is
    reduced to its day); None (each photo its own encounter) when none is."""
    for column in ENCOUNTER_COLUMNS:
        value = _text(row.get(column))
        if value is None:
            continue
        if column == "date":
            match = _DAY.match(value)
            value = match.group(0) if match else value
        return f"{identity}/{column}:{value}"
    return None
