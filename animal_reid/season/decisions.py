"""Decisions with bands: known, unsure or new, from an encounter's fused best score and two thresholds per species.

A :class:`Band` holds ``new_below <= known_above``: a best score ``>= known_above`` is **known** (the individual is
the best candidate), one ``< new_below`` is **new**, one in between is **unsure** (the best candidate is shown for
review). :class:`Bands` holds one band per species and a default one, the fusion rule the scores were fused with,
the calibration targets and the rates the calibration expects (:mod:`animal_reid.season.calibration` fits them;
``animal-reid calibrate`` writes them).

The JSON file (``format`` :data:`BANDS_FORMAT`, ``version`` :data:`BANDS_VERSION`)::

    {"format": "animal-reid-decision-bands", "version": 1, "rule": "max",
     "targets": {"max_known_called_new": 0.05, "max_wrong_known": 0.05},
     "default": {"known_above": 0.71, "new_below": 0.55, "source": "all species", "expected": {...}},
     "species": {"nyala": {"known_above": 0.74, "new_below": 0.58, "source": "species", "expected": {...}}},
     "calibration": {...}}

``identify --threshold bands.json`` and the service read it through
:func:`animal_reid.identify.thresholds.resolve_threshold` as an :class:`~animal_reid.openset.OpenSetThreshold` whose
new-individual threshold is ``new_below`` (and which carries ``known_above`` for the unsure verdict).

:func:`decide` turns :class:`~animal_reid.season.matching.EncounterMatch` es into one
:class:`~animal_reid.season.annotations.Assignment` per annotation, never giving one known individual to two
(sub-)encounters that share a photo: sub-encounters are served best score first, and one whose best candidate a
co-occurring sub-encounter already holds takes its next candidate (decided by that candidate's score).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .annotations import Assignment
from .matching import RULES

__all__ = ["BANDS_FORMAT", "BANDS_VERSION", "Band", "Bands", "BandsError", "decide", "is_bands"]

BANDS_FORMAT = "animal-reid-decision-bands"
BANDS_VERSION = 1


class BandsError(ValueError):
    """A bands object or file that cannot be used; the message names the file and the field."""


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise BandsError(f"{what} must be a finite number, got {value!r}")
    return number


@dataclass
class Band:
    """Two thresholds on a fused best score: ``>= known_above`` known, ``< new_below`` new, between unsure."""

    known_above: float
    new_below: float
    source: str = (
        "species"  # "species": fitted on the species' own queries; "default": the default band's values
    )
    expected: dict = field(default_factory=dict)  # the calibration's rates and counts

    def __post_init__(self):
        self.known_above = _finite(self.known_above, "known_above")
        self.new_below = _finite(self.new_below, "new_below")
        if self.known_above < self.new_below:
            raise BandsError(f"known_above {self.known_above:g} is below new_below {self.new_below:g}")

    def decide(self, score: float | None) -> str:
        """``"known"``, ``"unsure"`` or ``"new"`` (no score: new)."""
        if score is None or math.isnan(score) or score < self.new_below:
            return "new"
        return "known" if score >= self.known_above else "unsure"

    def to_dict(self) -> dict:
        return {
            "known_above": self.known_above,
            "new_below": self.new_below,
            "source": self.source,
            "expected": self.expected,
        }

    @classmethod
    def from_dict(cls, d: Any, what: str) -> Band:
        if not isinstance(d, dict):
            raise BandsError(f"{what} must be an object with known_above and new_below, got {d!r}")
        missing = [k for k in ("known_above", "new_below") if k not in d]
        if missing:
            raise BandsError(f"{what} has no {' and '.join(missing)}")
        try:
            return cls(
                d["known_above"],
                d["new_below"],
                str(d.get("source", "species")),
                dict(d.get("expected") or {}),
            )
        except BandsError as err:
            raise BandsError(f"{what}: {err}") from err


@dataclass
class Bands:
    """Decision bands per species, with a default for the others."""

    default: Band
    species: dict[str, Band] = field(default_factory=dict)
    rule: str = "max"  # the fusion rule of the scores the bands were calibrated on
    targets: dict = field(default_factory=dict)  # max_known_called_new, max_wrong_known
    calibration: dict = field(default_factory=dict)  # how and on what they were fitted

    def band_for(self, species: str | None) -> Band:
        return self.species.get(str(species), self.default) if species is not None else self.default

    def decide(self, score: float | None, species: str | None = None) -> str:
        return self.band_for(species).decide(score)

    def to_dict(self) -> dict:
        return {
            "format": BANDS_FORMAT,
            "version": BANDS_VERSION,
            "rule": self.rule,
            "targets": self.targets,
            "default": self.default.to_dict(),
            "species": {k: v.to_dict() for k, v in sorted(self.species.items())},
            "calibration": self.calibration,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "bands") -> Bands:
        """The bands of a dict written by :meth:`to_dict`; :class:`BandsError` naming ``where`` and the field."""
        if not is_bands(d):
            raise BandsError(f'{where}: not a decision-bands object (no "format": {BANDS_FORMAT!r})')
        if d.get("version") != BANDS_VERSION:
            raise BandsError(
                f"{where}: version {d.get('version')!r}, this package reads version {BANDS_VERSION}"
            )
        if d.get("rule", "max") not in RULES:
            raise BandsError(f"{where}: rule {d.get('rule')!r} is not one of {', '.join(RULES)}")
        per = d.get("species") or {}
        if not isinstance(per, dict):
            raise BandsError(f'{where}: "species" must be an object of species -> band, got {per!r}')
        return cls(
            default=Band.from_dict(d.get("default"), f"{where}: default band"),
            species={str(k): Band.from_dict(v, f"{where}: band of species {k!r}") for k, v in per.items()},
            rule=str(d.get("rule", "max")),
            targets=dict(d.get("targets") or {}),
            calibration=dict(d.get("calibration") or {}),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def save(
        self,
        path: str | os.PathLike,
        overwrite: bool = False,
        tool: str = "animal-reid calibrate",
        what: str = "bands file",
    ) -> Path:
        """Write the JSON through :func:`animal_reid.manifest.replace_file` (an existing file only with ``overwrite``;
        :class:`~animal_reid.manifest.OutputError` naming ``what`` otherwise)."""
        from ..manifest import replace_file

        data = self.dumps().encode("utf-8")
        return replace_file(path, lambda f: f.write(data), overwrite=overwrite, tool=tool, what=what)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Bands:
        """The bands saved in ``path``; :class:`BandsError` naming the file when it is not a bands file."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BandsError(f"bands file {path}: cannot read it as JSON ({err})") from err
        return cls.from_dict(d, f"bands file {path}")

    def to_open_set(self):
        """The :class:`~animal_reid.openset.OpenSetThreshold` identify and the service use: threshold ``new_below``,
        ``known_above`` kept for the unsure verdict."""
        from ..openset import OpenSetThreshold

        return OpenSetThreshold(
            global_threshold=self.default.new_below,
            per_species={k: b.new_below for k, b in self.species.items()},
            objective=f"decision bands ({self.rule} fusion)",
            calibration={"bands": {"targets": self.targets, **self.calibration}},
            known_above=self.default.known_above,
            known_above_per_species={k: b.known_above for k, b in self.species.items()},
        )

    @classmethod
    def from_threshold(cls, thr) -> Bands:
        """Bands without an unsure band from an :class:`~animal_reid.openset.OpenSetThreshold`."""
        ka, kas = getattr(thr, "known_above", None), getattr(thr, "known_above_per_species", {}) or {}
        default = Band(ka if ka is not None else thr.global_threshold, thr.global_threshold, "default")
        species = {k: Band(kas.get(k, v), v) for k, v in thr.per_species.items()}
        return cls(default, species, calibration={"from": "open-set threshold"})


