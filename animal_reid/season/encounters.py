"""Encounters: the annotations of one animal sighting, matched as one.

An encounter is a run of annotations of one species from one camera (or one site where the camera is unknown)
whose date-times chain within a gap (:func:`group_encounters`, default 600 s: each annotation is at most ``gap_s``
after the previous one; the encounter ends at the first larger gap). The rules, in order:

* an annotation whose input names an encounter (Camtrap DP's ``eventID``, a CSV's ``encounter``) keeps it;
* an annotation without a date-time, or with neither a camera nor a site (nothing says two photos were taken at the
  same place), forms an encounter with the other annotations of its photo and species only (all detections of one
  photo together);
* otherwise annotations are grouped by (species, camera or site, whether the date-time carries a UTC offset), sorted
  by date-time and chained.

Encounter ids are stable (they depend only on the annotations' fields, not on their order):
``enc:<species>:<camera>:<first date-time>``, ``enc:<species>:site=<site>:<first date-time>`` or
``enc:<species>:photo=<photo>`` (``-`` for an unknown species).

**Two annotations in one photo are two animals.** An encounter holding several annotations of one photo is split
before matching (:func:`split_same_photo`): its photos are taken in time order, the detections of the first photo
start one track each, and each later photo's detections are linked one-to-one to the tracks most similar to them
(cosine to the track's mean embedding, greedily, best pair first), a detection left without a free track starting
a new one; each track is a sub-encounter ``<encounter>/<n>``. An encounter holding two species (named so by its
input) is split by species, ``<encounter>/<species>``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .annotations import Annotation

__all__ = ["DEFAULT_GAP_S", "EncounterError", "group_encounters", "parse_datetime", "split_same_photo"]

DEFAULT_GAP_S = 600.0


class EncounterError(ValueError):
    """An annotation that cannot be placed in an encounter; the message names it."""


def _where(ann: Annotation) -> str:
    return f"annotation {ann.annotation_id!r}" + (f" ({ann.source})" if ann.source else "")


def parse_datetime(text: str | None, ann: Annotation | None = None) -> dt.datetime | None:
    """``text`` (ISO 8601, ``Z`` or an offset allowed) as a datetime; None for an empty one.

    :class:`EncounterError` naming the annotation when it is not ISO 8601.
    """
    if text is None or not str(text).strip():
        return None
    try:
        return dt.datetime.fromisoformat(str(text).strip())
    except ValueError as err:
        who = _where(ann) if ann is not None else "datetime"
        raise EncounterError(f"{who}: datetime {text!r} is not ISO 8601 (e.g. 2026-05-01T06:12:30)") from err


def _place(ann: Annotation) -> str | None:
    if ann.camera:
        return str(ann.camera)
    if ann.site:
        return f"site={ann.site}"
    return None


def _species(ann: Annotation) -> str:
    return str(ann.species) if ann.species else "-"


def _chains(members: list[tuple[dt.datetime, int]], gap_s: float) -> list[list[int]]:
    """Indices grouped into runs whose consecutive date-times are at most ``gap_s`` apart (input sorted)."""
    runs: list[list[int]] = []
    previous: dt.datetime | None = None
    for when, i in members:
        if previous is None or (when - previous).total_seconds() > gap_s:
            runs.append([])
        runs[-1].append(i)
        previous = when
    return runs


def group_encounters(annotations: Sequence[Annotation], gap_s: float = DEFAULT_GAP_S) -> list[Annotation]:
    """Copies of ``annotations`` (same order) with ``encounter`` set by the rules of the module docstring.

    ``gap_s``: the largest time between consecutive annotations of one encounter, seconds (>= 0).
    """
    if not (isinstance(gap_s, int | float) and math.isfinite(gap_s) and gap_s >= 0):
        raise EncounterError(f"gap_s must be a number of seconds >= 0, got {gap_s!r}")
    out = [dataclasses.replace(a) for a in annotations]
    timed: dict[tuple, list[tuple[dt.datetime, int]]] = defaultdict(list)
    for i, ann in enumerate(out):
        if ann.encounter:
            continue
        when = parse_datetime(ann.datetime, ann)
        place = _place(ann)
        if when is None or place is None:
            ann.encounter = f"enc:{_species(ann)}:photo={ann.photo}"
            continue
        timed[(_species(ann), place, when.utcoffset() is not None)].append((when, i))
    for (species, place, _), members in timed.items():
        members.sort(key=lambda m: (m[0], out[m[1]].annotation_id))
        for run in _chains(members, gap_s):
            first = out[run[0]].datetime.strip()  # the earliest: runs are sorted by time
            for i in run:
                out[i].encounter = f"enc:{species}:{place}:{first}"
    return out


def _encounter_groups(annotations: Sequence[Annotation]) -> dict[str, list[int]]:
    """Annotation indices per encounter (None: the annotation alone), an encounter of two species split by species."""
    by: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, a in enumerate(annotations):
        by[(a.encounter or f"ann:{a.annotation_id}", a.species or "")].append(i)
    mixed = defaultdict(int)
    for enc, _ in by:
        mixed[enc] += 1
    return {(enc if mixed[enc] == 1 else f"{enc}/{sp or '-'}"): idx for (enc, sp), idx in by.items()}


def _tracks(photos: list[list[int]], emb: np.ndarray) -> list[list[int]]:
    """Detections of consecutive photos linked into tracks, one detection per track per photo (module docstring)."""
    tracks: list[list[int]] = []
    sums: list[np.ndarray] = []
    for dets in photos:
        free, pairs = set(range(len(tracks))), []
        if tracks:
            cent = np.stack(sums) / np.maximum(np.linalg.norm(np.stack(sums), axis=1, keepdims=True), 1e-12)
            sims = emb[dets] @ cent.T
            pairs = sorted((-sims[a, t], a, t) for a in range(len(dets)) for t in range(len(tracks)))
        placed: set[int] = set()
        for _, a, t in pairs:
            if a not in placed and t in free:
                placed.add(a)
                free.discard(t)
                tracks[t].append(dets[a])
                sums[t] = sums[t] + emb[dets[a]]
        for a, d in enumerate(dets):
            if a not in placed:
                tracks.append([d])
                sums.append(emb[d].astype(np.float64))
    return tracks


def split_same_photo(annotations: Sequence[Annotation], embeddings) -> list[Annotation]:
    """Copies of ``annotations`` whose ``encounter`` names one animal: encounters holding two annotations of one
    photo are split into tracks ``<encounter>/<n>`` (module docstring), an encounter of two species into
    ``<encounter>/<species>``; an annotation without an encounter becomes ``ann:<annotation_id>``."""
    emb = np.asarray(embeddings, dtype=np.float64)
    if len(emb) != len(annotations):
        raise ValueError(f"{len(emb)} embeddings for {len(annotations)} annotations (one row each)")
    out = [dataclasses.replace(a) for a in annotations]
    for enc, idx in _encounter_groups(annotations).items():
        by_photo: dict[str, list[int]] = defaultdict(list)
        for i in idx:
            by_photo[out[i].photo].append(i)
        if max(len(v) for v in by_photo.values()) == 1:
            for i in idx:
                out[i].encounter = enc
            continue
        order = sorted(by_photo, key=lambda p: (out[by_photo[p][0]].datetime or "", p))
        for n, track in enumerate(_tracks([by_photo[p] for p in order], emb), start=1):
            for i in track:
                out[i].encounter = f"{enc}/{n}"
    return out
