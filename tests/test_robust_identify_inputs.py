"""identify's inputs and outputs under issue 31's policies, each kind with generated inputs and exact messages:

* ``--out`` under the manifest policy: locked for the whole run (a second writer is refused naming the holder,
  nothing mixed), previous files replaced only when listed;
* gallery / query CSVs: one file on two rows (two identities: an error naming both rows; one identity: the later
  row skipped with a warning naming both), Excel's UTF-8 byte-order mark, text that is not UTF-8;
* the embedding cache key follows every modeling ``*.py`` (the export's remote code, the installed package);
* an optional cache (embeddings, local features) that cannot be written: one warning, the run goes on;
* boxes refused in one line naming the image, the box and the problem;
* one orientation: boxes in displayed pixels (EXIF applied) in the processor, identify, re-ranking crops and the
  service alike.
"""

from __future__ import annotations

import csv
import errno
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

import animal_reid.io
from animal_reid import identify
from animal_reid.identify import BadImages, Identifier, ImageItem, model_cache_key, read_gallery, read_queries
from animal_reid.identify.cache import modeling_code_hash
from animal_reid.manifest import LOCK_NAME, MANIFEST_NAME, Manifest
from animal_reid.testing.images import turned_jpeg
from animal_reid.testing.serve import tiny_model
from modeling import AnimalReIDImageProcessor, InvalidImageError
from modeling.image_processing_animal_reid import InvalidBoxError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
SHOWN = "(boxes are in the pixels of the image as displayed, EXIF orientation applied)"


