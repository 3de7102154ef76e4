"""Source declarations. Importing this package registers every declared source in :data:`SOURCES`."""

from . import catfaces, humpback, local, public, synthetic  # noqa: F401  (registration side effect)
from .base import SOURCES, Source, SourceError, SourceInfo, get_source, is_inside, register
from .importers import CocoSource, MiewIDCsvSource, RowError, coco_source, miewid_source
from .local import LOCAL_SOURCES
from .synthetic import Synthetic, SyntheticConfig
from .wildlife import WildlifeDatasetsSource, wildlife_source

REAL8_SOURCES: tuple[str, ...] = (*LOCAL_SOURCES, "humpbackwhaleid", "catfaces")
"""The eight sources in ``../shared/data``: the six of :data:`LOCAL_SOURCES` (group ``real``, kept as it was so
earlier commands build the same corpus) plus humpback flukes and cat faces (group ``real8``)."""

__all__ = [
    "LOCAL_SOURCES",
    "REAL8_SOURCES",
    "SOURCES",
    "CocoSource",
    "MiewIDCsvSource",
    "RowError",
    "Source",
    "SourceError",
    "SourceInfo",
    "Synthetic",
    "SyntheticConfig",
    "WildlifeDatasetsSource",
    "coco_source",
    "get_source",
    "is_inside",
    "miewid_source",
    "register",
    "wildlife_source",
]
