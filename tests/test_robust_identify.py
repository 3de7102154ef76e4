"""identify under bad input: unusable images skipped and reported, a crash-safe self-healing cache, arguments
checked before any work, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from animal_reid import identify
from animal_reid.identify import (
    BadImageError,
    BadImages,
    EmbeddingCache,
    Identifier,
    read_gallery,
    read_queries,
)
from animal_reid.manifest import LOCK_NAME

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (220, 210, 30),
    "purple": (140, 30, 160),
}
FAST = settings(
    max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _photo(path: Path, rgb, seed: int, size: int = 40, fmt: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb)[None, None, :] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


class FakeModel:
    """Embeds an image as its unit mean colour offset from grey, through the real processor's loader."""

    def __init__(self, fail_on_call: int | None = None):
        from modeling import AnimalReIDImageProcessor

        self.proc = AnimalReIDImageProcessor(size=16)
        self.calls = 0
        self.fail_on_call = fail_on_call

    def encode(self, images, batch_size=32, processor=None, boxes=None, thetas=None, **kwargs):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt  # the run is killed half-way
        out = []
        for im in images:
            v = np.asarray(self.proc.load_image(im), dtype=np.float64).reshape(-1, 3).mean(0) - 127.5
            out.append(v / np.linalg.norm(v))
        return np.array(out, dtype=np.float32)


BAD = {  # file -> (maker, expected reason)
    "red/empty.jpg": (lambda p: p.write_bytes(b""), "file is empty (0 bytes)"),
    "green/truncated.jpg": (None, "cannot decode image, truncated or corrupt"),
    "blue/notes.jpg": (lambda p: p.write_text("this is a text file\n"), "not a readable image file"),
    "yellow/animated.gif": (None, "unsupported file type '.gif'"),
    "purple/one_pixel.png": (lambda p: Image.new("RGB", (1, 1), (9, 9, 9)).save(p), "image is 1x1 pixels"),
}


