"""The season's results as files ecologists use: a CSV table, COCO, capture histories, Camtrap DP.

* :mod:`animal_reid.season.exports_tables`: :func:`export_csv` (one row per annotation), :func:`export_coco`
  (COCO with ``individual_id``), :func:`coarsen` (sensitive species' coordinates snapped to cell centres), and
  the input checks every export runs first.
* :mod:`animal_reid.season.exports_capture`: capture histories as CSV and Program MARK ``.inp``.
* :func:`export_all`: every file above (and ``camtrap-dp/`` when :mod:`animal_reid.season.camtrapdp` is
  present) written through :class:`~animal_reid.manifest.OutputFolder`: a folder that is not ours is refused,
  ``overwrite`` replaces only the files our manifest lists, files appear only once all are complete.

Every input and option is checked before anything is written; a problem is an :class:`ExportError` of one line
naming the row (``annotations row 3``, ``assignments row 2 (annotation 'a7')``) or the option.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..manifest import OutputFolder
from .annotations import Annotation, Assignment
from .exports_capture import CaptureHistory, capture_history, capture_history_csv, make_occasions, mark_inp
from .exports_tables import (
    CSV_COLUMNS,
    ExportError,
    check_precision,
    coarsen,
    export_coco,
    export_csv,
    index_assignments,
)

logger = logging.getLogger(__name__)

CAMTRAP_MODULE = "animal_reid.season.camtrapdp"

__all__ = [
    "CSV_COLUMNS",
    "CaptureHistory",
    "ExportError",
    "capture_history",
    "capture_history_csv",
    "check_precision",
    "coarsen",
    "export_all",
    "export_coco",
    "export_csv",
    "index_assignments",
    "make_occasions",
    "mark_inp",
    "write_exports",
]


# ------------------------------------------------------------------------------------------------------------
# everything
def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.casefold()).strip("-") or "species"


def _history_files(
    histories: dict[str, CaptureHistory], groups: str | None, annotations: Sequence[Annotation]
) -> dict[str, bytes]:
    """The ``.csv`` and ``.inp`` of each history, and one table of what they left out (when anything)."""
    species = {a.annotation_id: a.species or "" for a in annotations}
    files: dict[str, bytes] = {}
    excluded = io.StringIO()
    writer = csv.writer(excluded, lineterminator="\n")
    writer.writerow(["annotation_id", "species", "reason"])
    for suffix, history in histories.items():
        files[f"capture_history{suffix}.csv"] = capture_history_csv(history)
        files[f"capture_history{suffix}.inp"] = mark_inp(history, groups=groups).encode("utf-8")
        for reason, ids in history.excluded.items():
            writer.writerows([i, species[i], reason] for i in ids)
    if excluded.tell() > len("annotation_id,species,reason\n"):
        files["capture_history_excluded.csv"] = excluded.getvalue().encode("utf-8")
    return files


def _histories(
    annotations: Sequence[Annotation], assignments: Sequence[Assignment], options: dict[str, Any]
) -> dict[str, CaptureHistory]:
    """One history for the season, or one per species (file suffix ``_<species>``) when it has several; every
    species on the season's one grid of occasions."""
    occasions = make_occasions(
        annotations, options["occasion"], options["start"], options["end"], options["clock"]
    )
    if occasions:  # the season's grid, as an explicit list
        grid = {"occasion": occasions, "clock": options["clock"]}
    else:  # no dated annotation: every species gets none too
        grid = {k: options[k] for k in ("occasion", "start", "end", "clock")}
    names = sorted({a.species or "" for a in annotations})
    if len(names) <= 1:
        out = {"": capture_history(annotations, assignments, **grid)}
    else:
        out = _per_species(names, annotations, assignments, grid)
    for history in out.values():
        history.label = (
            history.label if not isinstance(options["occasion"], str) else options["occasion"].strip().upper()
        )
    return out


