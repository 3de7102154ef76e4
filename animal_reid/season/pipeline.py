"""The season, end to end in the library: annotations and a catalogue in, decisions and proposed new individuals out.

Steps (each a function, so a benchmark can embed once and try settings on the embeddings):

1. :func:`embed_annotations`: the model's embedding of each annotation's crop (the identify machinery, with its
   on-disk cache, so a second run embeds only new photos); unusable photos are reported, not fatal.
2. :func:`decide_season`: encounters (:func:`~animal_reid.season.encounters.group_encounters` where the input
   names none), each matched as one against the catalogue (fusion rule, viewpoint-aware or not), and a decision per
   annotation from the calibrated bands: known / unsure / new.
3. :func:`discover_new`: the annotations called new are clustered into proposed new individuals
   (:func:`~animal_reid.season.discovery.discover`: a kNN graph, one encounter starts as one cluster, two animals of
   one photo never join), at a similarity threshold per species: by default the species' ``known_above`` band, the
   score at which the calibration calls two photos the same known animal.

:func:`season_assignments` chains the last two for the ``animal-reid season`` command and the benchmark.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .annotations import Annotation, Assignment

logger = logging.getLogger(__name__)

__all__ = ["SeasonSettings", "decide_season", "discover_new", "embed_annotations", "season_assignments"]


@dataclass
class SeasonSettings:
    """The choices a season run makes (the benchmark fixes them on a validation season)."""

    fusion: str = "max"  # how an encounter's scores are fused (animal_reid.season.matching.RULES)
    viewpoint_aware: bool = True  # compare only compatible viewpoints (left flank never with right)
    gap_s: float = 600.0  # encounter grouping: largest gap between photos of one camera and species
    cluster_threshold: float | None = None  # discovery similarity; None: each species' known_above band ...
    cluster_offset: float = 0.0  # ... plus this
    cluster_k: int = 10  # neighbours per annotation in discovery's graph


def embed_annotations(identifier, annotations: Sequence[Annotation], bad_images=None):
    """``(kept, embeddings)``: indices of the annotations whose crop could be embedded and their unit rows.

    ``identifier`` is an :class:`animal_reid.identify.Identifier`; ``bad_images`` an
    :class:`animal_reid.identify.BadImages` collecting the skipped ones (default: skip and log)."""
    from animal_reid.identify import BadImages, ImageItem

    bad = bad_images if bad_images is not None else BadImages("skip")
    items = [
        ImageItem(a.photo, a.annotation_id, a.individual, bbox=a.box, theta=a.theta, species=a.species)
        for a in annotations
    ]
    kept, rows = identifier.embed_usable(items, bad, "season")
    return list(kept), np.asarray(rows, dtype=np.float32).reshape(len(kept), -1)


def _with_encounters(annotations: Sequence[Annotation], gap_s: float) -> list[Annotation]:
    """The annotations with encounters: grouped by camera and time where the input names none."""
    from .encounters import group_encounters

    return group_encounters(annotations, gap_s=gap_s)


def decide_season(annotations, embeddings, catalogue, bands, settings: SeasonSettings | None = None):
    """``(annotations with encounters, assignments, matches)``: every annotation matched by encounter against
    ``catalogue`` (a :class:`~animal_reid.season.matching.MatchCatalogue`) and decided by ``bands``."""
    from .decisions import decide
    from .matching import match_encounters

    settings = settings or SeasonSettings()
    anns = _with_encounters(annotations, settings.gap_s)
    if not settings.viewpoint_aware:
        anns = [dataclasses.replace(a, viewpoint=None) for a in anns]
    matches = match_encounters(anns, embeddings, catalogue, rule=settings.fusion)
    assignments = decide(matches, bands)
    by_id = {a.annotation_id: a for a in assignments}
    return anns, [by_id[a.annotation_id] for a in anns], matches


def discover_new(annotations: Sequence[Annotation], embeddings, assignments: Sequence[Assignment], bands,
                 settings: SeasonSettings | None = None) -> list[Assignment]:  # fmt: skip
    """The assignments with each ``new`` annotation given a proposed new individual (``new:<species>:<n>``):
    discovery per species over the annotations called new, encounters kept together, photos' animals apart."""
    from .discovery import discover, proposed_ids

    settings = settings or SeasonSettings()
    emb = np.asarray(embeddings, dtype=np.float32)
    out = list(assignments)
    new_rows = [i for i, a in enumerate(assignments) if a.decision == "new"]
    by_species: dict[str, list[int]] = {}
    for i in new_rows:
        by_species.setdefault(annotations[i].species or "", []).append(i)
    for species, rows in sorted(by_species.items()):
        threshold = settings.cluster_threshold
        if threshold is None:
            threshold = bands.band_for(species or None).known_above + settings.cluster_offset
        threshold = min(1.0, max(-1.0, float(threshold)))
        labels = discover(
            emb[rows],
            float(threshold),
            must_link_groups=[assignments[i].encounter for i in rows],  # sub-encounters: one animal each
            cannot_link=[annotations[i].photo for i in rows],
            k=settings.cluster_k,
            conflicts="split",
        )
        ids = proposed_ids(labels, [species or "unknown"] * len(rows))
        for i, ident in zip(rows, ids, strict=True):
            out[i] = dataclasses.replace(out[i], individual=ident)
    return out


def season_assignments(annotations: Sequence[Annotation], embeddings, catalogue, bands,
                       settings: SeasonSettings | None = None) -> tuple[list[Annotation], list[Assignment]]:  # fmt: skip
    """:func:`decide_season` then :func:`discover_new`: ``(annotations with encounters, assignments)``, in the
    order of ``annotations`` (encounter grouping keeps it), so ``embeddings`` rows stay aligned."""
    anns, assignments, _ = decide_season(annotations, embeddings, catalogue, bands, settings)
    return anns, discover_new(anns, embeddings, assignments, bands, settings)
