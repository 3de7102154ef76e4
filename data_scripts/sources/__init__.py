"""Source declarations. Importing this package registers every declared source in :data:`SOURCES`."""

from . import local, public, synthetic  # noqa: F401  (registration side effect)
from .base import SOURCES, Source, SourceError, SourceInfo, get_source, is_inside, register
from .importers import CocoSource, MiewIDCsvSource, RowError, coco_source, miewid_source
from .local import LOCAL_SOURCES
from .synthetic import Synthetic, SyntheticConfig

__all__ = [
    "LOCAL_SOURCES",
    "SOURCES",
    "CocoSource",
    "MiewIDCsvSource",
    "RowError",
    "Source",
    "SourceError",
    "SourceInfo",
    "Synthetic",
    "SyntheticConfig",
    "coco_source",
    "get_source",
    "is_inside",
    "miewid_source",
    "register",
]
