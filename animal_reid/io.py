"""On-disk and run-time helpers shared by identification, re-ranking and serving.

* :func:`write_atomic`: a file written under a temporary name, flushed and renamed into place (never half-written);
  :func:`remove_stale_temporaries` clears what killed runs left behind.
* :class:`PartFileCache`: the design both on-disk caches share (:class:`animal_reid.identify.EmbeddingCache`,
  :class:`animal_reid.rerank.LocalFeatureCache`): one folder per key, rows saved as they are computed to their own
  ``part-*.npz`` and folded into one main file, every file checked when read (:func:`read_npz`) and, when corrupt,
  reported in one warning, removed and computed again. The caches are optional: one that cannot be written (disk
  full, permission denied, a read-only file system) is reported in one warning naming it and the problem, and the
  run goes on without saving to it.
* :data:`SAVE_EVERY`: images computed between two saves of such a cache.
* :func:`progress_bar` and :class:`cv2_threads`: a progress bar shown only on a terminal, OpenCV's thread pool for
  a block.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "SAVE_EVERY",
    "CorruptCacheFile",
    "NoBar",
    "PartFileCache",
    "cv2_threads",
    "progress_bar",
    "read_npz",
    "remove_stale_temporaries",
    "write_atomic",
]

#: images computed between two saves of an on-disk cache (and the unit a bad image is searched for in)
SAVE_EVERY = 256


def write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(file)`` into a temporary file beside ``path``, flushed to disk, then renamed onto ``path``."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{time.time_ns()}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path, age_s: float = 3600.0) -> None:
    """Temporary files of :func:`write_atomic` left by killed runs (a live run renames its own within seconds)."""
    now = time.time()
    for tmp in folder.glob(".tmp-*"):
        try:
            if now - tmp.stat().st_mtime > age_s:
                tmp.unlink()
        except OSError:
            pass


# ------------------------------------------------------------------------------------------------------------------
# part-file caches
class CorruptCacheFile(Exception):
    """A cache file that cannot be trusted; the message says why."""


def read_npz(path: Path, names: Iterable[str], described: str) -> dict[str, np.ndarray]:
    """The arrays ``names`` of an ``.npz`` file, its checksums verified; raises :class:`CorruptCacheFile` (or
    ``FileNotFoundError``). ``described`` names the arrays expected in the message when some are missing."""
    names = list(names)
    try:
        with zipfile.ZipFile(path) as zf:  # CRCs cover the arrays' headers and data: any flipped byte shows
            damaged = zf.testzip()
        if damaged is not None:
            raise CorruptCacheFile(f"checksum mismatch in {damaged}")
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if not set(names) <= files:
                raise CorruptCacheFile(f"holds arrays {sorted(files)}, not {described}")
            return {k: z[k] for k in names}
    except (CorruptCacheFile, FileNotFoundError, PermissionError):
        raise
    except Exception as err:  # noqa: BLE001 - BadZipFile, EOFError, ValueError, OSError, MemoryError from a header
        raise CorruptCacheFile(f"{type(err).__name__}: {err}") from err


class PartFileCache:
    """Rows of one cache key in ``<root>/<key>/``: a main file (``MAIN``) plus ``part-*.npz`` files and ``meta.json``.

    Subclasses say what a file holds: :meth:`read_file` reads and checks one file (raising
    :class:`CorruptCacheFile`), :meth:`_remember` keeps what it read. This class lists and loads the files (a
    corrupt one is reported in one warning, ``CORRUPT_WARNING`` on the subclass's ``log``, removed and counted in
    ``n_rebuilt``), writes new rows to their own part file (:meth:`_write_part`, which writes ``meta.json`` once
    per cache object) and folds everything into the main file (:meth:`_write_main`). Every file is written
    atomically. The cache is optional: the first file that cannot be written or removed (``OSError``: disk full,
    permission denied, read-only) is reported in one warning (``UNUSABLE_WARNING``) and the object writes nothing
    more (``writable`` False); rows already computed stay in memory for the run.
    """

    MAIN = "main.npz"
    PART_GLOB = "part-*.npz"
    #: logged with the file and the reason when a file fails its checks
    CORRUPT_WARNING = "cache file %s is corrupt (%s): removing it"
    #: logged once with "<cache folder>: <problem>" when the cache cannot be written (or read)
    UNUSABLE_WARNING = "cannot %s the cache %s; the run goes on without it"
    log = logger

    @staticmethod
    def describe_error(err: OSError, path: Path) -> str:
        """``"<path>: <problem>"`` for an OSError (the caches use :func:`animal_reid.manifest.describe_os_error`)."""
        return f"{path}: {err.strerror or err}"

    def __init__(self, root: str | os.PathLike, key: str, meta: dict | None = None):
        self.dir = Path(root).expanduser() / key
        self.path = self.dir / self.MAIN
        self.meta = meta or {}
        self._files: list[Path] = []  # files whose rows are loaded (the main file replaces them)
        self._parts: list[Path] = []  # part files among them
        self.n_rebuilt = 0  # corrupt files dropped on load
        self._meta_written = False
        self.writable = True  # False once a write failed: the run goes on without saving

    def unusable(self, err: OSError, doing: str = "write") -> None:
        """Report (once per object) that the cache cannot be written (or read), and stop writing to it."""
        if self.writable:
            self.log.warning(self.UNUSABLE_WARNING, doing, self.describe_error(err, self.dir))
        self.writable = False

    def _remove(self, path: Path) -> None:
        """Remove one cache file; a failure makes the cache :meth:`unusable`."""
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            self.unusable(err)

    def read_file(self, path: Path) -> Any:
        """The checked contents of one cache file; raises :class:`CorruptCacheFile` (or ``FileNotFoundError``)."""
        raise NotImplementedError

    def _remember(self, content: Any) -> None:
        """Keep the rows :meth:`read_file` returned (keys already held win)."""
        raise NotImplementedError

    def _load(self) -> None:
        """Read the main file and the part files, oldest first; corrupt ones are reported and removed."""
        for path in [self.path, *sorted(self.dir.glob(self.PART_GLOB))]:
            if not path.is_file():
                continue
            try:
                content = self.read_file(path)
            except FileNotFoundError:  # compacted away by another run meanwhile
                continue
            except PermissionError as err:
                self.unusable(err, "read")
                continue
            except CorruptCacheFile as err:
                self.log.warning(self.CORRUPT_WARNING, path, err)
                self._remove(path)
                self.n_rebuilt += 1
                continue
            self._remember(content)
            self._files.append(path)
            if path != self.path:
                self._parts.append(path)

    @property
    def n_parts(self) -> int:
        return len(self._parts)

    def _write_part(self, arrays: dict[str, np.ndarray]) -> Path | None:
        """Save new rows at once to their own part file (a run killed later keeps them), then ``meta.json`` if
        this object has not written it yet; returns the part's path (None when the cache cannot be written)."""
        if not self.writable:
            return None
        part = self.dir / f"part-{time.time_ns():020d}-{os.getpid()}.npz"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(part, lambda f: np.savez(f, **arrays))
        except OSError as err:
            self.unusable(err)
            return None
        self._files.append(part)
        self._parts.append(part)
        self._write_meta()
        return part

    def _write_main(self, arrays: dict[str, np.ndarray]) -> None:
        """Write every row to the main file (atomically) and remove the part files it replaces."""
        if not self.writable:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, lambda f: np.savez(f, **arrays))
        except OSError as err:
            self.unusable(err)
            return
        for part in self._parts:
            self._remove(part)
        self._files, self._parts = [self.path], []

    def _write_meta(self) -> None:
        """``meta.json`` (what the key stands for), once per cache object."""
        if self.meta and not self._meta_written and self.writable:
            text = json.dumps(self.meta, indent=2, sort_keys=True, default=str).encode()
            try:
                write_atomic(self.dir / "meta.json", lambda f: f.write(text))
            except OSError as err:
                self.unusable(err)
                return
            self._meta_written = True


# ------------------------------------------------------------------------------------------------------------------
# progress and threads
class NoBar:
    """A progress bar that shows nothing."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, show: bool | None):
    """A tqdm bar (``show`` None: only when logging at INFO on a terminal)."""
    if show is None:
        show = sys.stderr.isatty() and logging.getLogger("animal_reid").getEffectiveLevel() <= logging.INFO
    if not show:
        return NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img")


class cv2_threads:  # noqa: N801 - used like a function: ``with cv2_threads(1): ...``
    """OpenCV's own thread pool set to ``n`` for a block (our threads parallelise; nested pools oversubscribe)."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import cv2

        self.old = cv2.getNumThreads()
        cv2.setNumThreads(self.n)

    def __exit__(self, *exc):
        import cv2

        cv2.setNumThreads(self.old)
