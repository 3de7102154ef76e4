"""The real-photo benchmarks (tables 1-5) that ``benchmarks/reid_real.py`` runs: its config, corpora, harness,
one module per table, the runner, the plots and the results page. See docs/benchmarks_real.md."""