@pytest.fixture
def gallery_40(tmp_path):
    """40 gallery files, 7 good per individual (35) and the 5 bad ones of BAD; 3 good queries."""
    root = tmp_path / "gallery"
    for k, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(7):
            _photo(root / name / f"{i}.{'jpg' if i % 2 else 'png'}", rgb, 10 * k + i)
    good_jpeg = (root / "green" / "1.jpg").read_bytes()
    for rel, (make, _) in BAD.items():
        p = root / rel
        if rel.endswith("truncated.jpg"):
            p.write_bytes(good_jpeg[: len(good_jpeg) // 2])
        elif rel.endswith(".gif"):
            _photo(p, COLOURS["yellow"], 99, fmt="GIF")
        else:
            make(p)
    assert sum(1 for f in root.rglob("*") if f.is_file()) == 40
    queries = tmp_path / "queries"
    for name in ("red", "blue", "purple"):
        _photo(queries / f"q_{name}.png", COLOURS[name], 500 + len(name))
    return root, queries


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    modeling = pytest.importorskip("modeling")
    d = tmp_path_factory.mktemp("tiny_model")
    cfg = modeling.AnimalReIDConfig(backbone="test_efficientnet", embedding_dim=32, image_size=64)
    modeling.AnimalReIDModel(cfg).eval().save_pretrained(d)
    modeling.AnimalReIDImageProcessor(size=64).save_pretrained(d)
    return d


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------------------------
# bad images
def test_forty_images_five_bad_results_for_the_35_and_a_report_of_exactly_the_5(
    tmp_path, gallery_40, tiny_model_dir, capsys
):
    root, qdir = gallery_40
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["--model", str(tiny_model_dir), "--gallery", str(root), "--queries", str(qdir), "--out", str(out)]
    argv += ["--cache-dir", str(cache), "--top-k", "3", "--batch-size", "4", "-q"]
    assert identify.main(argv) == 0
    captured = capsys.readouterr()
    summary = captured.out.strip().splitlines()[-1]
    assert "3 queries against 35 gallery images (5 individuals); embedded 38 images" in summary
    assert "skipped 5 unusable images" in summary
    assert (
        f"skipped 5 unusable images (5 gallery, 0 query); path and reason of each in {out / 'skipped.csv'}"
        in (captured.err)
    )
    assert "Traceback" not in captured.err

    report = _read_csv(out / "skipped.csv")
    assert [set(r) for r in report[:1]] == [{"path", "role", "reason"}]
    got = {str(Path(r["path"]).relative_to(root)): r for r in report}
    assert set(got) == set(BAD) and len(report) == 5
    for rel, (_, reason) in BAD.items():
        assert got[rel]["role"] == "gallery" and got[rel]["reason"].startswith(reason), (rel, got[rel])
        assert str(root) not in got[rel]["reason"]  # the reason does not repeat the path

    rows = _read_csv(out / "results.csv")
    assert len(rows) == 9 and {r["query"] for r in rows} == {str(p) for p in qdir.iterdir()}
    bad_names = {str(Path(rel)) for rel in BAD}
    assert not {r["image"] for r in rows} & bad_names
    assert len(json.loads((out / "results.json").read_text())) == 3
    assert len(list((out / "match_sheets").glob("*.png"))) == 3
    assert len(EmbeddingCache(cache, next(cache.iterdir()).name)) == 38  # the good ones, cached

    # fail-fast: the first bad file stops the run with one line naming it (no traceback without -v)
    assert identify.main(argv + ["--on-error", "raise", "--overwrite"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and any(Path(rel).name in err[0] for rel in BAD)
    assert identify.main(argv + ["--on-error", "raise", "--overwrite", "-v"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_api_skips_bad_queries_and_gallery_images_per_image(tmp_path, gallery_40):
    root, qdir = gallery_40
    (qdir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    _photo(qdir / "small.png", (0, 0, 0), 1, size=4)
    (qdir / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (qdir / ".hidden.jpg").write_bytes(b"")  # hidden files are not inputs
    bad = BadImages("skip")
    gallery, queries = read_gallery(root, bad_images=bad), read_queries([qdir], bad_images=bad)
    assert len(gallery) == 39 and len(queries) == 5 and len(bad) == 2  # the GIF and the HEIC at listing
    ident = Identifier(FakeModel(), save_every=8)
    results = ident.identify(gallery, queries, top_k=2, bad_images=bad)
    assert sorted(Path(r.query).name for r in results) == ["q_blue.png", "q_purple.png", "q_red.png"]
    assert all(r.candidates[0]["identity"] == Path(r.query).stem[2:] for r in results)
    by_name = {Path(s.path).name: s for s in bad.skipped}
    assert set(by_name) == {Path(r).name for r in BAD} | {"broken.png", "small.png", "photo.heic"}
    assert by_name["small.png"].role == "query" and "4x4 pixels" in by_name["small.png"].reason
    assert "unsupported file type '.heic'" in by_name["photo.heic"].reason
    assert ident.n_embedded == 35 + 3


def test_on_error_raise_and_no_policy_fail_fast(tmp_path, gallery_40):
    root, qdir = gallery_40
    with pytest.raises(BadImageError, match=r"gallery image .*animated\.gif: unsupported file type"):
        read_gallery(root, bad_images=BadImages("raise"))
    gallery = read_gallery(root)  # no policy: other files ignored, as before
    assert len(gallery) == 39 and not any(g.image.endswith(".gif") for g in gallery)
    with pytest.raises(ValueError, match=r"(empty|truncated|notes\.jpg|1x1)"):
        Identifier(FakeModel()).identify(gallery, read_queries([qdir]), bad_images=BadImages("raise"))
    with pytest.raises(ValueError, match="on_error must be one of"):
        BadImages("ignore")


def test_all_gallery_images_bad_is_an_error_with_the_report_written(tmp_path, tiny_model_dir, capsys):
    root = tmp_path / "g"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"")
    (root / "a" / "y.gif").write_bytes(b"GIF89a")
    q = _photo(tmp_path / "q.png", (1, 2, 3), 0)
    argv = [
        "--model",
        str(tiny_model_dir),
        "--gallery",
        str(root),
        "--queries",
        str(q),
        "--out",
        str(tmp_path / "o"),
    ]
    assert identify.main(argv + ["--no-cache", "-q"]) == 1
    err = capsys.readouterr().err
    assert "error: no usable gallery image: all 1 were skipped" in err  # the GIF was skipped at listing
    assert "skipped 2 unusable images (2 gallery, 0 query)" in err
    assert len(_read_csv(tmp_path / "o" / "skipped.csv")) == 2


# ------------------------------------------------------------------------------------------------------------------
# the embedding cache
def _items(tmp_path: Path, n: int) -> list[identify.ImageItem]:
    names = list(COLOURS)
    return [
        identify.ImageItem(
            image=str(_photo(tmp_path / "imgs" / f"{i}.png", COLOURS[names[i % 5]], i)), name=str(i)
        )
        for i in range(n)
    ]


def test_a_killed_run_keeps_what_it_embedded(tmp_path):
    items = _items(tmp_path, 12)
    killed = Identifier(FakeModel(fail_on_call=3), model_key="k", cache_dir=tmp_path / "c", save_every=4)
    with pytest.raises(KeyboardInterrupt):
        killed.embed(items)
    parts = sorted((tmp_path / "c" / "k").glob("part-*.npz"))
    assert len(parts) == 2 and not list((tmp_path / "c" / "k").glob(".tmp-*"))  # two chunks saved, no debris
    again = Identifier(FakeModel(), model_key="k", cache_dir=tmp_path / "c", save_every=4)
    assert len(again.cache) == 8
    emb = again.embed(items)
    assert again.n_embedded == 4 and emb.shape == (12, 3)
    np.testing.assert_allclose(emb, Identifier(FakeModel()).embed(items), atol=1e-6)
    d = tmp_path / "c" / "k"
    assert not list(d.glob("part-*.npz")) and (d / "embeddings.npz").is_file()  # folded into one file
    assert len(EmbeddingCache(tmp_path / "c", "k")) == 12


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _corrupt_cases():
    def npz(**arrays):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    keys = np.array(["a", "b"])
    return {
        "empty": lambda data: b"",
        "truncated": lambda data: data[: len(data) // 2],
        "garbage": lambda data: b"garbage" * 50,
        "flipped-byte": lambda data: data[:200] + bytes([data[200] ^ 0xFF]) + data[201:],
        "npy-not-npz": lambda data: _npy(np.zeros(3)),
        "wrong-arrays": lambda data: npz(x=np.zeros(2)),
        "rows-mismatch": lambda data: npz(keys=keys, embeddings=np.zeros((3, 4), np.float32)),
        "nan": lambda data: npz(keys=keys, embeddings=np.full((2, 4), np.nan, np.float32)),
        "float64": lambda data: npz(keys=keys, embeddings=np.zeros((2, 4))),
        "1-d": lambda data: npz(keys=keys, embeddings=np.zeros(2, np.float32)),
        "int-keys": lambda data: npz(keys=np.arange(2), embeddings=np.zeros((2, 4), np.float32)),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_corrupt_cache_file_is_reported_once_and_rebuilt(tmp_path, caplog, case):
    items = _items(tmp_path, 6)
    want = Identifier(FakeModel(), model_key="k", cache_dir=tmp_path / "c").embed(items)
    path = tmp_path / "c" / "k" / "embeddings.npz"
    path.write_bytes(_corrupt_cases()[case](path.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="animal_reid.identify"):
        ident = Identifier(FakeModel(), model_key="k", cache_dir=tmp_path / "c")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1 and str(path) in warnings[0].getMessage() and "corrupt" in warnings[0].getMessage()
    )
    assert "\n" not in warnings[0].getMessage()
    np.testing.assert_allclose(ident.embed(items), want, atol=1e-6)
    assert ident.n_embedded == 6  # rebuilt
    assert len(EmbeddingCache(tmp_path / "c", "k")) == 6 and ident.cache.n_rebuilt == 1


@FAST
@given(
    how=st.sampled_from(["truncate", "garbage", "flip", "append"]),
    where=st.floats(0.0, 1.0),
    junk=st.binary(min_size=1, max_size=256),
)
def test_random_damage_to_the_cache_never_crashes(tmp_path_factory, how, where, junk):
    tmp = tmp_path_factory.mktemp("cache")
    items = _items(tmp, 5)
    want = Identifier(FakeModel(), model_key="k", cache_dir=tmp / "c").embed(items)
    path = tmp / "c" / "k" / "embeddings.npz"
    data = path.read_bytes()
    at = int(where * (len(data) - 1))
    damaged = {
        "truncate": data[:at],
        "garbage": junk,
        "flip": data[:at] + bytes([data[at] ^ (junk[0] or 1)]) + data[at + 1 :],
        "append": data + junk,
    }[how]
    path.write_bytes(damaged)
    logger = logging.getLogger("animal_reid.identify")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append
    logger.addHandler(handler)
    try:
        ident = Identifier(FakeModel(), model_key="k", cache_dir=tmp / "c")
    finally:
        logger.removeHandler(handler)
    found, rows = ident.cache.lookup([it.cache_key() for it in items])
    if not seen:  # damage the checks cannot see (e.g. a zip timestamp) must leave the rows intact
        assert found.all() and np.array_equal(rows, want)
    np.testing.assert_allclose(ident.embed(items), want, atol=1e-6)
    with zipfile.ZipFile(path) as z:  # valid again afterwards
        assert z.testzip() is None


# ------------------------------------------------------------------------------------------------------------------
# arguments checked before any work, one-line errors
@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Valid arguments for a tiny run; loading a model fails the test (errors must come before)."""
    root = tmp_path / "gallery"
    _photo(root / "red" / "0.png", COLOURS["red"], 0)
    q = _photo(tmp_path / "q.png", COLOURS["red"], 1)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(Identifier, "from_pretrained", no_model)
    base = {
        "--model": str(model),
        "--gallery": str(root),
        "--queries": str(q),
        "--out": str(tmp_path / "out"),
    }
    return tmp_path, base


def _argv(base: dict, **changes) -> list[str]:
    args = {**base, **changes}
    argv = []
    for k, v in args.items():
        if v is None:
            continue
        argv += [k] if v is True else [k, v]
    return argv


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"--top-k": "0"}, "--top-k must be >= 1, got 0"),
        ({"--batch-size": "0"}, "--batch-size must be >= 1"),
        ({"--num-workers": "-1"}, "--num-workers must be >= 0"),
        ({"--threshold": "1.5"}, "must be a cosine in [-1, 1], got 1.5"),
        ({"--threshold": "nan"}, "must be a cosine in [-1, 1]"),
        (
            {"--threshold": "no-such.json"},
            "threshold must be a number, an open-set threshold JSON file or 'gallery'",
        ),
        ({"--threshold": "BADJSON"}, "is not an open-set threshold JSON"),
        ({"--threshold": "gallery", "--rerank": "local"}, "--threshold gallery calibrates cosines"),
        ({"--gallery": "MISSING"}, "--gallery MISSING: no such file or folder"),
        ({"--queries": "MISSING"}, "--queries MISSING: no such file or folder"),
        ({"--model": "./no/such/model"}, "no such model directory, and not a Hub repo id"),
        ({"--model": "EMPTYDIR"}, "holds no config.json"),
        ({"--out": "AFILE"}, "exists and is not a folder"),
        (
            {"--out": "FULL"},
            "keep.txt) and was not written by animal-reid (no .animal-reid-manifest.json; an output written "
            "before manifests existed has none either): choose a new or empty folder, or move it aside first",
        ),
        ({"--out": "INSIDE"}, "lies inside --gallery"),
        ({"--cache-dir": "AFILE"}, "--cache-dir"),
        ({"--on-error": "ignore"}, "argument --on-error: invalid choice"),
        ({"--top-k": "two"}, "argument --top-k: invalid int value"),
        ({"--model": None}, "the following arguments are required: --model"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_before_any_work(cli, capsys, changes, message):
    tmp, base = cli
    subst = {
        "MISSING": str(tmp / "missing"),
        "EMPTYDIR": str(tmp),
        "AFILE": str(tmp / "q.png"),
        "FULL": str(tmp / "full"),
        "INSIDE": str(tmp / "gallery" / "results"),
        "BADJSON": str(tmp / "bad.json"),
    }
    (tmp / "full").mkdir()
    (tmp / "full" / "keep.txt").write_text("mine")
    (tmp / "bad.json").write_text("{not json")
    changes = {k: subst.get(v, v) if isinstance(v, str) else v for k, v in changes.items()}
    message = message.replace("MISSING", subst["MISSING"])
    assert identify.main(_argv(base, **changes)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err
    # the user's folder is untouched (the empty lock file OutputFolder took to look at it is ours)
    left = sorted(p.name for p in (tmp / "full").iterdir() if p.name != LOCK_NAME)
    assert (tmp / "full" / "keep.txt").read_text() == "mine" and left == ["keep.txt"]


def test_cuda_device_without_cuda_is_a_usage_error(cli, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert identify.main(_argv(cli[1], **{"--device": "cuda"})) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_failures_exit_1_with_one_line_and_verbose_shows_the_traceback(cli, capsys, monkeypatch):
    tmp, base = cli

    def broken(*a, **k):
        raise RuntimeError("weights are corrupt\nsecond line of detail")

    monkeypatch.setattr(Identifier, "from_pretrained", broken)
    assert identify.main(_argv(base)) == 1
    err = capsys.readouterr().err
    assert err == "error: weights are corrupt (-v shows the traceback)\n"
    assert identify.main(_argv(base, **{"--overwrite": True, "-v": True})) == 1
    err = capsys.readouterr().err
    assert (
        "Traceback (most recent call last)" in err
        and err.strip().splitlines()[-1] == "error: weights are corrupt"
    )
    with pytest.raises(identify.UsageError):  # run() raises; main() turns it into a line
        identify.run(_argv(base, **{"--top-k": "0"}))


def test_overwrite_replaces_only_our_outputs(tmp_path, folder_out_run):
    """--overwrite removes the previous run's files the manifest lists (a sheet this run does not draw again),
    never a file of the user's, even one named like a sheet (the old rule removed NNNN_*.png by name)."""
    out, run_cli = folder_out_run
    ours = sorted(p.name for p in (out / "match_sheets").iterdir())
    assert ours == ["0000_q.png", "0001_q2.png"]
    (out / "notes.txt").write_text("keep me")
    yours = out / "match_sheets" / "0007_old_query.png"
    yours.write_bytes(b"mine")
    run_cli(["--overwrite"], queries=1)
    assert (out / "notes.txt").read_text() == "keep me" and yours.read_bytes() == b"mine"
    assert sorted(p.name for p in (out / "match_sheets").iterdir()) == ["0000_q.png", "0007_old_query.png"]


@pytest.fixture
def folder_out_run(tmp_path, tiny_model_dir):
    root = tmp_path / "g"
    for name in ("red", "blue"):
        _photo(root / name / "0.png", COLOURS[name], 0)
    q = [_photo(tmp_path / "q.png", COLOURS["red"], 1), _photo(tmp_path / "q2.png", COLOURS["blue"], 2)]
    out = tmp_path / "out"

    def run(extra, queries=2):
        argv = ["--model", str(tiny_model_dir), "--gallery", str(root), "--queries", *map(str, q[:queries])]
        return identify.main(argv + ["--out", str(out), "--no-cache", "-q", *extra])

    assert run([]) == 0
    return out, run
