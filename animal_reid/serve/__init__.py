"""The re-ID service: a FastAPI app over a growing catalogue of known individuals, with a review queue,
catalogue pages, calibrated bands, exports, backups and replicas (docs/serve.md).

Modules:

- ``app``: ``create_app``, the reviewer dependency, errors, the body-size limit, identify/embed/stats routes
- ``api_models``: the request bodies and typed answers of the catalogue routes (pydantic)
- ``routes_catalogue``: individuals, sightings, encounters, the change log and flags (``/v1/...``)
- ``routes_review``: batch upload, the queue, decisions and undo, groups (``/v1/batches``, ``/v1/queue``, ...)
- ``routes_admin``: calibration (``/v1/calibration``) and exports (``/v1/export``)
- ``routes_explain``: ``POST /v1/explain``, PAIR-X pictures and correspondences on a private copy of the model
- ``routes_pages``: the pages ``/``, ``/catalogue``, ``/individuals/{id}`` and ``/app-assets``
- ``pages``: the pages' HTML from ``static/app/`` and their Content-Security-Policy
- ``docs``: ``/docs`` and ``/redoc`` with their assets from ``static/docs/`` (no CDN)
- ``uploads``: upload checks from the image header, box parsing, embedding one photo
- ``service``: model, catalogue, index and batcher kept in step; ``sync`` with other replicas' writes
- ``store``: the ``Catalogue`` (SQLAlchemy 2): writes, each with its change-log rows; migrations
- ``store_reads``: the catalogue's reads (individuals, sightings, species, flags, index rows)
- ``schema``: the catalogue's tables, plain values, checks, errors (``NotFound``, ``Conflict``, ``Invalid``)
- ``changelog``: the ``changes`` table's writer, the write lock and NOTIFY
- ``changes``: the follower thread bringing in other replicas' writes (LISTEN, polling, change token)
- ``index``: the in-memory search index, one ``GalleryIndex`` per species
- ``batcher``: micro-batching requests into ``model.encode``
- ``reviewers``: the reviewers file (``name: token``), re-read when it changes
- ``settings``: the token variable, upload limits, species names (no optional dependency)
- ``review``: the ``ReviewQueue``: batches into queue items, live candidates and bands, decide and undo
- ``review_ingest``: reading a batch (photos, or a zip with MegaDetector or Camtrap DP) into encounters
- ``review_filing``: filing a decided item as sightings (compare-and-set claim) and undoing it
- ``review_groups``: proposed new individuals from discovery: accept, split, merge
- ``review_tables``: the review queue's tables (Alembic revision 0003)
- ``review_models``: the review routes' request bodies and answers
- ``calibration``: known / unsure / new bands fitted on the catalogue, refitted every N confirmed sightings
- ``exports``: the catalogue as CSV, COCO, Camtrap DP or capture histories
- ``backup``: backup of rows and photos to one archive; restore into an empty store
- ``catalogue_cli``: ``animal-reid catalogue backup|restore|calibrate``
- ``cli``: ``animal-reid serve``
- ``handler``: the Hugging Face Inference Endpoints handler copied into exports
- ``migrations/``: Alembic revisions 0001 (catalogue), 0002 (encounters, metadata, aliases, changes, flags),
  0003 (review queue)

May import ``animal_reid.search``, ``animal_reid.openset``, ``animal_reid.identify``, ``animal_reid.season``,
``animal_reid.explain`` and ``modeling``. The rest of the library imports only ``handler`` (``animal_reid.training.export``) and,
lazily, the two CLIs (``animal_reid.cli``).
"""
