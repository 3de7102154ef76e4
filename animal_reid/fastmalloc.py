"""A memory allocator that keeps freed pages, for CPU training.

glibc's malloc hands every large block (over 32 MB: each activation of a 224-px batch) back to the kernel when it
is freed and takes it again, zeroed, page by page, on the next step. On the 2-core machine this project is sized
for, that page-fault work was 45% of a training step's CPU time (`sys` time), and more with two runs at once.
jemalloc told never to return memory (``dirty_decay_ms:-1``) keeps those pages; where jemalloc is not installed,
glibc's transparent huge pages (``glibc.malloc.hugetlb=1``, glibc 2.35+) cut the number of faults instead.
Measured (BENCHMARKS.md §2c): Lite0, batch 64, 224 px, one thread, two runs at once: 15.7 s per step with glibc's
defaults, 9.6-11.4 s with huge pages, 8.1-9.0 s with jemalloc.

The price is memory: a process keeps its peak footprint until it exits (a 224-px Lite0 run at batch 64: about
6.9 GB resident under jemalloc against 5.3 GB under glibc).

Both are set in the environment of a new process (the loader reads them at start), so entry points call
:func:`reexec_with_fast_malloc` first thing, and launchers pass :func:`fast_malloc_env` to their subprocesses.
``ANIMAL_REID_MALLOC=system`` keeps glibc's defaults. Debian/Ubuntu: ``apt-get install libjemalloc2``.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import platform
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

SWITCH = "ANIMAL_REID_MALLOC"  # "system": leave the allocator alone
APPLIED = "ANIMAL_REID_MALLOC_APPLIED"  # set in the re-executed process, so it never loops
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
)


def find_jemalloc() -> str | None:
    """Path of an installed libjemalloc, or None."""
    for path in _CANDIDATES:
        if Path(path).is_file():
            return path
    name = ctypes.util.find_library("jemalloc")
    return name if name and Path(name).is_absolute() else None


def fast_malloc_env(env: dict[str, str] | None = None, use_jemalloc: bool = True) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) that starts processes with jemalloc or glibc huge pages.

    Unchanged off Linux, with ``ANIMAL_REID_MALLOC=system``, or when it was already applied. ``use_jemalloc=False``
    asks for the huge-page fallback even where jemalloc is installed (benchmarks).
    """
    env = dict(os.environ if env is None else env)
    if platform.system() != "Linux" or env.get(SWITCH) == "system" or env.get(APPLIED):
        return env
    jemalloc = find_jemalloc() if use_jemalloc else None
    if jemalloc:
        preload = env.get("LD_PRELOAD", "")
        if "jemalloc" not in preload:
            env["LD_PRELOAD"] = f"{jemalloc}:{preload}" if preload else jemalloc
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
        env[APPLIED] = "jemalloc"
    else:
        tunables = env.get("GLIBC_TUNABLES", "")
        if "hugetlb" not in tunables:
            env["GLIBC_TUNABLES"] = (
                f"{tunables}:glibc.malloc.hugetlb=1" if tunables else "glibc.malloc.hugetlb=1"
            )
        env[APPLIED] = "glibc-hugetlb"
    return env


def reexec_with_fast_malloc() -> None:
    """Start this same command again under :func:`fast_malloc_env`, unless that changes nothing.

    Call it first thing in a ``__main__`` block, before any work (the process is replaced).
    """
    env = fast_malloc_env()
    if env == dict(os.environ):
        return
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    logger.debug("re-executing with %s allocator: %s", env[APPLIED], argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)
