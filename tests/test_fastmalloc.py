"""The allocator switch for CPU training: which environment a new process gets, and that it really loads."""

import subprocess
import sys

import pytest

from animal_reid import fastmalloc


@pytest.fixture
def linux(monkeypatch):
    monkeypatch.setattr(fastmalloc.platform, "system", lambda: "Linux")


def test_jemalloc_is_preloaded_never_returning_memory(linux, monkeypatch):
    monkeypatch.setattr(fastmalloc, "find_jemalloc", lambda: "/lib/libjemalloc.so.2")
    env = fastmalloc.fast_malloc_env({"LD_PRELOAD": "/lib/other.so", "PATH": "/bin"})
    assert env["LD_PRELOAD"] == "/lib/libjemalloc.so.2:/lib/other.so"
    assert env["MALLOC_CONF"] == "dirty_decay_ms:-1,muzzy_decay_ms:-1"
    assert env[fastmalloc.APPLIED] == "jemalloc" and env["PATH"] == "/bin"
    assert (
        fastmalloc.fast_malloc_env({"MALLOC_CONF": "narenas:1"})["MALLOC_CONF"] == "narenas:1"
    )  # user's own


def test_without_jemalloc_glibc_huge_pages_are_asked_for(linux, monkeypatch):
    monkeypatch.setattr(fastmalloc, "find_jemalloc", lambda: None)
    env = fastmalloc.fast_malloc_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert env[fastmalloc.APPLIED] == "glibc-hugetlb" and "LD_PRELOAD" not in env


@pytest.mark.parametrize(
    "env",
    [{"ANIMAL_REID_MALLOC": "system"}, {"ANIMAL_REID_MALLOC_APPLIED": "jemalloc"}],
    ids=["system", "applied"],
)
def test_switched_off_or_already_applied_changes_nothing(linux, env):
    assert fastmalloc.fast_malloc_env(env) == env


def test_other_systems_are_left_alone(monkeypatch):
    monkeypatch.setattr(fastmalloc.platform, "system", lambda: "Darwin")
    assert fastmalloc.fast_malloc_env({"A": "1"}) == {"A": "1"}


def test_reexec_does_nothing_when_the_environment_would_not_change(monkeypatch):
    monkeypatch.setenv("ANIMAL_REID_MALLOC", "system")
    monkeypatch.setattr(fastmalloc.os, "execve", lambda *a: pytest.fail("re-executed"))
    fastmalloc.reexec_with_fast_malloc()


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD and glibc tunables are Linux-only")
def test_a_child_started_with_it_runs_under_that_allocator():
    code = "import torch; x = torch.ones(4096, 4096); print(float(x.sum()))"
    env = fastmalloc.fast_malloc_env()
    out = subprocess.run([sys.executable, "-c", code + "; print(open('/proc/self/maps').read())"],
                         env=env, capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    assert out.stdout.splitlines()[0] == "16777216.0"
    if env.get(fastmalloc.APPLIED) == "jemalloc":
        assert "libjemalloc" in out.stdout