def _photo(path: Path, rgb=(120, 120, 120), seed: int = 0, size=(40, 40)) -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.clip(np.array(rgb)[None, None, :] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


class FakeModel:
    """Embeds an image as its unit mean colour offset from grey, through the real processor (boxes applied)."""

    def __init__(self, block: threading.Event | None = None, started: threading.Event | None = None):
        self.proc = AnimalReIDImageProcessor(size=16)
        self.block, self.started = block, started

    def encode(self, images, boxes=None, thetas=None, **kwargs):
        if self.started is not None:
            self.started.set()
        if self.block is not None:
            assert self.block.wait(60), "the test never released the run"
        boxes = boxes or [None] * len(images)
        thetas = thetas or [0.0] * len(images)
        out = []
        for im, b, t in zip(images, boxes, thetas, strict=True):
            v = self.proc.preprocess_uint8(im, b, t).double().mean((1, 2)).numpy() - 127.5
            out.append(v / np.linalg.norm(v))
        return np.array(out, dtype=np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def two_colours(tmp_path):
    """A gallery folder (red, green, blue; 2 images each) and two query photos."""
    root = tmp_path / "gallery"
    for k, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(2):
            _photo(root / name / f"{i}.png", rgb, 10 * k + i)
    q = [_photo(tmp_path / "q" / f"q_{n}.png", COLOURS[n], 50 + i) for i, n in enumerate(("red", "blue"))]
    return root, q


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


# ------------------------------------------------------------------------------------------------------------------
# --out: one writer at a time, nothing mixed
HOLDER = """
import sys
from animal_reid.manifest import OutputFolder
out = sys.argv[1]
sys.argv = ["animal-reid-identify", "--out", out]
with OutputFolder(out, tool="animal-reid identify", overwrite=True, what="--out"):
    print("locked", flush=True)
    sys.stdin.read()
"""


def _hold(out: Path) -> subprocess.Popen:
    """Another process writing ``out`` (holding its lock until killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _locked_message(out: Path, pid: int) -> re.Pattern:
    host = re.escape(socket.gethostname())
    return re.compile(
        rf"error: --out {re.escape(str(out))} is being written by 'animal-reid-identify --out {re.escape(str(out))}' "
        rf"\(process {pid} on {host}, since [0-9T:+-]+\): wait for it to finish or choose another folder"
    )


@pytest.mark.parametrize("before", ["new folder", "previous output", "previous output and a file of yours"])
def test_a_second_writer_is_refused_at_once_naming_the_holder(
    tmp_path, model_dir, two_colours, capsys, before
):
    root, q = two_colours
    out = tmp_path / "out"
    argv = ["--model", str(model_dir), "--gallery", str(root), "--queries", str(q[0]), "--out", str(out)]
    argv += ["--no-cache", "-q", "--overwrite"]
    if before != "new folder":
        assert identify.main(argv) == 0
    if before.endswith("yours"):
        (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    holder = _hold(out)
    try:
        snapshot = _files(out)
        assert identify.main(argv) == 2
        err = capsys.readouterr().err
        assert len(_error_lines(err)) == 1 and _locked_message(out, holder.pid).fullmatch(
            _error_lines(err)[0]
        )
        assert _files(out) == snapshot  # nothing written, nothing removed
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait()
    assert identify.main(argv) == 0
    listed = set(Manifest.read(out).files)
    assert listed == {"results.csv", "results.json", "skipped.csv", "match_sheets/0000_q_red.png"}
    mine = {"notes.txt"} if before.endswith("yours") else set()
    assert set(_files(out)) == listed | mine | {MANIFEST_NAME, LOCK_NAME}


def test_two_identify_runs_at_once_the_second_is_refused_and_the_first_output_is_whole(
    tmp_path, two_colours, monkeypatch, capsys
):
    root, q = two_colours
    out = tmp_path / "out"
    release, started = threading.Event(), threading.Event()
    models = iter([FakeModel(block=release, started=started), FakeModel()])
    monkeypatch.setattr(Identifier, "from_pretrained", classmethod(lambda cls, *a, **k: cls(next(models))))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")

    def argv(query: Path) -> list[str]:
        return [
            "--model",
            str(model),
            "--gallery",
            str(root),
            "--queries",
            str(query),
            "--out",
            str(out),
            "-q",
        ]

    codes = {}
    first = threading.Thread(target=lambda: codes.setdefault("first", identify.main(argv(q[0]))))
    first.start()
    try:
        assert started.wait(60)  # the first run is embedding, its lock held
        assert identify.main(argv(q[1]) + ["--overwrite"]) == 2
    finally:
        release.set()
        first.join(60)
    assert codes == {"first": 0}
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"error: --out {out} is being written by ")
    assert f"(process {os.getpid()} on " in err[0]
    with open(out / "results.csv", newline="") as f:
        assert {r["query"] for r in csv.DictReader(f)} == {str(q[0])}  # only the first run's queries
    assert sorted(p.name for p in (out / "match_sheets").iterdir()) == ["0000_q_red.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".animal-reid-staging-")]


USER_NAMES = st.sampled_from(
    ["notes.txt", "results.csv.bak", "analysis/plot.png", "match_sheets/0007_old.png", "match_sheets/mine.txt",
     ".hidden", "results", "skipped.CSV", "0000_q_red.png"]
)  # fmt: skip


@settings(
    max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    yours=st.dictionaries(USER_NAMES, st.binary(max_size=64), max_size=5),
    edit=st.sampled_from([None, "results.csv", "results.json", "match_sheets/0001_q_blue.png"]),
    queries=st.integers(1, 2),
)
def test_overwrite_changes_only_files_the_manifest_lists(
    tmp_path_factory, two_colours, fake_loader, yours, edit, queries
):
    root, q = two_colours
    out = tmp_path_factory.mktemp("o") / "out"
    argv = ["--model", str(fake_loader), "--gallery", str(root), "--out", str(out), "-q", "--overwrite"]
    assert identify.main([*argv, "--queries", *map(str, q)]) == 0
    for name, data in yours.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    if edit is not None:
        (out / edit).write_bytes(b"edited by hand")
    assert identify.main([*argv, "--queries", *map(str, q[:queries])]) == 0
    assert {n: (out / n).read_bytes() for n in yours} == yours  # yours: untouched
    if edit is not None:  # an edited file of ours is kept aside, not lost
        (aside,) = (out / edit).parent.glob(Path(edit).name + ".edited-*")
        assert aside.read_bytes() == b"edited by hand"
    listed = set(Manifest.read(out).files)
    sheets = {f"match_sheets/{i:04d}_{Path(p).stem}.png" for i, p in enumerate(q[:queries])}
    assert listed == {"results.csv", "results.json", "skipped.csv"} | sheets
    others = set(_files(out)) - listed - set(yours) - {MANIFEST_NAME, LOCK_NAME}
    assert all(".edited-" in n for n in others) and len(others) == (edit is not None)


@pytest.fixture
def fake_loader(tmp_path, monkeypatch):
    """A model folder whose loading gives an Identifier over :class:`FakeModel` (no torch model, fast)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.setattr(Identifier, "from_pretrained", classmethod(lambda cls, *a, **k: cls(FakeModel())))
    return model


# ------------------------------------------------------------------------------------------------------------------
# gallery and query CSVs
def _csv(path: Path, rows: list[list[str]], bom: bool = False, newline: str = "\n") -> Path:
    text = newline.join(",".join(r) for r in rows) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def _gallery_images(folder: Path) -> dict[str, Path]:
    return {n: _photo(folder / f"{n}.png", rgb, i) for i, (n, rgb) in enumerate(COLOURS.items())}


TWO_IDENTITIES = [  # rows after the header, the two rows, their paths as written, their identities
    (
        [["red.png", "red"], ["green.png", "green"], ["red.png", "blue"]],
        (2, 4),
        ("red.png", "red.png"),
        ("red", "blue"),
    ),
    ([["red.png", "red"], ["./red.png", "green"]], (2, 3), ("red.png", "./red.png"), ("red", "green")),
    (
        [["ABS", "blue"], ["blue.png", "green"], ["red.png", "red"]],
        (2, 3),
        ("ABS", "blue.png"),
        ("blue", "green"),
    ),
    (
        [["green.png", "green"], ["sub/../green.png", ""]],
        (2, 3),
        ("green.png", "sub/../green.png"),
        ("green", ""),
    ),
]


@pytest.mark.parametrize("rows, numbers, paths, identities", TWO_IDENTITIES)
@pytest.mark.parametrize("role", ["gallery", "queries"])
def test_one_file_under_two_identities_is_an_error_naming_both_rows(
    tmp_path, rows, numbers, paths, identities, role
):
    _gallery_images(tmp_path)
    (tmp_path / "sub").mkdir()
    absolute = str(tmp_path / "blue.png")
    rows = [[absolute if c == "ABS" else c for c in r] for r in rows]
    paths = tuple(absolute if p == "ABS" else p for p in paths)
    table = _csv(tmp_path / f"{role}.csv", [["path", "identity"], *rows])
    read = (lambda: read_gallery(table)) if role == "gallery" else (lambda: read_queries([table]))
    with pytest.raises(ValueError) as err:
        read()
    (a, b), (ia, ib) = numbers, identities
    assert str(err.value) == (
        f"{table}: rows {a} and {b} list the same image ({paths[0]!r} and {paths[1]!r}) under two identities, "
        f"{ia!r} on row {a} and {ib!r} on row {b}: keep one"
    )


def test_the_cli_refuses_it_in_one_line_before_any_work(tmp_path, cli_model, capsys):
    _gallery_images(tmp_path)
    table = _csv(tmp_path / "g.csv", [["path", "identity"], ["red.png", "red"], ["red.png", "blue"]])
    out = tmp_path / "out"
    argv = ["--model", str(cli_model), "--gallery", str(table), "--queries", str(tmp_path / "green.png")]
    assert identify.main(argv + ["--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: {table}: rows 2 and 3 list the same image ('red.png' and 'red.png') under two identities, "
        "'red' on row 2 and 'blue' on row 3: keep one\n"
    )
    assert not out.exists()  # the folder the run created is gone again


@pytest.fixture
def cli_model(tmp_path, monkeypatch):
    """A model folder; loading it fails the test (input errors must come first)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(Identifier, "from_pretrained", no_model)
    return model


SAME_IDENTITY = [  # rows after the header, the duplicate's row numbers and paths as written, its identity
    ([["red.png", "red"], ["green.png", "green"], ["red.png", "red"]], (2, 4), ("red.png", "red.png"), "red"),
    ([["green.png", "green"], ["./green.png", "green"]], (2, 3), ("green.png", "./green.png"), "green"),
    ([["blue.png", "blue"], ["red.png", "red"], ["ABS", "blue"]], (2, 4), ("blue.png", "ABS"), "blue"),
]


@pytest.mark.parametrize("rows, numbers, paths, identity", SAME_IDENTITY)
def test_one_file_twice_with_one_identity_skips_the_later_row_naming_both(
    tmp_path, caplog, rows, numbers, paths, identity
):
    _gallery_images(tmp_path)
    absolute = str(tmp_path / "blue.png")
    rows = [[absolute if c == "ABS" else c for c in r] for r in rows]
    paths = tuple(absolute if p == "ABS" else p for p in paths)
    table = _csv(tmp_path / "g.csv", [["path", "identity"], *rows])
    with caplog.at_level(logging.WARNING, logger="animal_reid.identify"):
        items = read_gallery(table)
    a, b = numbers
    assert [r.getMessage() for r in caplog.records] == [
        f"{table}: rows {a} and {b} list the same image ({paths[0]!r} and {paths[1]!r}) with the same identity "
        f"{identity!r}: skipping row {b}"
    ]
    assert len(items) == len(rows) - 1 and len({Path(i.image).resolve() for i in items}) == len(items)


@pytest.mark.parametrize(
    "role, newline, quoted",
    [
        ("gallery", "\n", False),
        ("gallery", "\r\n", True),
        ("queries", "\r\n", False),
        ("queries", "\n", True),
    ],
)
def test_a_csv_saved_by_excel_with_a_byte_order_mark_is_read(tmp_path, role, newline, quoted):
    images = _gallery_images(tmp_path)
    q = (lambda s: f'"{s}"') if quoted else (lambda s: s)
    table = _csv(
        tmp_path / "t.csv",
        [[q("path"), q("identity"), "species"], *([q(f"{n}.png"), q(n), "lion"] for n in COLOURS)],
        bom=True,
        newline=newline,
    )
    items = read_gallery(table) if role == "gallery" else read_queries([table])
    assert [(i.image, i.identity, i.species) for i in items] == [(str(images[n]), n, "lion") for n in COLOURS]


@pytest.mark.parametrize(
    "data, byte",
    [
        (
            "path,identity\nred.png,café\n".encode("latin-1"),
            0xE9,
        ),  # Excel's "CSV" on Windows: cp1252 / latin-1
        ("path,identity\nred.png,€uro\n".encode("cp1252"), 0x80),
        ("path,identity\nred.png,red\n".encode("utf-16"), 0xFF),  # Excel's "Unicode Text"
    ],
)
def test_a_csv_that_is_not_utf8_is_one_line_naming_it(tmp_path, data, byte):
    _gallery_images(tmp_path)
    (tmp_path / "t.csv").write_bytes(data)
    with pytest.raises(ValueError) as err:
        read_gallery(tmp_path / "t.csv")
    assert (
        str(err.value)
        == f"{tmp_path / 't.csv'}: not UTF-8 text (byte {byte:#04x} is not UTF-8); save the CSV as UTF-8"
    )


# ------------------------------------------------------------------------------------------------------------------
# the embedding cache key follows the modeling code
@pytest.fixture
def export_copy(tmp_path, model_dir):
    copy = tmp_path / "export"
    shutil.copytree(model_dir, copy)
    return copy


def _flip_one_byte(path: Path) -> None:
    """Change one byte (the case of a docstring's first letter): the code still runs the same."""
    data = bytearray(path.read_bytes())
    at = data.index(b'"""') + 3
    data[at : at + 1] = bytes([data[at]]).swapcase()
    assert bytes([data[at]]).isalpha()
    path.write_bytes(bytes(data))


MODELING_FILES = [
    "modeling_animal_reid.py",
    "image_processing_animal_reid.py",
    "configuration_animal_reid.py",
    "encoding_animal_reid.py",
    "pipeline_animal_reid.py",
]


@pytest.mark.parametrize("name", MODELING_FILES)
def test_one_byte_of_the_exports_modeling_code_gives_a_new_cache_key(tmp_path, model_dir, export_copy, name):
    pytest.importorskip("sqlalchemy")
    from animal_reid.serve.service import model_keys

    proc = AnimalReIDImageProcessor(size=32)
    key, meta = model_cache_key(export_copy, proc)
    assert (key, meta) == model_cache_key(model_dir, proc)  # unchanged code (in another folder): the same key
    model_id, prep = model_keys(export_copy, proc)  # the service's keys of its catalogue's embeddings
    _flip_one_byte(export_copy / name)
    changed, changed_meta = model_cache_key(export_copy, proc)
    assert changed != key and changed_meta["code"] != meta["code"]
    assert changed_meta["weights"] == meta["weights"] and changed_meta["preprocessor"] == meta["preprocessor"]
    new_id, new_prep = model_keys(export_copy, proc)
    assert new_id == model_id and new_prep != prep  # same weights; the sightings are embedded again at start


@pytest.mark.parametrize("new_file", ["boxes_animal_reid.py", "helpers.py", "__init__.py"])
def test_a_modeling_file_added_to_the_export_gives_a_new_cache_key(export_copy, new_file):
    before = model_cache_key(export_copy)[0]
    (export_copy / new_file).write_text("X = 1\n")
    assert model_cache_key(export_copy)[0] != before


@pytest.fixture
def installed_copy(tmp_path, monkeypatch):
    """The installed ``modeling`` package's files, copied, with ``modeling.__file__`` pointing at the copy."""
    import modeling

    copy = tmp_path / "installed" / "modeling"
    shutil.copytree(Path(modeling.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(modeling, "__file__", str(copy / "__init__.py"))
    return copy


@pytest.mark.parametrize("name", ["__init__.py", *MODELING_FILES[:3], "a_new_module_of_the_refactor.py"])
def test_the_installed_modeling_package_is_keyed_when_it_is_what_runs(export_copy, installed_copy, name):
    installed = AnimalReIDImageProcessor(size=32)  # its class comes from the installed package
    # stands for the processor class loaded from the export's remote code
    remote = type(
        "P", (), {"__module__": "transformers_modules.export.image_processing_animal_reid", "to_dict": dict}
    )()
    keys = model_cache_key(export_copy, installed)[0], model_cache_key(export_copy, remote)[0]
    no_code = export_copy.parent / "no_code"
    shutil.copytree(export_copy, no_code, ignore=shutil.ignore_patterns("*.py"))
    key_no_code = model_cache_key(no_code)[0]  # an export without code runs on the installed package
    if (installed_copy / name).exists():
        _flip_one_byte(installed_copy / name)
    else:
        (installed_copy / name).write_text("X = 1\n")
    assert model_cache_key(export_copy, installed)[0] != keys[0]
    assert model_cache_key(no_code)[0] != key_no_code
    assert (
        model_cache_key(export_copy, remote)[0] == keys[1]
    )  # the export's own code runs: the installed copy is not keyed


def test_the_code_hash_is_stable_and_names_files(export_copy, tmp_path):
    h = modeling_code_hash(export_copy)
    assert h == modeling_code_hash(export_copy) and re.fullmatch(r"[0-9a-f]{64}", h)
    renamed = tmp_path / "renamed"
    shutil.copytree(export_copy, renamed)
    (renamed / "pipeline_animal_reid.py").rename(renamed / "pipeline2_animal_reid.py")
    assert modeling_code_hash(renamed) != h  # same bytes under another name: another layout


# ------------------------------------------------------------------------------------------------------------------
# an optional cache that cannot be written
FAULTS = {
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EACCES: "permission denied",
    errno.EROFS: "read-only file system",
}


def _failing_writes(monkeypatch, under: Path, code: int) -> list[Path]:
    """Make every atomic write under ``under`` fail with ``code``; returns the paths tried."""
    real, tried = animal_reid.io.write_atomic, []

    def write_atomic(path, write):
        if Path(path).is_relative_to(under):
            tried.append(Path(path))
            raise OSError(code, os.strerror(code), str(path))
        return real(path, write)

    monkeypatch.setattr(animal_reid.io, "write_atomic", write_atomic)
    return tried


def _items(tmp_path: Path, n: int) -> list[ImageItem]:
    names = list(COLOURS)
    return [
        ImageItem(image=str(_photo(tmp_path / "imgs" / f"{i}.png", COLOURS[names[i % 3]], i)), name=str(i))
        for i in range(n)
    ]


def _unusable_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "the run goes on without it" in r.getMessage()]


@pytest.mark.parametrize("code", list(FAULTS))
def test_an_embedding_cache_that_cannot_be_written_warns_once_and_the_run_goes_on(
    tmp_path, monkeypatch, caplog, code
):
    items = _items(tmp_path, 9)
    want = Identifier(FakeModel()).embed(items)
    root = tmp_path / "cache"
    tried = _failing_writes(monkeypatch, root, code)
    with caplog.at_level(logging.WARNING, logger="animal_reid"):
        ident = Identifier(FakeModel(), model_key="k", cache_dir=root, save_every=3)  # three chunks to save
        got = ident.embed(items)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert _unusable_warnings(caplog) == [
        f"cannot write the embedding cache {root / 'k'}: {FAULTS[code]}; the run goes on without it (results "
        "are not affected)"
    ]
    assert len(tried) == 1 and not ident.cache.writable  # one try, then no more
    assert not [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("code", list(FAULTS))
def test_a_local_feature_cache_that_cannot_be_written_warns_once_and_the_run_goes_on(
    tmp_path, monkeypatch, caplog, code
):
    pytest.importorskip("cv2")
    from animal_reid.rerank.features import LocalFeatureConfig, LocalFeatureStore

    items = _items(tmp_path, 4)
    config = LocalFeatureConfig(min_side=8)
    want = LocalFeatureStore(config).features(items, progress=False)
    root = tmp_path / "cache"
    _failing_writes(monkeypatch, root, code)
    monkeypatch.setattr(LocalFeatureStore, "SAVE_EVERY", 2)
    with caplog.at_level(logging.WARNING, logger="animal_reid"):
        store = LocalFeatureStore(config, cache_dir=root)
        got = store.features(items, progress=False)
    assert [(f.status, f.size, f.xy.tolist()) for f in got] == [
        (f.status, f.size, f.xy.tolist()) for f in want
    ]
    assert _unusable_warnings(caplog) == [
        f"cannot write the local-feature cache {store.cache.dir}: {FAULTS[code]}; the run goes on without it "
        "(results are not affected)"
    ]


@pytest.mark.parametrize("kind", ["embedding", "local-feature"])
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: modes do not apply")
def test_a_read_only_cache_folder_warns_once_and_the_run_goes_on(tmp_path, caplog, kind):
    items = _items(tmp_path, 4)
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o500)
    try:
        with caplog.at_level(logging.WARNING, logger="animal_reid"):
            if kind == "embedding":
                cache_dir = Identifier(FakeModel(), model_key="k", cache_dir=root).cache.dir
                Identifier(FakeModel(), model_key="k", cache_dir=root).embed(items)
            else:
                pytest.importorskip("cv2")
                from animal_reid.rerank.features import LocalFeatureStore

                store = LocalFeatureStore(cache_dir=root)
                store.features(items, progress=False)
                cache_dir = store.cache.dir
    finally:
        root.chmod(0o700)
    assert _unusable_warnings(caplog) == [
        f"cannot write the {kind} cache {cache_dir}: permission denied; the run goes on without it (results are "
        "not affected)"
    ]


@pytest.mark.parametrize("code", list(FAULTS))
def test_identify_with_an_unwritable_cache_writes_its_results(
    tmp_path, model_dir, two_colours, monkeypatch, caplog, code
):
    root, q = two_colours
    cache, out = tmp_path / "cache", tmp_path / "out"
    _failing_writes(monkeypatch, cache, code)
    argv = ["--model", str(model_dir), "--gallery", str(root), "--queries", *map(str, q), "--out", str(out)]
    with caplog.at_level(logging.WARNING, logger="animal_reid"):
        assert identify.main(argv + ["--cache-dir", str(cache), "-q"]) == 0
    warnings = _unusable_warnings(caplog)
    assert len(warnings) == 1 and warnings[0].startswith(f"cannot write the embedding cache {cache}/")
    assert f": {FAULTS[code]}; the run goes on without it" in warnings[0]
    assert set(Manifest.read(out).files) >= {"results.csv", "results.json", "skipped.csv"}


# ------------------------------------------------------------------------------------------------------------------
# boxes refused in one line naming the image, the box and the problem
PROC = AnimalReIDImageProcessor(size=16)
NEED = "bounding box must be 4 numbers [x, y, w, h], got"
BAD_BOXES = {
    "strings": [
        (["a", "b", "c", "d"], f"{NEED} ['a', 'b', 'c', 'd']: x is a string ('a')"),
        (["10", "10", "20", "20"], f"{NEED} ['10', '10', '20', '20']: x is a string ('10')"),  # refused, not read
        ([0, 0, "20", 20], f"{NEED} [0, 0, '20', 20]: w is a string ('20')"),
        ("0,0,20,20", f"{NEED} a string ('0,0,20,20')"),
    ],
    "nulls": [
        ([None, 0, 20, 20], f"{NEED} [None, 0, 20, 20]: x is null"),
        ([0, 0, 20, None], f"{NEED} [0, 0, 20, None]: h is null"),
        ((0, None, 20, 20), f"{NEED} [0, None, 20, 20]: y is null"),
    ],
    "nested lists": [
        ([[0], 0, 20, 20], f"{NEED} [[0], 0, 20, 20]: x is a nested list ([0])"),
        ([0, 0, (20, 20), 20], f"{NEED} [0, 0, (20, 20), 20]: w is a nested list ([20, 20])"),
        ([[0, 0, 20, 20]], f"{NEED} 1 values: [[0, 0, 20, 20]]"),
        (np.zeros((2, 2)), f"{NEED} an array of shape (2, 2)"),
    ],
    "non-finite": [
        ([math.nan, 0, 20, 20], "bounding box [nan, 0, 20, 20] has a non-finite x (nan)"),
        ([0, math.inf, 20, 20], "bounding box [0, inf, 20, 20] has a non-finite y (inf)"),
        ([0, 0, 20, -math.inf], "bounding box [0, 0, 20, -inf] has a non-finite h (-inf)"),
    ],
    "wrong length": [
        ([], f"{NEED} 0 values: []"),
        ([1, 2, 3], f"{NEED} 3 values: [1, 2, 3]"),
        ([1, 2, 3, 4, 5], f"{NEED} 5 values: [1, 2, 3, 4, 5]"),
        (7, f"{NEED} the single number 7"),
    ],
    "booleans": [
        ([True, 0, 20, 20], f"{NEED} [True, 0, 20, 20]: x is a boolean (True)"),
        ([0, False, 20, 20], f"{NEED} [0, False, 20, 20]: y is a boolean (False)"),
        ([0, 0, True, True], f"{NEED} [0, 0, True, True]: w is a boolean (True)"),
    ],
    "zero or negative size": [
        ([0, 0, 0, 20], "bounding box [0, 0, 0, 20] has zero or negative size (w=0, h=20); w and h must be > 0"),
        ([0, 0, 20, -1], "bounding box [0, 0, 20, -1] has zero or negative size (w=20, h=-1); w and h must be > 0"),
        ([5, 5, -3, -3], "bounding box [5, 5, -3, -3] has zero or negative size (w=-3, h=-3); w and h must be > 0"),
    ],
    "past the border, too little inside": [
        ([60, 0, 10, 40], "bounding box [60, 0, 10, 40] extends past the border of the 64x48 image and only 4x40 "
         "pixels of it lie inside; at least 8 per side is required"),
        ([-6, 0, 10, 40], "bounding box [-6, 0, 10, 40] extends past the border of the 64x48 image and only 4x40 "
         "pixels of it lie inside; at least 8 per side is required"),
        ([0, 44, 30, 10], "bounding box [0, 44, 30, 10] extends past the border of the 64x48 image and only 30x4 "
         "pixels of it lie inside; at least 8 per side is required"),
    ],
    "inside, too small": [
        ([10, 10, 5, 30], "bounding box [10, 10, 5, 30] is 5x30 pixels; at least 8 per side is required"),
        ([0, 0, 7, 7], "bounding box [0, 0, 7, 7] is 7x7 pixels; at least 8 per side is required"),
        ([20, 20, 30, 3], "bounding box [20, 20, 30, 3] is 30x3 pixels; at least 8 per side is required"),
    ],
    "entirely outside": [
        ([100, 100, 10, 10], f"bounding box [100, 100, 10, 10] lies entirely outside the 64x48 image {SHOWN}"),
        ([-20, 0, 10, 10], f"bounding box [-20, 0, 10, 10] lies entirely outside the 64x48 image {SHOWN}"),
        ([0, 48, 10, 10], f"bounding box [0, 48, 10, 10] lies entirely outside the 64x48 image {SHOWN}"),
    ],
}  # fmt: skip
BAD_THETAS = [
    ("a", "theta of bounding box [0, 0, 20, 20] must be a number of radians, got a string ('a')"),
    (math.nan, "theta of bounding box [0, 0, 20, 20] is nan, not a finite number of radians"),
    (True, "theta of bounding box [0, 0, 20, 20] must be a number of radians, got a boolean (True)"),
    ([0.1], "theta of bounding box [0, 0, 20, 20] must be a number of radians, got a nested list ([0.1])"),
]


@pytest.fixture(scope="module")
def image_64x48(tmp_path_factory):
    return _photo(tmp_path_factory.mktemp("img") / "photo.png", size=(64, 48))


@pytest.mark.parametrize(
    "box, message",
    [
        pytest.param(b, m, id=f"{kind}-{i}")
        for kind, cases in BAD_BOXES.items()
        for i, (b, m) in enumerate(cases)
    ],
)
def test_a_bad_box_is_one_line_naming_the_image_the_box_and_the_problem(image_64x48, box, message):
    with pytest.raises(InvalidBoxError) as err:
        PROC.preprocess_one(str(image_64x48), box)
    assert str(err.value) == f"{image_64x48}: {message}"
    assert isinstance(err.value, InvalidImageError) and "\n" not in str(err.value)


@pytest.mark.parametrize("theta, message", BAD_THETAS)
def test_a_bad_theta_is_one_line_naming_the_image_and_the_box(image_64x48, theta, message):
    with pytest.raises(InvalidBoxError) as err:
        PROC.preprocess_one(str(image_64x48), [0, 0, 20, 20], theta)
    assert str(err.value) == f"{image_64x48}: {message}"


@pytest.mark.parametrize(
    "box",
    [[-10, -10, 200, 200], [0, 0, 64, 48], [-1e6, -1e6, 2e6, 2e6], (np.float32(0), np.int64(0), 64, 48)],
)
def test_a_box_covering_the_whole_image_gives_the_whole_image(image_64x48, box):
    assert np.array_equal(PROC.preprocess_one(str(image_64x48), box), PROC.preprocess_one(str(image_64x48)))


@pytest.mark.parametrize("box", [[np.float64(4), 4, 20, 20], np.array([4, 4, 20, 20]), (4.0, 4, 20.0, 20)])
def test_numpy_and_tuple_boxes_are_numbers(image_64x48, box):
    assert np.array_equal(
        PROC.preprocess_one(str(image_64x48), box), PROC.preprocess_one(str(image_64x48), [4, 4, 20, 20])
    )


def test_a_bad_box_in_identify_is_a_skipped_image_with_the_processors_reason(image_64x48):
    items = [
        ImageItem(str(image_64x48), f"b{i}", "x", bbox=b) for i, (b, _) in enumerate(BAD_BOXES["strings"][:3])
    ]
    items.append(ImageItem(str(image_64x48), "good", "x", bbox=[0, 0, 20, 20]))
    bad = BadImages("skip")
    kept, _ = Identifier(FakeModel()).embed_usable(items, bad, "gallery")
    assert kept == [3]
    assert [s.reason for s in bad.skipped] == [m for _, m in BAD_BOXES["strings"][:3]]


# ------------------------------------------------------------------------------------------------------------------
# one orientation: boxes in displayed pixels everywhere
STORED = (96, 56)  # width x height of the stored pixels; orientations 5-8 display them as 56 x 96
DISPLAYED_ONLY = [4.0, 60.0, 40.0, 30.0]  # inside the displayed 56x96 photo; below the stored 96x56 pixels
STORED_ONLY = [60.0, 4.0, 30.0, 40.0]  # inside the stored pixels; right of the displayed photo
OUTSIDE = f"bounding box {STORED_ONLY} lies entirely outside the 56x96 image {SHOWN}"


def _exif_photo(path: Path, orientation: int, seed: int = 0, size=STORED) -> Path:
    """A JPEG whose stored pixels are a pattern of 8-pixel blocks, with an EXIF orientation tag."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(turned_jpeg(orientation, size, seed))
    return path


def _displayed_crop(path: Path, box) -> Image.Image:
    with Image.open(path) as im:
        shown = ImageOps.exif_transpose(im).convert("RGB")
    x, y, w, h = box
    return shown.crop((round(x), round(y), round(x + w), round(y + h)))


ORIENTATIONS = [6, 8, 5, 7]


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_processor_identify_and_rerank_crop_the_displayed_box_alike(tmp_path, model_dir, orientation):
    pytest.importorskip("cv2")
    from animal_reid.rerank.features import LocalFeatureConfig, crop_item, extract
    from modeling import AnimalReIDModel

    path = _exif_photo(tmp_path / f"o{orientation}.jpg", orientation)
    want = np.asarray(_displayed_crop(path, DISPLAYED_ONLY))
    proc = AnimalReIDImageProcessor.from_pretrained(model_dir)
    good, bad = (
        ImageItem(str(path), "good", "a", bbox=DISPLAYED_ONLY),
        ImageItem(str(path), "bad", "a", bbox=STORED_ONLY),
    )
    # the processor, the match sheets' crop (ImageItem.open) and re-ranking's crop: the same pixels
    assert np.array_equal(np.asarray(proc.crop(proc.load_image(str(path)), DISPLAYED_ONLY)), want)
    assert np.array_equal(np.asarray(good.open()), want)
    assert np.array_equal(np.asarray(crop_item(good)), want)
    # identify embeds that region (the model's own crop), and skips the stored-pixel box with the same message
    model = AnimalReIDModel.from_pretrained(model_dir).eval()
    bad_images = BadImages("skip")
    kept, rows = Identifier(model, proc).embed_usable([good, bad], bad_images, "gallery")
    assert kept == [0]
    np.testing.assert_allclose(rows[0], model.encode([Image.fromarray(want)], processor=proc)[0], atol=1e-5)
    assert [s.reason for s in bad_images.skipped] == [OUTSIDE]
    for refuse in (lambda: proc.preprocess_one(str(path), STORED_ONLY), bad.open, lambda: crop_item(bad)):
        with pytest.raises(InvalidBoxError) as err:
            refuse()
        assert str(err.value) == f"{path}: {OUTSIDE}"
    assert extract(bad, LocalFeatureConfig()).status == "unreadable"


def test_the_service_takes_boxes_in_displayed_pixels(tmp_path, model_dir):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    pytest.importorskip("sqlalchemy")
    from animal_reid.serve.app import check_image, create_app
    from animal_reid.serve.service import Limits, Service
    from animal_reid.testing.serve import serve_in_thread

    service = Service.from_pretrained(
        model_dir, f"sqlite:///{tmp_path / 'c.db'}", photo_dir=tmp_path / "photos", token="t", engine="torch"
    )
    photos = {o: _exif_photo(tmp_path / f"o{o}.jpg", o, seed=o) for o in (6, 8, 5)}
    limits = types.SimpleNamespace(limits=Limits())
    try:
        with serve_in_thread(create_app(service)) as base, httpx.Client(base_url=base, timeout=60) as c:
            for path in photos.values():
                data = path.read_bytes()
                assert (
                    check_image(data, path.name, limits).width,
                    check_image(data, path.name, limits).height,
                ) == (56, 96)
                files = [("files", (path.name, data, "image/jpeg"))]
                r = c.post("/v1/embed", files=files, data={"boxes": f"[{DISPLAYED_ONLY}]"})
                assert r.status_code == 200, r.text
                want = service.model.encode(
                    [_displayed_crop(path, DISPLAYED_ONLY)], processor=service.processor, engine="torch"
                )
                np.testing.assert_allclose(np.array(r.json()["embeddings"], np.float32), want, atol=1e-5)
                r = c.post("/v1/embed", files=files, data={"boxes": f"[{STORED_ONLY}]"})
                assert r.status_code == 400
                assert r.json() == {"detail": f"{path.name}: cannot use this image: {OUTSIDE}"}
    finally:
        service.close()


@settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    orientation=st.integers(1, 8),
    box=st.tuples(st.integers(-30, 100), st.integers(-30, 100), st.integers(-5, 80), st.integers(-5, 80)),
)
def test_any_exif_orientation_and_box_processor_identify_and_rerank_agree(tmp_path_factory, orientation, box):
    from animal_reid.rerank.features import crop_item

    path = _exif_photo(tmp_path_factory.mktemp("o") / "p.jpg", orientation, size=(40, 24))
    proc = AnimalReIDImageProcessor(min_side=1)
    item = ImageItem(str(path), "p", bbox=list(box))
    outcomes = []
    for crop in (lambda: proc.crop(proc.load_image(str(path)), list(box), name=str(path)), item.open,
                 lambda: crop_item(item)):  # fmt: skip
        try:
            outcomes.append(np.asarray(crop()))
        except InvalidBoxError as err:
            outcomes.append(str(err))
    first = outcomes[0]
    if isinstance(first, str):
        assert outcomes == [first] * 3 and first.startswith(f"{path}: ")
        return
    assert all(isinstance(o, np.ndarray) and np.array_equal(o, first) for o in outcomes)
    with Image.open(path) as im:
        shown = ImageOps.exif_transpose(im).convert("RGB")
    x, y, w, h = box
    clip = (max(x, 0), max(y, 0), min(x + w, shown.width), min(y + h, shown.height))
    assert np.array_equal(first, np.asarray(shown.crop(clip)))
