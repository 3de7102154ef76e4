"""Capture histories for capture-recapture: which individual was seen on which sampling occasion.

The season's decisions (:class:`~animal_reid.season.annotations.Assignment`) say which individual each
annotation is; this module turns them into the individual x occasion 0/1 matrix that abundance and survival
models take, as a CSV table and as a Program MARK ``.inp`` file (one line per individual:
``/* id */ 0101001 1;``).

Rules (each one a documented choice, none a silent guess):

* **Occasions** are half-open intervals ``[start, end)``: a photo taken exactly at a boundary belongs to the
  later occasion. They are given as a length (``"1D"``, ``"7D"``, ``"30D"``, ``"12H"``, ``"2W"`` or a
  ``timedelta``) laid from ``start`` (default: midnight of the day of the earliest dated annotation passed in,
  whatever its decision or species, so every species of a season shares one grid) up to ``end`` (default: the
  occasion holding the latest dated annotation; an ``end`` inside an occasion shortens that last occasion), or
  as an explicit list of ``(start, end)`` pairs (sampling sessions with gaps between them).
* **Clock**: ``clock="local"`` (default) uses the wall-clock time as recorded, an offset dropped
  (``2026-05-07T23:30-05:00`` is on the 7th: a field day is a local day); ``clock="utc"`` converts times that
  carry an offset to UTC and excludes those without one.
* An individual is captured on an occasion when any of its annotations (with a decision in ``decisions``,
  default known and new) falls in it; individuals never captured in the window are left out (MARK takes no
  all-zero history). Annotations left out (no assignment, another decision, no or unparseable date-time, a
  date without a time when occasions do not start at midnight, outside every occasion) are counted by reason
  in :attr:`CaptureHistory.excluded`, never dropped silently.
* One individual id seen with two species is an error naming both annotations (catalogues number individuals
  per species): pass ``species=`` or export per species.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import io
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .annotations import Annotation, Assignment
from .exports_tables import ExportError, index_assignments

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_OCCASIONS",
    "CaptureHistory",
    "capture_history",
    "capture_history_csv",
    "make_occasions",
    "mark_inp",
    "natural_key",
    "parse_occasion",
]

#: more occasions than this is an error (a "1H" occasion over years: a matrix nobody can fit)
MAX_OCCASIONS = 10_000
_LENGTH = re.compile(r"\s*(\d+)\s*([HDW])\s*", re.IGNORECASE)
_UNITS = {"H": dt.timedelta(hours=1), "D": dt.timedelta(days=1), "W": dt.timedelta(weeks=1)}
_SPEC_HELP = (
    "a length such as '1D', '7D', '30D', '12H' or '2W' (a whole number >= 1 of hours, days or weeks), "
    "a positive timedelta, or a list of (start, end) pairs"
)
Occasion = tuple[dt.datetime, dt.datetime]


def natural_key(text: str) -> list[Any]:
    """Sort key putting ``new:lion:2`` before ``new:lion:10``."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text)]


# ------------------------------------------------------------------------------------------------------------
# date-times and occasions
def _to_clock(when: dt.datetime, clock: str, naive_ok: bool) -> dt.datetime | None:
    if clock == "local" or when.tzinfo is None:
        return when.replace(tzinfo=None) if (clock == "local" or naive_ok) else None
    return when.astimezone(dt.UTC).replace(tzinfo=None)


def _bound(value: str | dt.datetime, clock: str, what: str) -> dt.datetime:
    """A start or end given by the user (a naive one is taken on the chosen clock)."""
    if isinstance(value, dt.datetime):
        when = value
    else:
        try:
            when = dt.datetime.fromisoformat(str(value).strip())
        except ValueError as err:
            raise ExportError(f"{what} {value!r} is not an ISO 8601 date-time") from err
    return _to_clock(when, clock, naive_ok=True)


def _check_clock(clock: str) -> None:
    if clock not in ("local", "utc"):
        raise ExportError(f"clock {clock!r} is not 'local' or 'utc'")


