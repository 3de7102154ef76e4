"""A season of field photos to a catalogue: ingest, encounters, calibrated decisions, discovery, exports.

* :mod:`animal_reid.season.annotations`: the annotation table every input becomes, and the assignment each
  annotation gets back (known / unsure / new).
* ingest: :mod:`~animal_reid.season.ingest` (folders of photos), :mod:`~animal_reid.season.ingest_exif` (EXIF date,
  GPS, camera, displayed size), :mod:`~animal_reid.season.ingest_megadetector`, :mod:`~animal_reid.season.
  ingest_tables` (COCO, CSV), :mod:`~animal_reid.season.camtrapdp` (Camtrap DP read / validate / write, with
  ``camtrapdp_schema``, ``camtrapdp_package``, ``camtrapdp_write``, ``camtrapdp_source``).
* :mod:`~animal_reid.season.encounters` (grouping by camera and time, two animals of one photo apart),
  :mod:`~animal_reid.season.matching` (encounters against the catalogue, fused, viewpoint-aware),
  :mod:`~animal_reid.season.decisions` (known / unsure / new bands) and :mod:`~animal_reid.season.calibration`.
* :mod:`~animal_reid.season.discovery` (new animals clustered, no N x N matrix) and
  :mod:`~animal_reid.season.clustering_quality` (ARI, AMI, pairwise precision / recall).
* exports: :mod:`~animal_reid.season.exports` (``export_all``), ``exports_tables`` (CSV, COCO, coarsening),
  ``exports_capture`` (capture histories, Program MARK); :mod:`~animal_reid.season.report` (the HTML report).
* :mod:`~animal_reid.season.pipeline` (the steps chained) and the commands ``ingest_cli``, ``calibrate_cli``,
  ``season_cli`` (``animal-reid ingest | calibrate | season``).
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
