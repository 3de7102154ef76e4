"""The overwrite policy every writer follows (animal_reid.manifest): only files in our manifest ever change."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import stat
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from animal_reid.manifest import (
    LOCK_NAME,
    MANIFEST_NAME,
    Manifest,
    OutputError,
    OutputFolder,
    OutputLockedError,
    replace_file,
)


def _write(stage: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_bytes(data)


def _produce(folder: Path, files: dict[str, bytes], overwrite: bool = False) -> list[str]:
    with OutputFolder(folder, tool="test-writer", overwrite=overwrite) as out:
        stage = out.staging()
        _write(stage, files)
        return out.commit(stage)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name not in (MANIFEST_NAME, LOCK_NAME)
    }


def test_new_folder_gets_files_and_manifest(tmp_path):
    out = tmp_path / "out"
    written = _produce(out, {"a.txt": b"1", "sub/b.bin": b"22"})
    assert written == ["a.txt", "sub/b.bin"]
    manifest = Manifest.read(out)
    assert manifest is not None and set(manifest.files) == {"a.txt", "sub/b.bin"}
    assert manifest.tool == "test-writer"
    assert not [p for p in out.iterdir() if p.name.startswith(".animal-reid-staging")]


def test_foreign_folder_is_refused_and_untouched(tmp_path):
    out = tmp_path / "project"
    (out / "data" / "raw_photos").mkdir(parents=True)
    (out / "notes.txt").write_text("field notes")
    before = _snapshot(out)
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=r"not written by animal-reid.*mv .*project .*project\.old"):
            _produce(out, {"data/x.parquet": b"new"}, overwrite=overwrite)
    assert _snapshot(out) == before
    assert not (out / MANIFEST_NAME).exists() and not (out / LOCK_NAME).exists()


def test_previous_output_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    _produce(out, {"a.txt": b"1"})
    with pytest.raises(OutputError, match=r"previous test-writer run: pass --overwrite"):
        _produce(out, {"a.txt": b"2"})
    assert (out / "a.txt").read_bytes() == b"1"


def test_overwrite_keeps_user_files_and_edited_files(tmp_path):
    out = tmp_path / "out"
    _produce(out, {"a.txt": b"1", "old_only.txt": b"x", "keep/edit.txt": b"ours"})
    (out / "notes.md").write_text("mine")
    (out / "keep" / "edit.txt").write_bytes(b"edited by the user")
    _produce(out, {"a.txt": b"2", "keep/edit.txt": b"new ours", "notes.md": b"ours too"}, overwrite=True)
    snap = _snapshot(out)
    assert snap["a.txt"] == b"2" and "old_only.txt" not in snap
    assert snap["keep/edit.txt"] == b"new ours"
    kept = [k for k in snap if k.startswith("keep/edit.txt.edited-")]
    assert len(kept) == 1 and snap[kept[0]] == b"edited by the user"
    mine = [k for k in snap if k.startswith("notes.md.edited-")]
    assert len(mine) == 1 and snap[mine[0]] == b"mine" and snap["notes.md"] == b"ours too"
    assert set(Manifest.read(out).files) == {"a.txt", "keep/edit.txt", "notes.md"}


def test_failed_block_leaves_no_trace_in_a_new_folder(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), OutputFolder(out, tool="t") as folder:
        _write(folder.staging(), {"a": b"1"})
        raise RuntimeError("boom")
    assert not out.exists()


def test_failed_block_keeps_previous_output(tmp_path):
    out = tmp_path / "out"
    _produce(out, {"a.txt": b"1"})
    with pytest.raises(RuntimeError), OutputFolder(out, tool="test-writer", overwrite=True) as folder:
        _write(folder.staging(), {"a.txt": b"2"})
        raise RuntimeError("killed before commit")
    assert _snapshot(out) == {"a.txt": b"1"}


def test_output_must_not_hold_the_inputs(tmp_path):
    src = tmp_path / "photos" / "src"
    src.mkdir(parents=True)
    with pytest.raises(OutputError, match="holds the input"):
        OutputFolder(tmp_path / "photos", tool="t", keep=[src]).__enter__()


def test_not_a_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        _produce(tmp_path / "f", {"a": b"1"})


def _hold_lock(folder: str, ready, release) -> None:
    with OutputFolder(folder, tool="holder"):
        ready.set()
        release.wait(30)


def test_concurrent_writer_is_refused_naming_the_holder(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(tmp_path / "out"), ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(OutputLockedError, match=rf"being written by .*process {proc.pid} on "):
            _produce(tmp_path / "out", {"a": b"1"})
    finally:
        release.set()
        proc.join(30)
    _produce(tmp_path / "out", {"a": b"1"})  # free again once the holder is gone


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(tmp_path / "out"), ready, release))
    proc.start()
    assert ready.wait(30)
    proc.kill()
    proc.join(30)
    _produce(tmp_path / "out", {"a": b"1"})
    assert (tmp_path / "out" / "a").read_bytes() == b"1"


def test_files_get_the_umask_permissions(tmp_path):
    stage_mode_file = {"model.safetensors": b"w"}
    out = tmp_path / "out"
    with OutputFolder(out, tool="t") as folder:
        stage = folder.staging()
        _write(stage, stage_mode_file)
        os.chmod(stage / "model.safetensors", 0o600)  # as transformers writes it
        folder.commit(stage)
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o666 & ~mask


def test_record_and_resume(tmp_path):
    run = tmp_path / "run"
    with OutputFolder(run, tool="train") as folder:
        (run / "metrics.jsonl").write_text("{}\n")
        (run / "ckpt").mkdir()
        (run / "ckpt" / "w.bin").write_bytes(b"w")
        folder.record(["metrics.jsonl", "ckpt"])
    (run / "mine.txt").write_text("user")
    with pytest.raises(OutputError, match="pass --overwrite"):
        OutputFolder(run, tool="train").__enter__()
    with OutputFolder(run, tool="train", resume=True) as folder:
        assert set(folder.manifest.files) == {"metrics.jsonl", "ckpt/w.bin"}
    with OutputFolder(run, tool="train", overwrite=True) as folder:
        folder.remove_previous()
    assert _snapshot(run) == {"mine.txt": b"user"}


def test_replace_file_needs_overwrite_and_is_atomic(tmp_path):
    path = tmp_path / "model.onnx"
    replace_file(path, lambda f: f.write(b"one"), tool="onnx")
    with pytest.raises(OutputError, match=r"model\.onnx exists: pass --overwrite"):
        replace_file(path, lambda f: f.write(b"two"), tool="onnx")

    def failing(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match=r"model\.onnx: no space left"):
        replace_file(path, failing, tool="onnx", overwrite=True)
    assert path.read_bytes() == b"one"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
    replace_file(path, lambda f: f.write(b"two"), tool="onnx", overwrite=True)
    assert path.read_bytes() == b"two"
    assert not (tmp_path / LOCK_NAME).exists()  # a folder without a manifest keeps no lock file of ours


def test_unreadable_manifest_is_named(tmp_path):
    out = tmp_path / "out"
    _produce(out, {"a": b"1"})
    (out / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(OutputError, match=rf"{MANIFEST_NAME}: not a readable manifest"):
        _produce(out, {"a": b"2"}, overwrite=True)


# ------------------------------------------------------------------------------------------------------------------
# property: random folder contents, random edits, random new outputs: only manifest files ever change
NAMES = st.sampled_from(
    ["a.txt", "b.bin", "README.md", "data/x.parquet", "data/y.parquet", "sub/deep/c.json"]
)
CONTENT = st.binary(min_size=0, max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=st.dictionaries(NAMES, CONTENT, min_size=1, max_size=5),
    user=st.dictionaries(
        st.sampled_from(["notes.txt", "analysis/r.csv", "README.md", "data/z.txt"]), CONTENT
    ),
    edits=st.sets(NAMES),
    second=st.dictionaries(NAMES, CONTENT, min_size=1, max_size=5),
)
def test_property_only_manifest_files_change(tmp_path_factory, first, user, edits, second):
    out = tmp_path_factory.mktemp("prop") / "out"
    _produce(out, first)
    user = {k: v for k, v in user.items() if k not in first}  # a user file beside ours, never one of ours
    _write(out, user)
    edited = {}
    for rel in edits & set(first):
        time.sleep(0)  # edits change the bytes (and so the hash), whatever the clock's resolution
        data = first[rel] + b"-edited"
        (out / rel).write_bytes(data)
        edited[rel] = data
    _produce(out, second, overwrite=True)
    after = _snapshot(out)
    # every byte string the user had (their files, their edits) still exists somewhere under its name or aside
    for rel, data in {**user, **edited}.items():
        candidates = {k: v for k, v in after.items() if k == rel or k.startswith(rel + ".edited-")}
        assert data in candidates.values(), (rel, candidates)
    for rel, data in second.items():
        assert after[rel] == data
    # of the first output, only unedited files the second lacks are gone; nothing else disappeared
    gone = set(first) - set(second) - set(edited)
    assert not gone & set(after)
    listed = set(json.loads((out / MANIFEST_NAME).read_text())["files"])
    assert listed == set(second)


def test_commit_cut_short_leaves_every_touched_file_listed(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _produce(out, {"a.txt": b"1", "b.txt": b"1", "c.txt": b"1"})
    (out / "mine.txt").write_text("user")
    real_replace = os.replace
    calls = {"n": 0}

    def dying_replace(src, dst):
        if str(src).find("staging") >= 0:
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(OSError):
        _produce(out, {"a.txt": b"2", "b.txt": b"2", "d.txt": b"2"}, overwrite=True)
    monkeypatch.setattr(os, "replace", real_replace)
    _produce(out, {"a.txt": b"3", "e.txt": b"3"}, overwrite=True)
    snap = _snapshot(out)
    assert not [k for k in snap if ".edited-" in k], snap  # nothing of ours mistaken for the user's edits
    assert snap == {"a.txt": b"3", "e.txt": b"3", "mine.txt": b"user"}