def parse_occasion(spec: Any, clock: str = "local") -> dt.timedelta | list[Occasion]:
    """The occasion length (``"7D"``, a timedelta) or the explicit occasions (a list of ``(start, end)``
    pairs, increasing and not overlapping); :class:`ExportError` for anything else."""
    _check_clock(clock)
    if isinstance(spec, dt.timedelta):
        if spec <= dt.timedelta(0):
            raise ExportError(f"occasion {spec!r} is not {_SPEC_HELP}")
        return spec
    if isinstance(spec, str):
        m = _LENGTH.fullmatch(spec)
        if not m or int(m.group(1)) < 1:
            raise ExportError(f"occasion {spec!r} is not {_SPEC_HELP}")
        return int(m.group(1)) * _UNITS[m.group(2).upper()]
    if isinstance(spec, Sequence) and spec and all(isinstance(p, Sequence) and len(p) == 2 for p in spec):
        return _explicit_occasions(spec, clock)
    raise ExportError(f"occasion {spec!r} is not {_SPEC_HELP}")


def _explicit_occasions(pairs: Sequence[Sequence[Any]], clock: str) -> list[Occasion]:
    out: list[Occasion] = []
    for k, (a, b) in enumerate(pairs, start=1):
        s, e = _bound(a, clock, f"occasion {k} start"), _bound(b, clock, f"occasion {k} end")
        if e <= s:
            raise ExportError(f"occasion {k} ({s.isoformat()}, {e.isoformat()}) does not end after it starts")
        if out and s < out[-1][1]:
            raise ExportError(
                f"occasions {k - 1} ({out[-1][0].isoformat()}, {out[-1][1].isoformat()}) and {k} "
                f"({s.isoformat()}, {e.isoformat()}) overlap or are out of order"
            )
        out.append((s, e))
    if len(out) > MAX_OCCASIONS:
        raise ExportError(f"{len(out)} occasions: more than {MAX_OCCASIONS}")
    return out


def _when(ann: Annotation, clock: str) -> tuple[dt.datetime | None, str | None]:
    """The annotation's date-time on the clock, or why it has none (a reason of
    :attr:`CaptureHistory.excluded`)."""
    text = (ann.datetime or "").strip()
    if not text:
        return None, "no datetime"
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None, "unparseable datetime"
    when = _to_clock(when, clock, naive_ok=False)
    return (when, None) if when is not None else (None, "no UTC offset")


def _date_only(ann: Annotation) -> bool:
    return not re.search(r"[T ]", (ann.datetime or "").strip())


def make_occasions(
    annotations: Iterable[Annotation],
    occasion: Any = "7D",
    start: str | dt.datetime | None = None,
    end: str | dt.datetime | None = None,
    clock: str = "local",
) -> list[Occasion]:
    """The occasions: explicit ones as given, or ``occasion``-long ones from ``start`` to ``end`` (defaults
    from the dated annotations; see the module's rules)."""
    spec = parse_occasion(occasion, clock)
    if not isinstance(spec, dt.timedelta):
        if start is not None or end is not None:
            raise ExportError("start and end cannot be given with an explicit list of occasions")
        return spec
    dated = [w for w, _ in (_when(a, clock) for a in annotations) if w is not None]
    first = _bound(start, clock, "start") if start is not None else None
    if first is None:
        if not dated:
            return []
        first = dt.datetime.combine(min(dated).date(), dt.time())
    last = _bound(end, clock, "end") if end is not None else None
    if last is not None and last <= first:
        raise ExportError(f"end {last.isoformat()} is not after start {first.isoformat()}")
    if last is not None:
        n = math.ceil((last - first) / spec)
    else:
        n = (max(dated) - first) // spec + 1 if dated and max(dated) >= first else 0
    if n > MAX_OCCASIONS:
        raise ExportError(
            f"occasion {occasion!r} from {first.isoformat()} makes {n} occasions "
            f"(more than {MAX_OCCASIONS}): "
            "choose a longer occasion or a shorter season"
        )
    return [(first + k * spec, min(first + (k + 1) * spec, last or dt.datetime.max)) for k in range(n)]


