"""Identify animals: rank the known individuals of a gallery for each query image, and flag new individuals.

Python API::

    from animal_reid.identify import BadImages, Identifier, read_gallery, read_queries
    ident = Identifier.from_pretrained("path/or/hub-id", cache_dir="~/.cache/animal_reid/embeddings")
    bad = BadImages("skip")  # or "raise"; without one, the first unusable image raises
    gallery, queries = read_gallery("gallery/", bad_images=bad), read_queries(["q1.jpg", "more/"], bad_images=bad)
    results = ident.identify(gallery, queries, top_k=5, threshold=0.45, bad_images=bad)
    write_results(results, "out/"); write_skipped(bad.skipped, "out/")

Command line::

    python -m animal_reid.identify --model DIR_OR_REPO --gallery GALLERY --queries Q [Q ...] --out OUTDIR \
        [--top-k 5] [--threshold 0.45 | thresholds.json | gallery] [--on-error skip|raise] [--overwrite] [-v]
        [--rerank local|pairx [--rerank-k 20] [--rerank-workers 1] [--rerank-time-budget S] [--rerank-fusion F.json]]
        [--explain DIR [--explain-top 3] [--explain-matches 10]]

A gallery is one of

* a folder per individual: ``GALLERY/<identity>/**/<image>`` (jpg, jpeg, png, bmp, webp, tif);
* a CSV with columns ``path,identity`` and optional ``species,encounter`` (paths relative to the CSV's folder);
* a built corpus directory (Parquet, see docs/CONTRACTS.md "Corpus"); ``--gallery-config`` picks the config
  (default ``all`` when present, else every config) and ``--gallery-split`` the splits (default all); boxes
  and rotations of the corpus are applied.

Queries are image files, folders of images, or CSVs with a ``path`` column and optional ``identity`` (then each
result says whether the top candidate is right, and match sheets mark candidates green / red).

Image matches are aggregated to individuals by their maximum score. A query whose best score is below the
threshold is a new individual. ``--threshold`` is a number or a JSON file written by
:class:`animal_reid.openset.OpenSetThreshold` (per-species thresholds use the species of the best match), or
``gallery``: thresholds calibrated per species on the labelled gallery itself, no held-out queries needed
(:meth:`~animal_reid.openset.OpenSetThreshold.fit_gallery`); without it, a model directory holding
``open_set_threshold.json`` provides one; otherwise no verdict is given (``null``).

Bad images: a gallery or query file that cannot give an embedding (missing, empty, truncated, corrupt, not an
image, an unsupported type such as GIF or HEIC, smaller than the processor's ``min_side``, a decompression bomb,
a box outside its image) is skipped with ``--on-error skip`` (the default): each is logged, listed with its
reason in ``OUTDIR/skipped.csv`` (``path,role,reason``) and counted in a summary line on stderr, and the run
writes results for every usable image. ``--on-error raise`` stops at the first one instead. Hidden files and
folders (``.name``) are ignored. Encoding runs in chunks; a chunk that hits a bad image is split in halves until
the bad image is alone, so clean data pays nothing for the check.

Embeddings are cached in ``--cache-dir`` under a key made of the model weights (the Hub commit for a Hub model,
a hash of the weight files for a directory), the modeling code (every ``*.py`` of the export and, when the installed
``modeling`` package is used, every ``*.py`` of it), the preprocessor configuration and the precision; each image is keyed
by its file path, size and modification time (bytes hash for corpus images) plus its box and rotation, so a
second run embeds only images it has not seen. The cache is saved after every chunk (a killed run keeps what it
embedded), written atomically, and checked when read: a truncated or corrupt cache file is reported in one
warning and rebuilt (see :class:`EmbeddingCache`).

Local re-ranking (``--rerank local``, API ``identify(..., rerank="local")`` or a
:class:`animal_reid.rerank.LocalReranker`): the top ``--rerank-k`` gallery images of each query by cosine
(within the query's species when both are known) are re-scored by verified SIFT matches inside the boxes, and
fused with the cosine by the fusion saved as ``rerank_fusion.json`` in the model directory or the gallery folder
(or ``--rerank-fusion``; without one a default weight is used, with a warning). Candidates then carry the fused
``score`` plus ``cosine`` and ``inliers``; the new-individual verdict compares the fused score with the fusion
file's own open-set threshold, or with ``--threshold`` (a threshold saved for plain cosines is not used). Local
features are cached beside the embeddings (``--cache-dir``/``local-*``); images without usable keypoints keep
their cosine and are counted. Each query also gets ``match_sheets/NNNN_<query>_matches.png`` with the verified
keypoint matches drawn between the query and each candidate. See docs/rerank.md.

PAIR-X re-ranking (``--rerank pairx``, ``identify(..., rerank="pairx")`` or a
:class:`animal_reid.rerank.PairxReranker`): the same shortlist re-scored by how the model's own intermediate
feature maps of the query and each candidate correspond (inverted residual mean of a homography, match
coverage), fused by ``rerank_pairx_fusion.json`` (fitted on validation by ``benchmarks/bench_pairx.py``); the
feature maps are cached beside the embeddings (``pairx-*``). ``--explain DIR`` writes, per query, a picture of
the correspondences with each of its top candidates and their data (docs/explain.md).

Outputs in ``--out``: ``results.csv`` (one row per query and rank), ``results.json`` (one record per query),
``skipped.csv`` and ``match_sheets/NNNN_<query>.png``, with the manifest ``.animal-reid-manifest.json`` listing
them (:mod:`animal_reid.manifest`). ``--out`` is locked for the whole run (a second run on it is refused, naming
the first) and the files are moved into place when the run is complete. A non-empty ``--out`` without our
manifest is refused; one holding an earlier run's output needs ``--overwrite``, which replaces only the files that
run listed (files you added are kept; listed files you edited are kept aside). Every option and path is checked
before the model is loaded; errors are one line ``error: <message>`` on stderr, exit status 2 for bad arguments
and 1 for failures (``-v`` adds the traceback).

Modules: :mod:`.inputs` (items, bad-image policy, gallery and query readers), :mod:`.cache` (the embedding cache
and its key), :mod:`.thresholds` (open-set thresholds), :mod:`.engine` (:class:`Identifier`, :class:`QueryResult`),
:mod:`.outputs` (results, skipped list, match sheets), :mod:`.cli` (the command line). Every public name is
re-exported here.
"""

