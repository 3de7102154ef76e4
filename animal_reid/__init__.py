"""Animal re-identification: identify individuals in photos with a Hub model, search galleries, score rankings.

The main entry points, importable from here (each is loaded on first use, so ``import animal_reid`` stays cheap
and imports neither torch nor transformers)::

    from animal_reid import Identifier, read_gallery, read_queries
    ident = Identifier.from_pretrained("path/or/hub-id")
    results = ident.identify(read_gallery("gallery/"), read_queries(["queries/"]), top_k=5)

* identify (:mod:`animal_reid.identify`): :class:`Identifier`, :func:`read_gallery`, :func:`read_queries`,
  :class:`BadImages`, :class:`QueryResult`, :func:`write_results`, :func:`write_skipped`, :class:`EmbeddingCache`;
* search and open set (:mod:`animal_reid.search`, :mod:`animal_reid.openset`): :class:`GalleryIndex`,
  :class:`OpenSetThreshold`, :data:`NEW_INDIVIDUAL`;
* metrics (:mod:`animal_reid.metrics`): :func:`evaluate_reid`, :func:`leave_one_out`, :func:`query_gallery`,
  :func:`rank_queries`, :func:`summarize`, :func:`encode_labels`, :func:`cosine_topk`, :class:`RankingResult`;
* the model (:mod:`modeling`): :class:`AnimalReIDConfig`, :class:`AnimalReIDModel`,
  :class:`AnimalReIDImageProcessor`; backbone weights (:mod:`animal_reid.weights`):
  :func:`load_imagenet_backbone`, :func:`load_backbone_file`;
* converters (:mod:`animal_reid.convert`): :func:`convert_miewid`, :func:`convert_megadescriptor`.

Command lines: ``animal-reid-identify``, ``animal-reid-build-corpus``, ``animal-reid-train``,
``animal-reid-convert-miewid``, ``animal-reid-convert-megadescriptor``, ``animal-reid-onnx-export`` and
``animal-reid serve`` (see pyproject.toml). Test fakes live in :mod:`animal_reid.testing`, outside this API.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it (imported on first access of the name).
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "Identifier",
            "read_gallery",
            "read_queries",
            "BadImages",
            "QueryResult",
            "write_results",
            "write_skipped",
            "EmbeddingCache",
        ),
        "animal_reid.identify",
    ),
    "GalleryIndex": "animal_reid.search",
    "OpenSetThreshold": "animal_reid.openset",
    "NEW_INDIVIDUAL": "animal_reid.openset",
    **dict.fromkeys(
        (
            "evaluate_reid",
            "leave_one_out",
            "query_gallery",
            "rank_queries",
            "summarize",
            "encode_labels",
            "cosine_topk",
            "RankingResult",
        ),
        "animal_reid.metrics",
    ),
    "load_imagenet_backbone": "animal_reid.weights",
    "load_backbone_file": "animal_reid.weights",
    "AnimalReIDConfig": "modeling",
    "AnimalReIDModel": "modeling",
    "AnimalReIDImageProcessor": "modeling",
    "convert_miewid": "animal_reid.convert",
    "convert_megadescriptor": "animal_reid.convert",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the module defining a public name on first access, and keep the name here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
