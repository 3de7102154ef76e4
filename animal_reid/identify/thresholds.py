"""Open-set thresholds of identification: a number, a saved threshold JSON, the model's own, or ``gallery``.

A query whose best score is below its threshold is a new individual. :func:`resolve_threshold` turns what a caller
passes into an :class:`~animal_reid.openset.OpenSetThreshold` (checked), :data:`GALLERY_THRESHOLD` (calibrated by
:func:`gallery_threshold` once the gallery is embedded) or None (no verdicts).

A threshold JSON is either an ``OpenSetThreshold`` file or a decision-bands file written by ``animal-reid
calibrate`` (:class:`animal_reid.season.decisions.Bands`): its ``new_below`` per species is the new-individual
threshold, and its ``known_above`` rides along (``OpenSetThreshold.decision`` gives known / unsure / new).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..openset import OpenSetThreshold
from .inputs import ImageItem

logger = logging.getLogger(__name__)

THRESHOLD_FILE = "open_set_threshold.json"
GALLERY_THRESHOLD = "gallery"  # threshold value: calibrate on the gallery itself


def resolve_threshold(threshold, model_dir: Path | None) -> OpenSetThreshold | None:
    """``threshold`` (a number, a number as text, a threshold JSON path, an OpenSetThreshold, ``"gallery"`` or
    None: the one saved in ``model_dir``, if any) as a checked OpenSetThreshold, ``"gallery"`` or None."""
    if isinstance(threshold, OpenSetThreshold):
        return checked_threshold(threshold, "threshold")
    if hasattr(threshold, "to_open_set"):  # decision bands (animal_reid.season.decisions.Bands)
        return checked_threshold(threshold.to_open_set(), "threshold")
    if threshold is None:
        if model_dir is not None and (model_dir / THRESHOLD_FILE).is_file():
            logger.info("using the open-set threshold saved with the model: %s", model_dir / THRESHOLD_FILE)
            return load_threshold(model_dir / THRESHOLD_FILE)
        return None
    if isinstance(threshold, int | float):
        return checked_threshold(OpenSetThreshold(global_threshold=float(threshold)), "threshold")
    text = str(threshold)
    if text == GALLERY_THRESHOLD:
        return GALLERY_THRESHOLD  # calibrated on the gallery once it is embedded (`gallery_threshold`)
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return checked_threshold(OpenSetThreshold(global_threshold=value), "threshold")
    if Path(text).is_file():
        return load_threshold(Path(text))
    raise ValueError(
        f"threshold must be a number, an open-set threshold or decision-bands JSON file or {GALLERY_THRESHOLD!r}, "
        f"got {threshold!r}"
    )


def gallery_threshold(embeddings: np.ndarray, gallery: Sequence[ImageItem]) -> OpenSetThreshold | None:
    """Thresholds calibrated on queries simulated from the labelled gallery (per species where it has enough
    images); None, with a warning, when the gallery has a single identity per species and so nothing to calibrate."""
    try:
        species = [g.species or "" for g in gallery] if any(g.species for g in gallery) else None
        thr = OpenSetThreshold.fit_gallery(
            embeddings, [g.identity for g in gallery], species, [g.encounter for g in gallery]
        )
    except ValueError as err:
        logger.warning("threshold 'gallery': no verdicts, %s", err)
        return None
    per = ", ".join(f"{k} {v:.3f}" for k, v in sorted(thr.per_species.items()))
    logger.info("threshold 'gallery': global %.3f%s", thr.global_threshold, f"; {per}" if per else "")
    return thr


def load_threshold(path: Path) -> OpenSetThreshold:
    """The checked OpenSetThreshold saved in ``path`` (an OpenSetThreshold or a decision-bands JSON); ValueError
    naming the file when it is neither."""
    from ..season.decisions import Bands, is_bands

    def not_ours(err: Exception) -> ValueError:
        return ValueError(
            f"threshold file {path} is not an open-set threshold JSON ({type(err).__name__}: {err})"
        )

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise not_ours(err) from err
    if is_bands(data):  # a BandsError names the file and the field
        thr = Bands.from_dict(data, f"threshold file {path}").to_open_set()
    else:
        try:
            thr = OpenSetThreshold.from_dict(data)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise not_ours(err) from err
    return checked_threshold(thr, f"threshold file {path}")


def checked_threshold(thr: OpenSetThreshold, what: str, low: float = -math.inf, high: float = math.inf):
    """``thr`` if its global and per-species values are finite numbers in [low, high]; else ValueError."""
    values = {
        "global": thr.global_threshold,
        **{f"species {k!r}": v for k, v in (thr.per_species or {}).items()},
    }
    if getattr(thr, "known_above", None) is not None:
        values["global known_above"] = thr.known_above
    values.update(
        {
            f"species {k!r} known_above": v
            for k, v in (getattr(thr, "known_above_per_species", None) or {}).items()
        }
    )
    for name, v in values.items():
        try:
            ok = math.isfinite(float(v)) and low <= float(v) <= high
        except (TypeError, ValueError):
            ok = False
        if not ok:
            span = "a finite number" if math.isinf(low) else f"a cosine in [{low:g}, {high:g}]"
            raise ValueError(f"{what}: the {name} threshold must be {span}, got {v!r}")
    return thr
