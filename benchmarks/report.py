"""The common tail of the benchmark scripts: describe the machine, write the results, print the summary.

A benchmark measures, then ends the same way every time: its results written as JSON (and, for some, as a
Markdown page beside it), atomically, so an interrupted or concurrent run never leaves half a file; and a
summary printed as Markdown tables under a one-line title. :func:`finish` does that whole tail;
:func:`require_extra` is the one-line answer of a benchmark whose optional dependency is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from animal_reid import extras
from animal_reid.io import write_atomic

REPO = Path(__file__).resolve().parents[1]


def require_extra(extra: str, *modules: str) -> None:
    """Exit with ``animal_reid.extras``' one-line message when ``extra`` is not installed.

    ``extra``'s modules are those :data:`animal_reid.extras.EXTRA_MODULES` lists; ``modules`` (import names) are
    more of that extra's packages this benchmark needs (e.g. ``httpx`` of ``dev``).
    """
    missing = extras.missing_modules(extra) if extra in extras.EXTRA_MODULES else []
    missing += [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        script = Path(sys.argv[0]).resolve()
        command = str(script.relative_to(REPO)) if script.is_relative_to(REPO) else script.name
        raise SystemExit("error: " + extras.extra_message(command, extra))


def lscpu_model(default: str) -> str:
    """The CPU's ``Model name`` as ``lscpu`` reports it, or ``default``; OSError where there is no lscpu."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return next(
        (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), default
    )


def cpu_description() -> str:
    """``"<CPU model>, nproc=<cores>, <RAM> GiB RAM"``: the machine the CPU-only benchmarks ran on."""
    model = platform.processor() or "?"
    try:
        model = lscpu_model(model)
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return f"{model}, nproc={os.cpu_count()}, {mem_gb:.0f} GiB RAM"


def machine_description() -> str:
    """``"<cores> cores, <CPU model>[, GPU <name>]"``: the machine the embedding benchmarks ran on."""
    import torch

    try:
        name = lscpu_model("?")
    except OSError:
        name = platform.processor()
    desc = f"{os.cpu_count()} cores, {name}"
    if torch.cuda.is_available():
        desc += f", GPU {torch.cuda.get_device_name(0)}"
    return desc


def write_text(path: str | Path, text: str) -> None:
    """``text`` (UTF-8) at ``path``, atomically: a reader sees the old file or the whole new one."""
    write_atomic(Path(path), lambda f: f.write(text.encode("utf-8")))


def write_json(
    path: str | Path, data: Any, *, newline: bool = False, default: Callable | None = None
) -> None:
    """``data`` as JSON indented by 2 at ``path``, atomically; ``newline`` ends the file with one; ``default``
    as for ``json.dumps``."""
    write_text(path, json.dumps(data, indent=2, default=default) + ("\n" if newline else ""))


def write_results(
    json_path: str | Path,
    results: Any,
    markdown: str,
    *,
    newline: bool = False,
    default: Callable | None = None,
) -> None:
    """``results`` at ``json_path`` (see :func:`write_json`) and the ``markdown`` page beside it (``.md``), parent
    folders created."""
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, results, newline=newline, default=default)
    write_text(path.with_suffix(".md"), markdown + ("\n" if newline else ""))


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table: the header row, its ``|---|`` separator, then one line per row (cells as ``str``)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def print_summary(title: str, *tables: str) -> None:
    """A blank line, ``title``, then the tables, a blank line between two."""
    print(f"\n{title}")
    print("\n\n".join(tables))


def finish(results: dict, json_out: Path | None, title: str, *tables: str) -> dict:
    """The common tail: print the summary, write ``results`` to ``json_out`` (when given), return them."""
    print_summary(title, *tables)
    if json_out:
        write_json(json_out, results)
    return results