# ------------------------------------------------------------------------------------------------------------
# the history
@dataclass
class CaptureHistory:
    """Individuals x occasions. Unpacks as ``individuals, occasions, matrix``."""

    individuals: list[str]
    occasions: list[Occasion]
    matrix: Any  # numpy uint8 [len(individuals), len(occasions)]
    #: reason -> annotation ids left out ("no datetime", "decision unsure", "outside the occasions", ...)
    excluded: dict[str, list[str]] = field(default_factory=dict)
    #: individual -> the annotations that made its captures
    members: dict[str, list[Annotation]] = field(default_factory=dict)
    label: str = ""  # how the occasions were given ("7D", "custom")

    def __iter__(self) -> Iterator[Any]:
        return iter((self.individuals, self.occasions, self.matrix))

    def labels(self) -> list[str]:
        """Each occasion's start: a date when every occasion starts at midnight, else date and time."""
        midnight = all(s.time() == dt.time() for s, _ in self.occasions)
        return [
            s.date().isoformat() if midnight else s.isoformat(timespec="minutes") for s, _ in self.occasions
        ]

    def summary(self) -> str:
        """One line: sizes and what was left out."""
        left = ", ".join(f"{len(v)} {k}" for k, v in self.excluded.items())
        return f"{len(self.individuals)} individuals, {len(self.occasions)} occasions" + (
            f"; left out: {left}" if left else ""
        )


def _check_decisions(decisions: Sequence[str]) -> None:
    bad = [d for d in decisions if d not in ("known", "new")]
    if not decisions or bad:
        raise ExportError(
            f"decisions {tuple(decisions)!r}: capture histories take 'known' and/or 'new' (an unsure "
            "annotation names no individual)"
        )


def _counted(
    annotations: Sequence[Annotation],
    by_id: dict[str, Assignment],
    decisions: Sequence[str],
    species: str | None,
    excluded: dict[str, list[str]],
) -> list[Annotation]:
    """The annotations of the species whose decision counts; the others noted in ``excluded``."""
    out = []
    for ann in annotations:
        if species is not None and (ann.species or "").casefold() != species.casefold():
            continue
        asg = by_id.get(ann.annotation_id)
        if asg is None or asg.decision not in decisions:
            reason = "no assignment" if asg is None else f"decision {asg.decision}"
            excluded.setdefault(reason, []).append(ann.annotation_id)
            continue
        out.append(ann)
    return out


def _place(
    ann: Annotation, occasions: list[Occasion], starts: list[dt.datetime], clock: str, midnights: bool
) -> tuple[int, str | None]:
    """The occasion the annotation falls in, or -1 and why none."""
    when, why = _when(ann, clock)
    if when is None:
        return -1, why
    if not midnights and _date_only(ann):
        return -1, "date without time"
    k = bisect.bisect_right(starts, when) - 1
    if k < 0 or when >= occasions[k][1]:
        return -1, "outside the occasions"
    return k, None


def capture_history(
    annotations: Sequence[Annotation],
    assignments: Sequence[Assignment],
    occasion: Any = "7D",
    start: str | dt.datetime | None = None,
    end: str | dt.datetime | None = None,
    species: str | None = None,
    decisions: Sequence[str] = ("known", "new"),
    clock: str = "local",
) -> CaptureHistory:
    """The 0/1 capture matrix (see the module's rules); unpacks as ``individuals, occasions, matrix``."""
    import numpy as np

    by_id = index_assignments(annotations, assignments)
    _check_decisions(decisions)
    occasions = make_occasions(annotations, occasion, start, end, clock)
    starts = [s for s, _ in occasions]
    midnights = all(s.time() == dt.time() and e.time() == dt.time() for s, e in occasions)
    excluded: dict[str, list[str]] = {}
    captures: dict[str, set[int]] = {}
    members: dict[str, list[Annotation]] = {}
    first_species: dict[str, Annotation] = {}
    for ann in _counted(annotations, by_id, decisions, species, excluded):
        k, why = _place(ann, occasions, starts, clock, midnights)
        if why is not None:
            excluded.setdefault(why, []).append(ann.annotation_id)
            continue
        ind = by_id[ann.annotation_id].individual
        other = first_species.setdefault(ind, ann)
        if (other.species or "") != (ann.species or ""):
            raise ExportError(
                f"individual {ind!r} is {other.species!r} in annotation {other.annotation_id!r} and "
                f"{ann.species!r} in annotation {ann.annotation_id!r}: pass species= or export per species"
            )
        captures.setdefault(ind, set()).add(k)
        members.setdefault(ind, []).append(ann)
    individuals = sorted(captures, key=natural_key)
    matrix = np.zeros((len(individuals), len(occasions)), np.uint8)
    for i, ind in enumerate(individuals):
        matrix[i, sorted(captures[ind])] = 1
    history = CaptureHistory(individuals, occasions, matrix, excluded, members, _label(occasion))
    logger.info("capture history%s: %s", f" ({species})" if species else "", history.summary())
    return history


