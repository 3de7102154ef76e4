"""The season's self-contained HTML report: counts per species, each proposed new individual as a strip of its
photos, and a match sheet for every unsure encounter (its photos beside the best candidate's catalogue photos).

One file, no network: thumbnails are JPEGs embedded as ``data:`` URLs, styles inline. Photos are cropped to their
box in displayed orientation (EXIF applied), like everything else. No coordinates are shown (the exports carry
them, coarsened for sensitive species).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from .annotations import Annotation, Assignment

logger = logging.getLogger(__name__)

__all__ = ["render_report", "thumbnail"]

THUMB = 144  # longest side of a thumbnail, pixels
MAX_PER_STRIP = 8
MAX_SECTIONS = 300  # proposed individuals / unsure encounters shown at most (the CSV lists them all)

_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
.strip{display:flex;gap:4px;flex-wrap:wrap;margin:.3em 0 1.2em}.strip img{height:96px;border:1px solid #999}
.pair{display:flex;gap:1.5em}.muted{color:#777;font-size:.9em}h3{margin:.6em 0 .2em}"""


def thumbnail(photo: str, box: Sequence[float] | None) -> str:
    """A ``data:`` URL of the photo's crop (displayed orientation), longest side :data:`THUMB`; "" if unreadable."""
    from PIL import Image, ImageOps

    try:
        with Image.open(photo) as im:
            img = ImageOps.exif_transpose(im).convert("RGB")
        if box is not None:
            x, y, w, h = (float(v) for v in box)
            img = img.crop((max(0, int(x)), max(0, int(y)), int(x + w), int(y + h)))
        img.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
    except Exception as err:  # noqa: BLE001 - a report shows what it can: one unreadable photo is a gap
        logger.warning("report: no thumbnail for %s (%s)", photo, err)
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(photo: str, box, title: str) -> str:
    url = thumbnail(photo, box)
    return f'<img src="{url}" title="{html.escape(title)}" alt="{html.escape(title)}">' if url else ""


def _counts_table(annotations: Sequence[Annotation], assignments: Sequence[Assignment]) -> str:
    rows: dict[str, Counter] = defaultdict(Counter)
    encounters: dict[str, set] = defaultdict(set)
    proposed: dict[str, set] = defaultdict(set)
    for ann, a in zip(annotations, assignments, strict=True):
        sp = ann.species or "(none)"
        rows[sp][a.decision] += 1
        encounters[sp].add(a.encounter)
        if a.decision == "new" and a.individual:
            proposed[sp].add(a.individual)
    head = (
        "<tr><th>species</th><th>annotations</th><th>encounters</th><th>known</th><th>unsure</th><th>new</th>"
    )
    head += "<th>proposed new individuals</th></tr>"
    body = "".join(
        f"<tr><td>{html.escape(sp)}</td><td>{sum(c.values())}</td><td>{len(encounters[sp])}</td><td>{c['known']}"
        f"</td><td>{c['unsure']}</td><td>{c['new']}</td><td>{len(proposed[sp])}</td></tr>"
        for sp, c in sorted(rows.items())
    )
    return f"<table>{head}{body}</table>"


def _new_strips(annotations: Sequence[Annotation], assignments: Sequence[Assignment]) -> str:
    members: dict[str, list[Annotation]] = defaultdict(list)
    for ann, a in zip(annotations, assignments, strict=True):
        if a.decision == "new" and a.individual:
            members[a.individual].append(ann)
    parts = []
    for ident in sorted(members, key=lambda k: (-len(members[k]), k))[:MAX_SECTIONS]:
        anns = members[ident]
        imgs = "".join(
            _img(a.photo, a.box, f"{a.annotation_id} {a.datetime or ''}") for a in anns[:MAX_PER_STRIP]
        )
        dates = sorted(a.datetime for a in anns if a.datetime)
        when = f"{dates[0]} to {dates[-1]}" if dates else "no dates"
        parts.append(f"<h3>{html.escape(ident)}</h3><div class='muted'>{len(anns)} annotations, "
                     f"{len({a.encounter for a in anns})} encounters, {html.escape(when)}</div>"
                     f"<div class='strip'>{imgs}</div>")  # fmt: skip
    return "".join(parts) or "<p>No new individuals proposed.</p>"


def _unsure_sheets(
    annotations, assignments, catalogue_photos: Mapping[str, Sequence[tuple[str, list | None]]]
):
    by_encounter: dict[str, list[tuple[Annotation, Assignment]]] = defaultdict(list)
    for ann, a in zip(annotations, assignments, strict=True):
        if a.decision == "unsure":
            by_encounter[a.encounter].append((ann, a))
    parts = []
    for enc in sorted(by_encounter)[:MAX_SECTIONS]:
        pairs = by_encounter[enc]
        cand, score = pairs[0][1].candidate, pairs[0][1].score
        ours = "".join(_img(n.photo, n.box, n.annotation_id) for n, _ in pairs[:MAX_PER_STRIP])
        theirs = "".join(_img(p, b, str(cand)) for p, b in list(catalogue_photos.get(cand or "", ()))[:4])
        shown = "n/a" if score is None else f"{score:.3f}"
        parts.append(f"<h3>{html.escape(str(enc))}</h3><div class='muted'>best candidate "
                     f"{html.escape(str(cand))}, fused score {shown}</div><div class='pair'><div><b>season</b>"
                     f"<div class='strip'>{ours}</div></div><div><b>catalogue: {html.escape(str(cand))}</b>"
                     f"<div class='strip'>{theirs}</div></div></div>")  # fmt: skip
    return "".join(parts) or "<p>No unsure encounters.</p>"


def render_report(annotations: Sequence[Annotation], assignments: Sequence[Assignment],
                  catalogue_photos: Mapping[str, Sequence[tuple[str, list | None]]], title: str = "Season",
                  notes: Sequence[str] = ()) -> bytes:  # fmt: skip
    """The report as UTF-8 HTML bytes. ``catalogue_photos``: individual -> its catalogue photos (path, box)."""
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><ul>{note_items}</ul>"
        f"<h2>Counts per species</h2>{_counts_table(annotations, assignments)}"
        f"<h2>Proposed new individuals</h2>{_new_strips(annotations, assignments)}"
        f"<h2>Unsure encounters: check these</h2>{_unsure_sheets(annotations, assignments, catalogue_photos)}"
        "</body></html>\n"
    )
    return page.encode("utf-8")
