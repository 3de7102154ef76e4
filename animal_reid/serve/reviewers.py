"""Named reviewers: who may write to the catalogue, and under which name their changes are logged.

The operator keeps a reviewers file, one reviewer per line::

    # name: token          (lines starting with # are comments)
    Ana Ruiz: 3f9c0d1e2b...
    Field laptop 2: 77aa41...

The name is everything before the first ``:``, the token everything after it (both trimmed); tokens must be at
least 16 characters and unique, names unique. The file is read again when it changes (its mtime), so a reviewer is
added or removed without restarting the service; a file that no longer parses keeps the last good list and logs one
line naming the line that is wrong. The ``ANIMAL_REID_TOKEN`` variable still works and writes as ``operator``.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
ENV_REVIEWER = "operator"


class ReviewersError(ValueError):
    """A reviewers file that cannot be used: one line naming the file and line."""


def parse_reviewers(text: str, where: str = "reviewers file") -> dict[str, str]:
    """{token: name} from the reviewers file's text; ReviewersError naming the line for anything wrong."""
    out: dict[str, str] = {}
    names: set[str] = set()
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        name, token = name.strip(), token.strip()
        if not sep or not name or not token:
            raise ReviewersError(f"{where}:{n}: expected 'name: token', got {line[:40]!r}...")
        if len(token) < MIN_TOKEN_CHARS:
            raise ReviewersError(f"{where}:{n}: {name}'s token is shorter than {MIN_TOKEN_CHARS} characters")
        if token in out:
            raise ReviewersError(f"{where}:{n}: {name} has the same token as {out[token]}")
        if name.lower() in names:
            raise ReviewersError(f"{where}:{n}: the name {name!r} is given twice")
        out[token] = name
        names.add(name.lower())
    return out


class Reviewers:
    """The tokens that may write and their reviewers' names: from a reviewers file (re-read when it changes)
    and/or one operator token (``ANIMAL_REID_TOKEN``)."""

    def __init__(self, path: str | os.PathLike | None = None, operator_token: str | None = None):
        self.path = Path(path) if path is not None else None
        self.operator_token = operator_token or None
        self._tokens: dict[str, str] = {}
        self._mtime: float | None = None
        self._lock = threading.Lock()
        if self.path is not None:
            self._load(first=True)

    @property
    def enabled(self) -> bool:
        """Whether any token may write (else the catalogue is read-only)."""
        return self.operator_token is not None or self.path is not None

    def names(self) -> list[str]:
        self._reload_if_changed()
        with self._lock:
            return sorted(set(self._tokens.values()))

    def who(self, token: str) -> str | None:
        """The reviewer's name for ``token``, or None when it may not write (compared in constant time)."""
        self._reload_if_changed()
        given = token.strip().encode()
        found = None
        if self.operator_token is not None and hmac.compare_digest(given, self.operator_token.encode()):
            found = ENV_REVIEWER
        with self._lock:
            for known, name in self._tokens.items():  # every token compared: no early exit to time
                if hmac.compare_digest(given, known.encode()):
                    found = name
        return found

    def _load(self, first: bool = False) -> None:
        try:
            st = self.path.stat()
            tokens = parse_reviewers(self.path.read_text(encoding="utf-8"), str(self.path))
        except OSError as err:
            msg = f"{self.path}: cannot read the reviewers file: {err.strerror or err}"
            if first:
                raise ReviewersError(msg) from None
            logger.warning("%s (keeping the last good list)", msg)
            return
        except (ReviewersError, UnicodeDecodeError) as err:
            if first:
                raise ReviewersError(str(err)) from None
            logger.warning("%s (keeping the last good list)", err)
            return
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and first:
            logger.warning("%s is readable by other users of this machine (chmod 600 it)", self.path)
        with self._lock:
            self._tokens, self._mtime = tokens, st.st_mtime
        if not first:
            logger.info("%s: reviewers reloaded (%d)", self.path, len(tokens))

    def _reload_if_changed(self) -> None:
        if self.path is None:
            return
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            mtime = None
        if mtime != self._mtime:
            self._load()
            with (
                self._lock
            ):  # a file that failed to load is not read (nor its warning logged) again until it changes
                self._mtime = mtime
