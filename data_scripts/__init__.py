"""Build the multispecies re-ID corpus: source declarations, validation, seeded splits, Parquet + card.

``python -m data_scripts.build --sources synthetic --out corpus/synthetic`` builds the embedded default;
``--sources real`` builds the six sources in ``$REID_DATA_ROOT`` (default ``../shared/data``); ``--sources real8``
adds humpback flukes (HumpbackWhaleID) and cat faces (Cat-Faces-Identification).
"""

from .schema import SPECIES, Record, Species
from .splits import SplitConfig, stable_hash

__all__ = ["SPECIES", "Record", "Species", "SplitConfig", "build", "main", "stable_hash"]


def __getattr__(name: str):
    # `build` is imported lazily so that `python -m data_scripts.build` does not import it twice
    if name in ("build", "main", "BuildResult"):
        from . import build as _build

        return getattr(_build, name)
    raise AttributeError(name)