def _per_species(
    names: list[str],
    annotations: Sequence[Annotation],
    assignments: Sequence[Assignment],
    grid: dict[str, Any],
) -> dict[str, CaptureHistory]:
    """One history per species (``_<slug>``, ``_no-species``); two species with one slug are an error."""
    out: dict[str, CaptureHistory] = {}
    owner: dict[str, str] = {}
    for name in names:
        slug = _slug(name) if name else "no-species"
        if slug in owner:
            raise ExportError(
                f"species {owner[slug]!r} and {name!r} would both write capture_history_{slug}.*"
            )
        owner[slug] = name
        subset = [a for a in annotations if (a.species or "") == name]
        ids = {a.annotation_id for a in subset}
        out[f"_{slug}"] = capture_history(subset, [s for s in assignments if s.annotation_id in ids], **grid)
    return out


def _camtrap_sensitive(annotations: Sequence[Annotation], sensitive: Mapping[str, Any] | None) -> dict:
    """The sensitive grid keyed by each species name as the annotations spell it (the writer matches
    exactly)."""
    grid = check_precision(sensitive)
    steps = {a.species: grid.get(a.species.casefold(), grid.get("*")) for a in annotations if a.species}
    return {name: step for name, step in steps.items() if step is not None}


def _camtrap(
    folder: Path,
    annotations: list[Annotation],
    assignments: Sequence[Assignment],
    photo_root: str | os.PathLike,
    options: dict[str, Any],
) -> list[str]:
    """``camtrap-dp/`` through the Camtrap DP writer, when the package has it (coordinates already coarsened;
    the grid passed too, for the source package's deployments); its skips go to ``camtrap_dp_skipped.csv``."""
    source = options["camtrap_source"]
    if importlib.util.find_spec(CAMTRAP_MODULE) is None:
        log = logger.warning if source is not None else logger.info
        log("no Camtrap DP writer (%s) in this install: camtrap-dp/ not written", CAMTRAP_MODULE)
        return []
    try:
        writer = importlib.import_module(CAMTRAP_MODULE).write_camtrapdp
    except (ImportError, AttributeError) as err:
        raise ExportError(f"the Camtrap DP writer {CAMTRAP_MODULE} cannot be used: {err}") from err
    target = folder / "camtrap-dp"
    sensitive = _camtrap_sensitive(annotations, options["sensitive"])
    extra = {"media": options["camtrap_media"], "photo_root": photo_root, "sensitive": sensitive}
    skips = writer(target, annotations, assignments, source_package=source, **extra) or []
    written = sorted(p.relative_to(folder).as_posix() for p in target.rglob("*") if p.is_file())
    if skips:
        logger.warning("camtrap-dp: %d annotations left out (camtrap_dp_skipped.csv)", len(skips))
        buf = io.StringIO()
        writer_csv = csv.writer(buf, lineterminator="\n")
        writer_csv.writerow(["source", "row", "reason", "message"])
        writer_csv.writerows([s.source, s.row, s.reason, s.message] for s in skips)
        (folder / "camtrap_dp_skipped.csv").write_bytes(buf.getvalue().encode("utf-8"))
        written.append("camtrap_dp_skipped.csv")
    return written


def _check_options(annotations, assignments, photo_root, options: dict[str, Any]) -> None:
    """Every input and option, before anything is read or written."""
    index_assignments(annotations, assignments)
    check_precision(options["sensitive"])
    make_occasions(annotations, options["occasion"], options["start"], options["end"], options["clock"])
    if options["groups"] not in (None, "species", "site"):
        raise ExportError(f"groups {options['groups']!r} is not 'species' or 'site'")
    if not Path(photo_root).is_dir():
        raise ExportError(f"photo root {photo_root} is not a folder")
    if options["camtrap_media"] not in ("copy", "link", "none"):
        raise ExportError(f"camtrap_media {options['camtrap_media']!r} is not 'copy', 'link' or 'none'")