def _label(occasion: Any) -> str:
    if isinstance(occasion, str):
        return occasion.strip().upper()
    return str(occasion) if isinstance(occasion, dt.timedelta) else "custom"


# ------------------------------------------------------------------------------------------------------------
# writing it
def capture_history_csv(
    annotations: Sequence[Annotation] | CaptureHistory, *args: Any, **kwargs: Any
) -> bytes:
    """The history as CSV: ``individual`` then one 0/1 column per occasion, labelled by its start. Takes a
    :class:`CaptureHistory` or the arguments of :func:`capture_history`."""
    history = (
        annotations
        if isinstance(annotations, CaptureHistory)
        else capture_history(annotations, *args, **kwargs)
    )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["individual", *history.labels()])
    for ind, row in zip(history.individuals, history.matrix, strict=True):
        writer.writerow([ind, *(int(v) for v in row)])
    return buf.getvalue().encode("utf-8")


def _comment(text: str) -> str:
    """Text safe inside a MARK ``/* */`` comment."""
    return " ".join(str(text).replace("*/", "* /").replace("/*", "/ *").split())


def _group_of(history: CaptureHistory, ind: str, groups: str) -> str:
    values = {}
    for ann in history.members[ind]:
        values.setdefault(getattr(ann, groups) or "", ann)
    if len(values) > 1:
        (va, a), (vb, b) = list(values.items())[:2]
        raise ExportError(
            f"individual {ind!r} has {groups} {va!r} (annotation {a.annotation_id!r}) and {vb!r} (annotation "
            f"{b.annotation_id!r}): it cannot be in one MARK group; group by another field or export per "
            f"{groups}"
        )
    return next(iter(values))


def mark_inp(
    annotations: Sequence[Annotation] | CaptureHistory,
    *args: Any,
    groups: str | None = None,
    **kwargs: Any,
) -> str:
    """Program MARK ``.inp`` text: a comment header, then ``/* id */ 0101 1;`` per individual. With ``groups``
    (``"species"`` or ``"site"``) one frequency column per group (sorted; named in the header), 1 in the
    individual's own. Takes a :class:`CaptureHistory` or the arguments of :func:`capture_history`."""
    if groups not in (None, "species", "site"):
        raise ExportError(f"groups {groups!r} is not 'species' or 'site'")
    history = (
        annotations
        if isinstance(annotations, CaptureHistory)
        else capture_history(annotations, *args, **kwargs)
    )
    of = {ind: _group_of(history, ind, groups) for ind in history.individuals} if groups else {}
    names = sorted(set(of.values()), key=natural_key)
    lines = [
        f"/* animal-reid capture histories: {len(history.individuals)} individuals, "
        f"{len(history.occasions)} occasions of {_comment(history.label)} */",
        f"/* occasion starts: {' '.join(history.labels())} */",
    ]
    if groups:
        lines.append(f"/* groups by {groups}: {_comment(' '.join(n or '(none)' for n in names))} */")
    if history.excluded:
        lines.append(f"/* left out: {_comment(history.summary().split('; left out: ')[1])} */")
    for ind, row in zip(history.individuals, history.matrix, strict=True):
        freq = " ".join("1" if of[ind] == g else "0" for g in names) if groups else "1"
        lines.append(f"/* {_comment(ind)} */ {''.join(str(int(v)) for v in row)} {freq};")
    return "\n".join(lines) + "\n"
