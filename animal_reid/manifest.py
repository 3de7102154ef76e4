"""Which files in an output folder are ours: the manifest, the lock and the one overwrite policy every writer follows.

Every command that writes a folder (the corpus builder, the converters, ``identify --out``, training's run folder
and export, the ONNX export) goes through :class:`OutputFolder`:

* A folder is ours only if it carries a manifest we wrote (``.animal-reid-manifest.json``: the tool, and each file
  written with its size, modification time and SHA-256). A missing or empty folder is fine; a non-empty folder
  without a manifest (someone's project, or an output written before manifests existed) is refused, with a message
  saying how to move it aside.
* ``overwrite`` replaces only the files listed in the manifest, never anything else. A listed file the user has
  edited since (its hash differs) is kept aside as ``<name>.edited-<time>``, not lost; a file of ours that would
  land on a file of the user's moves the user's aside the same way. Without ``overwrite`` a folder holding a
  previous output is refused.
* One writer at a time: an exclusive ``flock`` on ``.animal-reid.lock`` inside the folder, held while the command
  runs and released by the kernel if the holder is killed. A second writer is refused with a message naming the
  holder (command, process id, host, start time).
* Files are written under a staging folder inside the output (:meth:`OutputFolder.staging`) and moved into place
  when complete (:meth:`OutputFolder.commit`), or recorded as they are written (:meth:`OutputFolder.record`, for
  long runs such as training). Either way they get the permissions of the user's umask (transformers writes
  ``model.safetensors`` as 0600, which other accounts cannot read).

:func:`replace_file` is the single-file form (an ONNX file): replaced only with ``overwrite``, atomically.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "FileRecord",
    "FolderLock",
    "Manifest",
    "OutputError",
    "OutputFolder",
    "OutputLockedError",
    "apply_umask",
    "describe_os_error",
    "file_sha256",
    "replace_file",
]

MANIFEST_NAME = ".animal-reid-manifest.json"
LOCK_NAME = ".animal-reid.lock"
STAGING_PREFIX = ".animal-reid-staging-"
MANIFEST_VERSION = 1
_UMASK_LOCK = threading.Lock()


class OutputError(Exception):
    """An output the writer must not use as it is; the message names the path and says what to do."""


class OutputLockedError(OutputError):
    """Another process is writing the same output."""


# ------------------------------------------------------------------------------------------------------------------
# small helpers
def describe_os_error(err: OSError, path: str | os.PathLike | None = None) -> str:
    """One line naming the path and the problem: "permission denied", "disk full", ..."""
    where = os.fspath(path) if path is not None else (err.filename or "?")
    reason = {
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOSPC: "no space left on the device (disk full)",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.ENOENT: "no such file or folder",
    }.get(err.errno, err.strerror or str(err))
    return f"{where}: {reason}"


def current_umask() -> int:
    """The process's umask (read by setting and restoring it, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give a file we wrote (or every file and folder under a folder) the permissions of the user's umask."""
    mask = current_umask()
    root = Path(path)
    paths = [root] if not root.is_dir() else [root, *root.rglob("*")]
    for p in paths:
        if p.is_symlink():
            continue
        mode = (0o777 if p.is_dir() else 0o666) & ~mask
        try:
            os.chmod(p, mode)
        except OSError as err:
            raise OutputError(f"cannot set the permissions of {describe_os_error(err, p)}") from err


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _is_ours_always(name: str) -> bool:
    """The manifest, the lock and staging folders: never the user's, never counted as content."""
    return name in (MANIFEST_NAME, LOCK_NAME) or name.startswith(STAGING_PREFIX)


# ------------------------------------------------------------------------------------------------------------------
# the manifest
@dataclass
class FileRecord:
    """One file we wrote: its size, modification time (ns) and SHA-256 when written."""

    size: int
    mtime_ns: int
    sha256: str
    #: other SHA-256s that are ours too (while a commit replaces a file: the one it replaces)
    also: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, path: Path) -> FileRecord:
        st = path.stat()
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=file_sha256(path))