import logging

# names outside __all__ are public too, as in the single module this package was (noqa: re-exports)
from ..io import SAVE_EVERY  # noqa: F401
from ..openset import NEW_INDIVIDUAL, OpenSetThreshold  # noqa: F401
from ..search import GalleryIndex  # noqa: F401
from .cache import EmbeddingCache, default_cache_dir, model_cache_key  # noqa: F401
from .cli import main, run
from .engine import Identifier, QueryResult
from .inputs import (  # noqa: F401
    IMAGE_EXTENSIONS,
    ON_ERROR,
    BadImageError,
    BadImages,
    ImageItem,
    SkippedImage,
    UsageError,
    read_gallery,
    read_queries,
)
from .outputs import OUTPUT_NAMES, SKIPPED_FIELDS, SKIPPED_FILE, write_results, write_skipped  # noqa: F401
from .thresholds import GALLERY_THRESHOLD, THRESHOLD_FILE, resolve_threshold  # noqa: F401

logger = logging.getLogger(__name__)

__all__ = [
    "ImageItem",
    "QueryResult",
    "SkippedImage",
    "BadImages",
    "BadImageError",
    "UsageError",
    "EmbeddingCache",
    "Identifier",
    "read_gallery",
    "read_queries",
    "write_results",
    "write_skipped",
    "model_cache_key",
    "run",
    "main",
]