def is_bands(d: Any) -> bool:
    """Whether a loaded JSON value is a decision-bands object (its ``format`` field)."""
    return isinstance(d, dict) and d.get("format") == BANDS_FORMAT


def _shared_photos(matches: Sequence) -> dict[int, set[int]]:
    """Per match index, the other matches holding one of its photos."""
    by_photo: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(matches):
        for p in m.photos:
            by_photo[p].append(i)
    out: dict[int, set[int]] = defaultdict(set)
    for members in by_photo.values():
        for i in members:
            out[i].update(j for j in members if j != i)
    return out


def decide(matches: Sequence, bands: Bands) -> list[Assignment]:
    """One :class:`Assignment` per annotation of ``matches`` (:class:`~animal_reid.season.matching.EncounterMatch`),
    in the matches' order; see the module docstring for sub-encounters sharing a photo."""
    others = _shared_photos(matches)
    claimed: dict[int, str] = {}
    chosen: dict[int, tuple[str | None, float | None, str]] = {}

    def best_first(i: int) -> tuple[float, str]:
        score = matches[i].best[1]
        return (-score if score is not None else math.inf, matches[i].encounter)

    order = sorted(range(len(matches)), key=best_first)
    for i in order:
        m = matches[i]
        taken = {claimed[j] for j in others.get(i, ()) if j in claimed}
        cand, score = next(((c, s) for c, s in m.candidates if c not in taken), (None, None))
        decision = bands.decide(score, m.species)
        if decision == "known":
            claimed[i] = cand
        chosen[i] = (cand, score, decision)
    out = []
    for i, m in enumerate(matches):
        cand, score, decision = chosen[i]
        for aid in m.annotation_ids:
            individual = cand if decision == "known" else None
            out.append(Assignment(aid, decision, individual, score, cand, m.encounter))
    return out