@dataclass
class Manifest:
    """The files of one output folder that we wrote (paths relative to the folder, POSIX style)."""

    tool: str
    files: dict[str, FileRecord] = field(default_factory=dict)
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)

    @classmethod
    def read(cls, folder: Path) -> Manifest | None:
        """The folder's manifest, None when it has none; :class:`OutputError` when it cannot be read."""
        path = folder / MANIFEST_NAME
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            files = {str(k): FileRecord(**v) for k, v in raw["files"].items()}
            return cls(
                tool=str(raw["tool"]),
                files=files,
                created=raw.get("created", ""),
                updated=raw.get("updated", ""),
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise OutputError(
                f"{path}: not a readable manifest ({type(err).__name__}: {err}); move the folder aside or restore "
                "the file"
            ) from err

    def write(self, folder: Path) -> None:
        """Save the manifest atomically."""
        from animal_reid.io import write_atomic

        self.updated = _now()
        payload = {
            "format": "animal-reid output manifest",
            "version": MANIFEST_VERSION,
            "tool": self.tool,
            "created": self.created,
            "updated": self.updated,
            "files": {k: vars(v) for k, v in sorted(self.files.items())},
        }
        text = (json.dumps(payload, indent=1) + "\n").encode()
        path = folder / MANIFEST_NAME
        write_atomic(path, lambda f: f.write(text))
        apply_umask(path)

    def unchanged(self, folder: Path, rel: str) -> bool:
        """Whether the listed file is still as we wrote it (same size and time, or one of our hashes)."""
        rec, path = self.files[rel], folder / rel
        st = path.stat()
        if st.st_size == rec.size and st.st_mtime_ns == rec.mtime_ns:
            return True
        return file_sha256(path) in (rec.sha256, *rec.also)


# ------------------------------------------------------------------------------------------------------------------
# the lock
def _holder_text(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text(encoding="utf-8"))
        return f"{info['command']!r} (process {info['pid']} on {info['host']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class FolderLock:
    """An exclusive ``flock`` on ``<folder>/.animal-reid.lock`` holding who took it (released on close or death)."""

    def __init__(self, folder: Path, what: str):
        self.path = folder / LOCK_NAME
        self.what = what
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise OutputError(
                f"{self.what}: cannot create the lock file {describe_os_error(err, self.path)}"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputLockedError(
                f"{self.what} {self.path.parent} is being written by {_holder_text(self.path)}: wait for it to "
                "finish or choose another folder"
            ) from None
        info = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else "python",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": _now(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None


# ------------------------------------------------------------------------------------------------------------------
# the output folder
class OutputFolder:
    """An output folder written under the ownership policy (see the module docstring).

    Use as a context manager: entering creates the folder if needed, takes the lock and checks the folder
    (:class:`OutputError` when it must not be used); leaving releases the lock, removes staging folders and,
    when the block failed in a folder this object created and nothing else was put there, the folder itself.

    ``tool`` names the writer in the manifest and messages; ``what`` is how messages name the folder (``"--out"``);
    ``keep`` lists paths the output must not contain (the inputs); ``resume``: a previous output of ours is
    continued, not refused (training's ``--resume``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        tool: str,
        overwrite: bool = False,
        what: str = "output folder",
        keep: Sequence[str | os.PathLike] = (),
        resume: bool = False,
    ):
        self.path = Path(path).expanduser()
        self.tool = tool
        self.overwrite = overwrite
        self.what = what
        self.keep = list(keep)
        self.resume = resume
        self.previous: Manifest | None = None
        self.manifest = Manifest(tool=tool)
        self._lock = FolderLock(self.path, what)
        self._created = False
        self._lock_created = False
        self._stages: list[Path] = []

    # -- entering and leaving -------------------------------------------------------------------------------------
    def __enter__(self) -> OutputFolder:
        self.check_placement()
        self._make_folder()
        self._lock_created = not self._lock.path.exists()
        try:
            self._lock.acquire()
            self.check_contents()
        except BaseException:
            self._close(failed=True)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close(failed=exc_type is not None)

    def _make_folder(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"{self.what} {self.path} exists and is not a folder")
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(
                f"{self.what}: cannot create the folder {describe_os_error(err, self.path)}"
            ) from err

    def _close(self, failed: bool) -> None:
        """Release the lock; after a failure, leave no trace of ours in a folder that holds no output of ours."""
        for stage in self._stages:
            shutil.rmtree(stage, ignore_errors=True)
        self._stages = []
        ours_now = (self.path / MANIFEST_NAME).exists()
        if failed and self._lock_created and not ours_now:
            (self.path / LOCK_NAME).unlink(
                missing_ok=True
            )  # a refused user folder keeps no lock file of ours
        self._lock.release()
        if failed and self._created and not ours_now and not self.user_entries():
            try:
                self.path.rmdir()
            except OSError:
                pass

    # -- checks ---------------------------------------------------------------------------------------------------
    def check_placement(self) -> None:
        """The output must not hold the current folder or any input (its files would be replaced or read back)."""
        resolved = self.path.resolve()
        for what, p in [("the current folder", Path.cwd()), *(("the input", Path(k)) for k in self.keep)]:
            if Path(p).resolve().is_relative_to(resolved):
                raise OutputError(f"{self.what} {self.path} holds {what} ({p}): refusing to write over it")

    def user_entries(self) -> list[str]:
        """Names in the folder that are content (not our manifest, lock or staging folders)."""
        try:
            return sorted(p.name for p in self.path.iterdir() if not _is_ours_always(p.name))
        except FileNotFoundError:
            return []

    def check_contents(self) -> None:
        """Accept an empty folder, or one holding a previous output of ours with ``overwrite`` (or ``resume``)."""
        entries = self.user_entries()
        self.previous = Manifest.read(self.path)
        if not entries:
            return
        if self.previous is None:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            n = f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}"
            raise OutputError(
                f"{self.what} {self.path} is not empty ({n}: {shown}) and was not written by "
                f"animal-reid (no {MANIFEST_NAME}; an output written before manifests existed has none either): "
                f"choose a new or empty folder, or move it aside first (mv {self.path} {self.path}.old)"
            )
        if not (self.overwrite or self.resume):
            raise OutputError(
                f"{self.what} {self.path} holds the output of a previous {self.previous.tool} run: pass "
                "--overwrite to replace those files (files you added there are kept), or choose another folder"
            )
        if self.resume:
            self.manifest = Manifest(
                tool=self.tool, files=dict(self.previous.files), created=self.previous.created
            )

    # -- writing --------------------------------------------------------------------------------------------------
    def staging(self) -> Path:
        """A new empty folder inside the output to write into; :meth:`commit` moves its files into place."""
        stage = self.path / f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
        stage.mkdir()
        self._stages.append(stage)
        return stage

    def commit(self, stage: Path) -> list[str]:
        """Put ``stage``'s files in place of the previous output's: each new file moved in (a listed file it
        replaces removed, or set aside when edited; a file of the user's set aside), then listed files the new
        output lacks removed the same way. Returns the relative paths now listed.

        The manifest is written before the moves (listing old and new files, a replaced file under both hashes)
        and after them: a commit cut short by a kill or a full disk leaves every file it touched listed as ours.
        """
        self.check_contents()  # again: the folder may have changed while the files were computed
        new = sorted(
            p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file() or p.is_symlink()
        )
        staged = {rel: FileRecord.of(stage / rel) for rel in new}
        self._write_interim_manifest(staged)
        for rel in new:
            self._move_in(stage / rel, rel)
        self.remove_previous(keep=new)
        # a rename keeps a file's size and modification time: the records (and hashes) taken in the stage hold
        self.manifest = Manifest(tool=self.tool, files=staged, created=self.manifest.created)
        self.manifest.write(self.path)
        shutil.rmtree(stage, ignore_errors=True)
        self._stages = [s for s in self._stages if s != stage]
        return new

    def _write_interim_manifest(self, staged: dict[str, FileRecord]) -> None:
        """The manifest while a commit runs: previous files and staged ones, both hashes of a replaced file."""
        files = dict(self.previous.files) if self.previous is not None else {}
        for rel, rec in staged.items():
            old = files.get(rel)
            files[rel] = FileRecord(
                rec.size, rec.mtime_ns, rec.sha256, [old.sha256, *old.also] if old else []
            )
        Manifest(tool=self.tool, files=files, created=self.manifest.created).write(self.path)

    def _move_in(self, src: Path, rel: str) -> None:
        """Move one staged file to ``rel``; what is there goes only if it is ours and unedited."""
        dest = self.path / rel
        if dest.is_dir() and not dest.is_symlink():
            raise OutputError(f"{self.what}: cannot write {dest}: a folder of yours is in the way")
        if dest.exists() or dest.is_symlink():
            listed = self.previous is not None and rel in self.previous.files
            if not listed:
                aside = self.set_aside(rel, "is not listed in the manifest (yours)")
                logger.warning("kept your %s aside as %s before writing ours", dest, aside)
            elif not self.previous.unchanged(self.path, rel):
                aside = self.set_aside(rel, "was edited since it was written")
                logger.warning("%s was edited since %s wrote it: kept as %s", dest, self.previous.tool, aside)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        apply_umask(dest)

    def set_aside(self, rel: str, why: str) -> Path:
        """Rename a file we must not lose to ``<name>.edited-<time>`` (a free name); returns the new path."""
        src = self.path / rel
        aside = src.with_name(f"{src.name}.edited-{_stamp()}")
        n = 1
        while aside.exists():
            aside = src.with_name(f"{src.name}.edited-{_stamp()}-{n}")
            n += 1
        os.replace(src, aside)
        logger.info("%s %s: kept as %s", src, why, aside)
        return aside

    def remove_previous(self, keep: Iterable[str] = ()) -> None:
        """Remove the files the previous manifest lists (``keep`` excepted); edited ones are set aside instead."""
        if self.previous is None:
            return
        keep = set(keep)
        for rel in sorted(self.previous.files):
            path = self.path / rel
            if rel in keep or not path.is_file():
                continue
            if self.previous.unchanged(self.path, rel):
                path.unlink()
            else:
                aside = self.set_aside(rel, "was edited since it was written")
                logger.warning("%s was edited since %s wrote it: kept as %s", path, self.previous.tool, aside)
            self._remove_empty_parents(path.parent)
        self.previous = None
        self.manifest = Manifest(tool=self.tool)

    def _remove_empty_parents(self, folder: Path) -> None:
        while folder != self.path and folder.is_relative_to(self.path):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def record(self, rels: Iterable[str | os.PathLike]) -> None:
        """List files written in place (relative paths, or folders: every file under them) and save the manifest."""
        for rel in rels:
            p = self.path / rel
            files = [p] if not p.is_dir() else [f for f in p.rglob("*") if f.is_file()]
            for f in files:
                apply_umask(f)
                self.manifest.files[f.relative_to(self.path).as_posix()] = FileRecord.of(f)
        self.manifest.files = {k: v for k, v in self.manifest.files.items() if (self.path / k).is_file()}
        self.manifest.write(self.path)

    def forget(self, prefix: str) -> None:
        """Drop listed files under ``prefix`` (removed by us) from the manifest."""
        self.manifest.files = {
            k: v
            for k, v in self.manifest.files.items()
            if not (k == prefix or k.startswith(prefix.rstrip("/") + "/"))
        }
        self.manifest.write(self.path)

    def ours(self, rel: str) -> bool:
        """Whether ``rel`` (a file or folder) is listed in the manifest (a folder: every file under it)."""
        listed = self.manifest.files
        path = self.path / rel
        if path.is_dir():
            files = [f.relative_to(self.path).as_posix() for f in path.rglob("*") if f.is_file()]
            return all(f in listed for f in files)
        return rel in listed


# ------------------------------------------------------------------------------------------------------------------
# single files
def replace_file(
    path: str | os.PathLike,
    write: Callable[[BinaryIO], Any],
    *,
    overwrite: bool = False,
    tool: str,
    what: str = "output",
) -> Path:
    """Write one file atomically (an ONNX file): an existing file is replaced only with ``overwrite``.

    The parent folder's lock is held while writing; the file gets the umask's permissions and, when the folder
    carries a manifest, is listed in it (an edited listed file is set aside, not lost).
    """
    from animal_reid.io import write_atomic

    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder, not a file")
    if path.exists() and not overwrite:
        raise OutputError(
            f"{what} {path} exists: pass --overwrite to replace it, or choose another file name"
        )
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{what}: cannot create the folder {describe_os_error(err, folder)}") from err
    lock = FolderLock(folder, what)
    lock_created = not lock.path.exists()
    lock.acquire()
    try:
        manifest = Manifest.read(folder)
        rel = path.name
        if (
            manifest is not None
            and rel in manifest.files
            and path.is_file()
            and not manifest.unchanged(folder, rel)
        ):
            aside = path.with_name(f"{path.name}.edited-{_stamp()}")
            os.replace(path, aside)
            logger.warning("%s was edited since %s wrote it: kept as %s", path, manifest.tool, aside)
        try:
            write_atomic(path, write)
        except OSError as err:
            raise OutputError(f"{what}: cannot write {describe_os_error(err, path)}") from err
        apply_umask(path)
        if manifest is not None:
            manifest.files[rel] = FileRecord.of(path)
            manifest.write(folder)
    finally:
        if lock_created and not (folder / MANIFEST_NAME).exists():
            lock.path.unlink(missing_ok=True)  # a folder not ours (often the current one) keeps no lock file
        lock.release()
    return path
