"""The benchmark harness: one script per question, each measuring one part of animal-reid on this machine.

Every top-level module here but ``report.py`` and ``common.py`` is a command-line script with a ``main(argv)`` and
an ``argparse`` parser (``--help`` says what it measures and how); ``reid/`` is the harness behind
``reid_real.py``. The package is installed with the project (``pip install -e .``), so a script imports the shared
modules (``benchmarks.report``, ``benchmarks.common``, ``benchmarks.reid``) and runs from the repository root
either way:

    python benchmarks/bench_embed.py --help
    python -m benchmarks.bench_embed --device cuda

Scripts that need an optional dependency (onnxruntime, faiss, fastapi, accelerate, ...) import it only when they
run and, when it is missing, say in one line which extra to install. ``benchmarks.report`` holds the common tail:
the machine description, the atomic writing of results (JSON, Markdown) and the printed summary tables. Results
the README and BENCHMARKS.md quote are in ``benchmarks/results/``; the benchmark and ablation configs in
``benchmarks/configs/``; the GPU run script in ``benchmarks/gpu/``.
"""
