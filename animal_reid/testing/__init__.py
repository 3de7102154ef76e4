"""Test fakes and helpers, kept out of the user API: nothing in the library imports this package.

* :mod:`animal_reid.testing.hub_emulator`: a local Hugging Face Hub emulator, so that pushes and reads of models
  and datasets run offline (also ``python -m animal_reid.testing.hub_emulator --root DIR --port N``).
* :mod:`animal_reid.testing.serve`: helpers for testing the re-ID service for real (a tiny model, generated
  photos, a uvicorn thread, a throwaway PostgreSQL server).
* :mod:`animal_reid.testing.images`: generated photos (JPEGs carrying EXIF orientation and other tags).

Used by ``tests/`` and ``benchmarks/``.
"""
