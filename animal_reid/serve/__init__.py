"""The re-ID service: a FastAPI app over a growing catalogue of known individuals.

``store`` (SQLAlchemy 2 catalogue: individuals, sightings, embeddings; Alembic migrations in ``migrations/``),
``index`` (the in-memory search index, rebuilt from the store), ``batcher`` (micro-batching requests into
``model.encode``), ``app`` (routes and limits), ``page`` (the review page), ``handler`` (the Hub Inference
Endpoints handler), ``settings`` (the token variable and upload limits, no dependencies), ``cli``
(``animal-reid serve``). May import ``animal_reid.search``, ``animal_reid.openset``,
``animal_reid.identify`` and ``modeling``; nothing in the library imports it.
"""