def write_exports(
    folder: str | os.PathLike,
    annotations: Sequence[Annotation],
    assignments: Sequence[Assignment],
    photo_root: str | os.PathLike,
    **options: Any,
) -> list[str]:
    """Write every export as plain files into ``folder`` (a staging folder: the season command's, or
    :func:`export_all`'s) and return their relative paths. ``options`` as :func:`export_all`'s."""
    defaults = {
        "occasion": "7D", "start": None, "end": None, "clock": "local", "sensitive": None, "groups": None,
        "camtrap_source": None, "camtrap_media": "copy",
    }  # fmt: skip
    if set(options) - set(defaults):
        raise TypeError(f"write_exports() got unknown options {sorted(set(options) - set(defaults))}")
    options = {**defaults, **options}
    _check_options(annotations, assignments, photo_root, options)
    folder = Path(folder)
    anns = coarsen(annotations, options["sensitive"])
    files = {
        "annotations.csv": export_csv(anns, assignments),
        "coco.json": (json.dumps(export_coco(anns, assignments, photo_root), indent=1) + "\n").encode(
            "utf-8"
        ),
    }
    files.update(_history_files(_histories(anns, assignments, options), options["groups"], anns))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return sorted(files) + _camtrap(folder, anns, assignments, photo_root, options)


def export_all(
    out_folder: OutputFolder | str | os.PathLike,
    annotations: Sequence[Annotation],
    assignments: Sequence[Assignment],
    photo_root: str | os.PathLike,
    *,
    occasion: Any = "7D",
    start: Any = None,
    end: Any = None,
    clock: str = "local",
    sensitive: Mapping[str, Any] | None = None,
    groups: str | None = None,
    camtrap_source: str | os.PathLike | None = None,
    camtrap_media: str = "copy",
    overwrite: bool = False,
) -> list[str]:
    """Write ``annotations.csv``, ``coco.json``, ``capture_history[_<species>].csv`` / ``.inp`` (per species
    when the season has several; ``capture_history_excluded.csv`` lists what they left out) and
    ``camtrap-dp/`` (when the Camtrap DP writer is installed) into ``out_folder``, coordinates of
    ``sensitive`` species coarsened first.

    ``out_folder``: a path (opened as an :class:`OutputFolder`: a folder not ours refused, ``overwrite``
    replaces only our listed files) or an entered :class:`OutputFolder` (its staging + commit used). Returns
    the relative paths written. ``occasion``/``start``/``end``/``clock``: see
    :mod:`animal_reid.season.exports_capture`; ``groups``: MARK group columns (``"species"`` or ``"site"``);
    ``camtrap_source``: the Camtrap DP package the season was read from (copied with ``individualID`` filled);
    ``camtrap_media``: the photos ``"copy"``-ed into ``camtrap-dp/media/``, hard-``"link"``-ed, or ``"none"``.
    """
    options = dict(
        occasion=occasion, start=start, end=end, clock=clock, sensitive=sensitive, groups=groups,
        camtrap_source=camtrap_source, camtrap_media=camtrap_media,
    )  # fmt: skip
    _check_options(annotations, assignments, photo_root, options)
    if isinstance(out_folder, OutputFolder):
        return _export_into(out_folder, annotations, assignments, photo_root, options)
    keep = [photo_root, *([camtrap_source] if camtrap_source is not None else [])]
    with OutputFolder(
        out_folder, tool="animal-reid export", overwrite=overwrite, what="export folder", keep=keep
    ) as out:
        return _export_into(out, annotations, assignments, photo_root, options)


def _export_into(
    out: OutputFolder, annotations, assignments, photo_root, options: dict[str, Any]
) -> list[str]:
    stage = out.staging()
    written = write_exports(stage, annotations, assignments, photo_root, **options)
    out.commit(stage)
    logger.info("exports written to %s: %s", out.path, ", ".join(written))
    return written
