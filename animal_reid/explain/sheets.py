"""Explanation sheets: one query explained against several candidates, as one PNG and its data as JSON.

:func:`write_sheet` stacks one :func:`~animal_reid.explain.draw.draw_explanation` figure per candidate (titled with
its rank, individual, image and score) into ``<path>.png`` and writes beside it ``<path>.json``: the query, and per
candidate what the caller said about it plus :meth:`~animal_reid.explain.Explanation.to_dict` (the
correspondences in photo pixels, the scores, the heat maps). Both files are written atomically
(:func:`animal_reid.io.write_atomic`); an existing file is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ..io import write_atomic
from .draw import BACKGROUND, draw_explanation, font

ROW_GAP = 14  # pixels between two candidates' rows
#: candidate keys copied into the JSON (``image`` itself may be bytes or a PIL image: ``name`` stands for it)
CANDIDATE_FIELDS = ("rank", "identity", "species", "score", "name", "box", "theta", "label")


def _title(candidate: Mapping[str, Any], index: int) -> str:
    """``label`` when given, else ``"<rank>. <identity>  (<name>)  score <score>"`` from what is known."""
    if candidate.get("label"):
        return str(candidate["label"])
    parts = [f"{candidate.get('rank', index + 1)}. {candidate.get('identity') or 'candidate'}"]
    if candidate.get("name"):
        parts.append(f"({candidate['name']})")
    if candidate.get("score") is not None:
        parts.append(f"score {float(candidate['score']):.3f}")
    return "  ".join(parts)


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (a score, a box) as JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def sheet_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(png, json)`` paths of the sheet ``path`` (its suffix replaced)."""
    base = Path(path)
    return base.with_suffix(".png"), base.with_suffix(".json")


def render_sheet(
    query: Any,
    candidates: Sequence[Mapping[str, Any]],
    explanations: Sequence[Any],
    *,
    query_box: Sequence[float] | None = None,
    query_theta: float = 0.0,
    height: int = 320,
    top: int = 10,
    header: str | None = None,
) -> Image.Image:
    """The sheet's picture: ``header`` (a line), then one titled figure per candidate, stacked top to bottom."""
    if not candidates:
        raise ValueError("an explanation sheet needs at least one candidate")
    if len(candidates) != len(explanations):
        raise ValueError(f"{len(candidates)} candidates and {len(explanations)} explanations: one each")
    rows = [
        draw_explanation(
            query,
            c["image"],
            e,
            boxes=(query_box, c.get("box")),
            thetas=(query_theta, float(c.get("theta") or 0.0)),
            height=height,
            top=top,
            title=_title(c, i),
        )
        for i, (c, e) in enumerate(zip(candidates, explanations, strict=True))
    ]
    width, y = max(r.width for r in rows), 0
    if header:
        rows.insert(0, _header(header, width, height))
    sheet = Image.new("RGB", (width, sum(r.height for r in rows) + ROW_GAP * (len(rows) - 1)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        if i:
            draw.line([(0, y - ROW_GAP // 2), (width, y - ROW_GAP // 2)], fill=(190, 190, 190), width=1)
        sheet.paste(row, (0, y))
        y += row.height + ROW_GAP
    return sheet


def _header(text: str, width: int, height: int) -> Image.Image:
    size = max(12, height // 20)
    strip = Image.new("RGB", (width, size + 12), BACKGROUND)
    ImageDraw.Draw(strip).text((8, 4), text, fill=(0, 0, 0), font=font(size))
    return strip


def sheet_record(
    query_name: str | None,
    candidates: Sequence[Mapping[str, Any]],
    explanations: Sequence[Any],
    *,
    query_box: Sequence[float] | None = None,
    query_theta: float = 0.0,
) -> dict[str, Any]:
    """The JSON of a sheet: the query and, per candidate, its known fields and its explanation's data."""
    entries = []
    for c, e in zip(candidates, explanations, strict=True):
        entry = {k: c[k] for k in CANDIDATE_FIELDS if c.get(k) is not None}
        entries.append({**entry, "explanation": e.to_dict()})
    return {
        "query": query_name,
        "query_box": None if query_box is None else [float(v) for v in query_box],
        "query_theta": float(query_theta or 0.0),
        "candidates": entries,
    }


def write_sheet(
    path: str | os.PathLike,
    query: Any,
    candidates: Sequence[Mapping[str, Any]],
    explanations: Sequence[Any],
    *,
    query_box: Sequence[float] | None = None,
    query_theta: float = 0.0,
    query_name: str | None = None,
    height: int = 320,
    top: int = 10,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write the explanation sheet of ``query`` into ``path`` (``.png``) and beside it ``.json``; returns both.

    ``query``: the query photo (path, bytes, PIL image or array) as given to ``explain_pair``, cropped by
    ``query_box`` / ``query_theta``. ``candidates``: one mapping each, in rank order, with ``image`` (the gallery
    photo) and optionally ``box``, ``theta``, ``rank``, ``identity``, ``species``, ``score``, ``name`` (how the
    JSON names the image; ``image`` itself is not written) and ``label`` (the row's title, instead of one made
    from the others). ``explanations``: the :class:`~animal_reid.explain.Explanation` of the query against each.
    ``query_name``: the query in the JSON (default: ``query`` when it is a path). ``top``: lines per row.
    Raises :class:`FileExistsError` when either file exists and ``overwrite`` is false.
    """
    png, js = sheet_paths(path)
    if not overwrite:
        for p in (png, js):
            if p.exists():
                raise FileExistsError(f"{p} exists: pass overwrite=True to replace it")
    if query_name is None and isinstance(query, str | os.PathLike):
        query_name = os.fspath(query)
    picture = render_sheet(
        query,
        candidates,
        explanations,
        query_box=query_box,
        query_theta=query_theta,
        height=height,
        top=top,
        header=None if query_name is None else f"query {query_name}",
    )
    record = sheet_record(query_name, candidates, explanations, query_box=query_box, query_theta=query_theta)
    data = json.dumps(record, indent=1, default=_plain).encode()
    png.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(png, lambda f: picture.save(f, format="PNG"))
    write_atomic(js, lambda f: f.write(data))
    return png, js
