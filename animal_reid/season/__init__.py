"""A season of field photos to a catalogue: ingest, encounters, calibrated decisions, discovery, exports.

* :mod:`animal_reid.season.annotations`: the annotation table every input becomes, and the assignment each
  annotation gets back (known / unsure / new).
"""

from .annotations import (
    ASSIGNMENT_FIELDS,
    DECISIONS,
    FIELDS,
    Annotation,
    AnnotationError,
    Assignment,
    annotations_csv,
    read_annotations,
)

__all__ = [
    "ASSIGNMENT_FIELDS",
    "DECISIONS",
    "FIELDS",
    "Annotation",
    "AnnotationError",
    "Assignment",
    "annotations_csv",
    "read_annotations",
]
