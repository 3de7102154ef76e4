"""Shared pytest setup: offline Hub, few threads, the real-data root."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("REID_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA_ROOT.is_dir():
        pytest.skip(f"real re-ID images not found at {DATA_ROOT} (set REID_DATA_ROOT)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A tiny generated corpus (8 synthetic identities x 4 images, 64 px, open split), built once per session."""
    from data_scripts.build import main as build_main

    out = tmp_path_factory.mktemp("corpus") / "tiny"
    build_main(
        [
            "--sources", "synthetic", "--out", str(out), "--split", "open",
            "--synthetic-identities", "8", "--synthetic-images", "4", "--synthetic-size", "64",
            "--synthetic-patterns", "stripes", "spots", "--no-progress",
        ]
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def bench_synthetic_corpus(tmp_path_factory) -> Path:
    """The real-photo benchmarks' synthetic source corpus (40 identities per pattern x 4 images in 2 encounters,
    40 px, open split), built once per session: `reid_real` and `ablate_zeroshot` compact it."""
    from data_scripts.build import main as build_main

    out = tmp_path_factory.mktemp("bench") / "src"
    build_main(
        [
            "--sources", "synthetic", "--split", "open", "--out", str(out), "--no-progress",
            "--synthetic-patterns", "stripes", "spots", "--synthetic-identities", "40",
            "--synthetic-images", "4", "--synthetic-encounters", "2", "--synthetic-size", "40",
        ]
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server's URL for the module (skipped without the binaries or psycopg)."""
    from animal_reid.testing.serve import postgres_binaries, throwaway_postgres

    if postgres_binaries() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    pytest.importorskip("psycopg")
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(autouse=True)
def _no_leaked_torch_state():
    """Fail a test that leaves process-wide torch settings changed (thread count, grad mode, default dtype).

    Such a leak once made an unrelated test depend on the order the suite ran in (issue 13).
    """
    torch = pytest.importorskip("torch")
    before = (torch.get_num_threads(), torch.is_grad_enabled(), torch.get_default_dtype())
    yield
    after = (torch.get_num_threads(), torch.is_grad_enabled(), torch.get_default_dtype())
    if after != before:
        torch.set_num_threads(before[0])
        torch.set_grad_enabled(before[1])
        torch.set_default_dtype(before[2])
        pytest.fail(
            f"the test changed torch's (threads, grad enabled, default dtype) from {before} to {after}"
        )
