"""Resumable HTTP downloads with size / sha256 verification, and archive extraction.

Standard library only. A partial file ``<name>.part`` is resumed with an HTTP ``Range`` request; a server
that ignores ``Range`` (answers 200) restarts the file from zero. After the last byte the size and the
sha256 (when declared) are checked, and only then is the ``.part`` renamed to its final name.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


class DownloadError(RuntimeError):
    """A download that could not complete or did not verify."""


@dataclass(frozen=True)
class Download:
    """One file a source publishes: where it is and what it must look like once fetched.

    ``extract_to`` names the folder (relative to the data root) the archive's single top-level folder becomes,
    so a GitHub archive of a pinned commit (``repo-<sha>/``) lands where the source's reader looks
    (``repo-main/``). ``None`` extracts as the archive lays itself out.
    """

    url: str
    filename: str
    size: int | None = None
    sha256: str | None = None
    extract: bool = True
    extract_to: str | None = None
    mirrors: tuple[str, ...] = ()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, size: int | None, sha256: str | None) -> None:
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DownloadError(f"{path.name}: expected {size} bytes, got {actual}")
    if sha256 is not None:
        digest = sha256_file(path)
        if digest != sha256.lower():
            raise DownloadError(f"{path.name}: expected sha256 {sha256}, got {digest}")


def _fetch(url: str, part: Path, timeout_s: float, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "animal-reid-corpus/0.1"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # requested range not satisfiable: the part is already complete
            logger.info("%s: %d bytes already present", part.name, have)
            return
        raise
    with response:
        status = response.status
        if have and status == 206:
            mode = "ab"
            logger.info("resuming %s at byte %d", url, have)
        else:
            if have:
                logger.warning("%s ignored the Range request (HTTP %d): restarting from byte 0", url, status)
            have, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            open(part, mode) as fh,
            tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=part.name, disable=not progress
            ) as bar,
        ):
            for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                fh.write(block)
                bar.update(len(block))
        if total is not None and part.stat().st_size < total:
            raise DownloadError(f"{url}: connection closed at byte {part.stat().st_size} of {total}")


def download(
    spec: Download,
    dest_dir: Path,
    *,
    retries: int = 3,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> Path:
    """Fetch ``spec`` into ``dest_dir`` (resuming a partial file), verify it and return its path.

    A file already present and verified is not fetched again. Each retry resumes where the last one stopped;
    each mirror is tried in turn.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / spec.filename
    if final.exists():
        _verify(final, spec.size, spec.sha256)
        return final
    if spec.size is None and spec.sha256 is None:
        logger.warning(
            "%s declares neither size nor sha256: it is checked for completeness only", spec.filename
        )
    part = dest_dir / (spec.filename + ".part")
    errors: list[str] = []
    for url in (spec.url, *spec.mirrors):
        for attempt in range(1, retries + 1):
            try:
                _fetch(url, part, timeout_s, progress)
                if spec.size is not None and part.stat().st_size > spec.size:
                    part.unlink()  # a wrong file: resuming it could never verify
                    raise DownloadError(f"{spec.filename}: more bytes than the declared {spec.size}")
                _verify(part, spec.size, spec.sha256)
                part.replace(final)
                return final
            except DownloadError as err:
                if "sha256" in str(err):
                    part.unlink(missing_ok=True)
                errors.append(f"{url} (try {attempt}): {err}")
            except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as err:
                errors.append(f"{url} (try {attempt}): {err}")
            logger.warning("download failed: %s", errors[-1])
    raise DownloadError(f"could not download {spec.filename}:\n  " + "\n  ".join(errors))


def _safe_members_tar(archive: tarfile.TarFile, dest: Path):
    root = dest.resolve()
    for member in archive.getmembers():
        target = (dest / member.name).resolve()
        if not target.is_relative_to(root) or member.issym() or member.islnk():
            raise DownloadError(f"refusing archive member {member.name!r}: outside {dest} or a link")
        yield member


def extract(archive_path: Path, dest: Path, extract_to: str | None = None) -> Path:
    """Extract a .zip / .tar(.gz|.bz2|.xz) into ``dest``; optionally rename its single top folder.

    Returns the folder the archive's content is in. Members escaping ``dest`` are refused.
    """
    archive_path, dest = Path(archive_path), Path(dest)
    staging = dest / f".extract-{archive_path.name}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    name = archive_path.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive_path) as zf:
            root = staging.resolve()
            for info in zf.infolist():
                if not (staging / info.filename).resolve().is_relative_to(root):
                    raise DownloadError(f"refusing archive member {info.filename!r}: outside {dest}")
            zf.extractall(staging)
    elif name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        with tarfile.open(archive_path) as tf:
            tf.extractall(staging, members=list(_safe_members_tar(tf, staging)))
    else:
        raise DownloadError(
            f"unknown archive type {archive_path.name!r}: expected .zip or .tar[.gz|.bz2|.xz]"
        )
    entries = list(staging.iterdir())
    if extract_to is not None:
        if len(entries) != 1 or not entries[0].is_dir():
            raise DownloadError(
                f"{archive_path.name}: expected one top-level folder to rename to {extract_to!r}, "
                f"got {sorted(e.name for e in entries)}"
            )
        target = dest / extract_to
        if target.exists():
            shutil.rmtree(target)
        entries[0].rename(target)
        staging.rmdir()
        return target
    for entry in entries:
        target = dest / entry.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        entry.rename(target)
    staging.rmdir()
    return dest / entries[0].name if len(entries) == 1 else dest


def fetch_and_extract(spec: Download, root: Path, *, progress: bool = True, **kwargs) -> Path:
    """Download ``spec`` into ``root/_downloads`` and, for archives, extract it under ``root``."""
    path = download(spec, Path(root) / "_downloads", progress=progress, **kwargs)
    if not spec.extract:
        return path
    return extract(path, Path(root), spec.extract_to)
