"""The optional dependencies (pyproject's ``[project.optional-dependencies]``): which are installed, and the one-line
error a command gives when the extra it needs is missing.

A command line imports an extra's packages only once it runs, so ``--help`` works on the base install, and a
missing extra reads ``error: animal-reid serve needs the serve extra: pip install "animal-reid[serve]"`` rather than
a traceback. Nothing here imports the packages it checks.
"""

from __future__ import annotations

import importlib.util
import sys

#: The modules a command needs from each extra (import names, not distribution names).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "train": ("accelerate", "datasets", "yaml"),
    "data": ("datasets", "pyarrow", "yaml"),
    "search": ("faiss", "sklearn"),
    "onnx": ("onnx", "onnxruntime"),
    "serve": ("fastapi", "uvicorn", "sqlalchemy", "alembic"),
}


class MissingExtraError(RuntimeError):
    """A command needs an optional extra that is not installed; the message is the one line to show."""


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (an empty list when the extra is installed)."""
    if extra not in EXTRA_MODULES:
        raise KeyError(f"unknown extra {extra!r}; expected one of {sorted(EXTRA_MODULES)}")
    return [name for name in EXTRA_MODULES[extra] if not _importable(name)]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that fails, or a module whose __spec__ is unset
        return False


def extra_message(command: str, extra: str) -> str:
    """The one-line message of a missing extra, without the ``error:`` prefix."""
    return f'{command} needs the {extra} extra: pip install "animal-reid[{extra}]"'


def require_extra(command: str, extra: str) -> None:
    """Raise :class:`MissingExtraError` when a module of ``extra`` is missing, naming ``command`` and the extra."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(extra_message(command, extra))


def exit_without_extra(command: str, extra: str) -> None:
    """For command lines: print ``error: <the one-line message>`` to stderr and exit with status 1 when a module
    of ``extra`` is missing."""
    try:
        require_extra(command, extra)
    except MissingExtraError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
