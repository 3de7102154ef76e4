"""Identification API and CLI: gallery formats, ranking by individual, verdicts, cache reuse, outputs; plots."""

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animal_reid import identify, metrics, plots
from animal_reid.identify import Identifier, ImageItem, read_gallery, read_queries
from animal_reid.identify.cli import accuracy_summary
from animal_reid.identify.thresholds import resolve_threshold

# identity -> colour; the fake model embeds an image as its normalised mean colour minus grey
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (220, 210, 30)}


def _png(path: Path, rgb, seed: int, size: int = 48) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb)[None, None, :] + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(
        np.uint8
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


class FakeModel:
    """Embeds an image as its unit mean colour offset from grey; counts the images it sees."""

    def __init__(self):
        self.seen = 0

    def encode(self, images, batch_size=32, processor=None, boxes=None, thetas=None, **kwargs):
        out = []
        for im in images:
            src = io.BytesIO(im) if isinstance(im, bytes) else im
            with Image.open(src) as img:
                v = np.asarray(img.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0) - 127.5
            out.append(v / np.linalg.norm(v))
        self.seen += len(out)
        return np.array(out, dtype=np.float32)


@pytest.fixture
def folder_gallery(tmp_path):
    root = tmp_path / "gallery"
    seed = 0
    for name, rgb in list(COLOURS.items())[:3]:  # yellow stays out: a new individual
        for i in range(3):
            _png(root / name / f"{i}.png", rgb, seed)
            seed += 1
    queries = tmp_path / "queries"
    _png(queries / "q_red.png", COLOURS["red"], 100)
    _png(queries / "q_blue.png", COLOURS["blue"], 101)
    _png(queries / "q_yellow.png", COLOURS["yellow"], 102)
    return root, queries


def test_folder_gallery_ranking_verdicts_and_cache(tmp_path, folder_gallery):
    root, qdir = folder_gallery
    gallery = read_gallery(root)
    assert len(gallery) == 9 and {g.identity for g in gallery} == {"red", "green", "blue"}
    queries = read_queries([qdir])
    model = FakeModel()
    ident = Identifier(model, model_key="fake-v1", cache_dir=tmp_path / "cache")
    # red->(red, ...) close to 1; yellow's best match (red or green) is far below 0.99
    results = {Path(r.query).stem: r for r in ident.identify(gallery, queries, top_k=2, threshold=0.99)}
    assert results["q_red"].candidates[0]["identity"] == "red"
    assert results["q_blue"].candidates[0]["identity"] == "blue"
    assert results["q_red"].new_individual is False
    assert results["q_yellow"].new_individual is True
    assert results["q_yellow"].predicted_identity == identify.NEW_INDIVIDUAL
    for r in results.values():
        assert [c["rank"] for c in r.candidates] == [1, 2]
        assert len({c["identity"] for c in r.candidates}) == 2  # individuals, not images
        assert r.candidates[0]["score"] >= r.candidates[1]["score"]
    # candidate score = max over that individual's images
    g_emb = model.encode([g.image for g in gallery])
    q_red = model.encode([str(qdir / "q_red.png")])[0]
    red_rows = [i for i, g in enumerate(gallery) if g.identity == "red"]
    assert results["q_red"].candidates[0]["score"] == pytest.approx(
        float((g_emb[red_rows] @ q_red).max()), abs=1e-5
    )

    assert ident.n_embedded == 12
    # a new Identifier on the same cache embeds nothing; one more gallery image costs one embedding
    again = Identifier(FakeModel(), model_key="fake-v1", cache_dir=tmp_path / "cache")
    again.identify(gallery, queries, top_k=2)
    assert again.n_embedded == 0 and again.model.seen == 0
    _png(root / "green" / "extra.png", COLOURS["green"], 999)
    again.identify(read_gallery(root), queries, top_k=2)
    assert again.n_embedded == 1
    # another model key does not reuse these embeddings
    other = Identifier(FakeModel(), model_key="fake-v2", cache_dir=tmp_path / "cache")
    other.identify(gallery, queries[:1])
    assert other.n_embedded == 10


def test_no_threshold_gives_no_verdict_and_top_k_caps_at_individuals(folder_gallery):
    root, qdir = folder_gallery
    results = Identifier(FakeModel()).identify(read_gallery(root), read_queries([qdir]), top_k=10)
    assert all(r.new_individual is None and r.threshold is None for r in results)
    assert all(len(r.candidates) == 3 for r in results)


def test_csv_gallery_species_thresholds_and_outputs(tmp_path, folder_gallery):
    root, qdir = folder_gallery
    rows = [
        ("red/0.png", "red", "fox", "e1"),
        ("red/1.png", "red", "fox", "e1"),
        ("blue/0.png", "blue", "jay", ""),
    ]
    gcsv = root / "gallery.csv"
    with open(gcsv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "identity", "species", "encounter"])
        w.writerows(rows)
    qcsv = tmp_path / "queries.csv"
    with open(qcsv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "identity"])
        w.writerow([str(qdir / "q_red.png"), "red"])
        w.writerow([str(qdir / "q_blue.png"), "red"])  # a wrong label: its top-1 is blue
    gallery = read_gallery(gcsv)
    assert [g.species for g in gallery] == ["fox", "fox", "jay"] and gallery[2].encounter is None
    thr = identify.OpenSetThreshold(global_threshold=0.5, per_species={"jay": 1.01})
    results = Identifier(FakeModel()).identify(gallery, read_queries([qcsv]), top_k=2, threshold=thr)
    assert results[0].threshold == 0.5 and results[0].new_individual is False and results[0].correct is True
    assert results[1].threshold == 1.01 and results[1].new_individual is True and results[1].correct is False

    out = identify.write_results(results, tmp_path / "out")
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and table[0]["query_identity"] == "red" and table[0]["correct"] == "True"
    data = json.loads((out / "results.json").read_text())
    assert data[1]["predicted_identity"] == identify.NEW_INDIVIDUAL
    sheets = sorted((out / "match_sheets").glob("*.png"))
    assert len(sheets) == 2
    with Image.open(sheets[0]) as im:
        assert im.width > 3 * im.height / 2  # query beside its candidates


def test_corpus_gallery_reads_parquet_with_boxes(tmp_path, folder_gallery):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    root, qdir = folder_gallery
    recs = []
    for i, name in enumerate(["red", "green", "blue"]):
        for split in ("train", "test"):
            data = (root / name / ("0.png" if split == "train" else "1.png")).read_bytes()
            recs.append(
                {
                    "image": {"bytes": data, "path": None},
                    "image_id": f"{name}-{split}",
                    "identity": f"syn:toy:{name}",
                    "species": "toy",
                    "encounter": f"syn:toy:e{i}",
                    "bbox": [4.0, 4.0, 40.0, 40.0] if name == "red" else None,
                    "theta": 0.0,
                    "split": split,
                }
            )
    corpus = tmp_path / "corpus"
    for split in ("train", "test"):
        (corpus / "data" / "toy").mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist([r for r in recs if r["split"] == split])
        pq.write_table(table, corpus / "data" / "toy" / f"{split}-00000-of-00001.parquet")
    gallery = read_gallery(corpus)
    assert len(gallery) == 6 and isinstance(gallery[0].image, bytes)
    assert read_gallery(corpus, splits=["train"])[0].name.endswith("train")
    assert [g.bbox for g in gallery if g.identity == "syn:toy:red"][0] == [4.0, 4.0, 40.0, 40.0]
    res = Identifier(FakeModel()).identify(gallery, read_queries([qdir / "q_red.png"]), top_k=1)
    assert res[0].candidates[0]["identity"] == "syn:toy:red"
    with pytest.raises(ValueError, match="no corpus config 'lion'"):
        read_gallery(corpus, config="lion")


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_gallery(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        read_gallery(tmp_path / "empty")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,name\na.png,x\n")
    with pytest.raises(ValueError, match=r"needs columns \['identity', 'path'\]"):
        read_gallery(bad)
    with pytest.raises(ValueError, match="threshold must be a number"):
        resolve_threshold("not-a-file.json", None)
    with pytest.raises(ValueError, match="needs a model_key"):
        Identifier(FakeModel(), cache_dir=tmp_path)


def test_item_cache_key_depends_on_content_box_and_file(tmp_path):
    p = _png(tmp_path / "a.png", (1, 2, 3), 0)
    a = ImageItem(image=str(p), name="a")
    assert a.cache_key() == ImageItem(image=str(p), name="other name").cache_key()
    assert a.cache_key() != ImageItem(image=str(p), name="a", bbox=[0, 0, 10, 10]).cache_key()
    assert a.cache_key() != ImageItem(image=p.read_bytes(), name="a").cache_key()
    before = a.cache_key()
    _png(p, (9, 9, 9), 1)  # a rewritten file gets a new key (size or mtime changes)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert ImageItem(image=str(p), name="a").cache_key() != before
    assert ImageItem(image=b"x", name="a").cache_key() != ImageItem(image=b"y", name="a").cache_key()


# ------------------------------------------------------------------------------------------------------------------
# the real model code path: a tiny AnimalReIDModel saved to disk and loaded with trust_remote_code
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    modeling = pytest.importorskip("modeling")
    d = tmp_path_factory.mktemp("tiny_model")
    cfg = modeling.AnimalReIDConfig(backbone="test_efficientnet", embedding_dim=32, image_size=64)
    modeling.AnimalReIDModel(cfg).eval().save_pretrained(d)
    modeling.AnimalReIDImageProcessor(size=64).save_pretrained(d)
    return d


def test_cli_with_tiny_model_writes_outputs_and_reuses_cache(
    tmp_path, folder_gallery, tiny_model_dir, capsys
):
    root, qdir = folder_gallery
    argv = ["--model", str(tiny_model_dir), "--gallery", str(root), "--queries", str(qdir)]
    argv += [
        "--out",
        str(tmp_path / "out"),
        "--top-k",
        "2",
        "--threshold",
        "0.5",
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    results = identify.run(argv + ["--quiet"])
    first = capsys.readouterr().out
    assert "embedded 12 images" in first
    assert len(results) == 3 and all(len(r.candidates) == 2 for r in results)
    assert all(r.new_individual is not None for r in results)
    assert (tmp_path / "out" / "results.csv").is_file() and (tmp_path / "out" / "results.json").is_file()
    assert len(list((tmp_path / "out" / "match_sheets").glob("*.png"))) == 3
    # the same --out again needs --overwrite (a previous output of ours is refused before any work)
    assert identify.main(argv + ["--quiet"]) == 2
    assert (
        f"error: --out {tmp_path / 'out'} holds the output of a previous animal-reid identify run: pass "
        "--overwrite to replace those files (files you added there are kept)" in capsys.readouterr().err
    )
    assert identify.main(argv + ["--quiet", "--overwrite"]) == 0
    assert "embedded 0 images" in capsys.readouterr().out
    # the cache key follows the weights: another model directory gets its own entry
    key1, meta = identify.model_cache_key(tiny_model_dir, None)
    assert meta["weights"].startswith("sha256:") and meta["code"].startswith("sha256:") and len(key1) == 20


# ------------------------------------------------------------------------------------------------------------------
# plots
def test_plots_write_pngs(tmp_path, folder_gallery):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.integers(0, 10, 60)
    species = np.where(labels < 5, "lion", "nyala")
    res = metrics.evaluate_reid(emb, labels, species=species)
    paths = [
        plots.plot_cmc(res, tmp_path / "cmc.png"),
        plots.plot_per_species({"a": res, "b": res}, tmp_path / "bars.png"),
        plots.plot_score_histograms(*plots.pair_scores(emb, labels), tmp_path / "hist.png", threshold=0.2),
    ]
    root, _ = folder_gallery
    paths.append(
        plots.match_sheet(
            root / "red" / "0.png",
            [{"image": root / "red" / "1.png", "identity": "red", "score": 0.9}],
            tmp_path / "sheet.png",
            query_label="red",
        )
    )
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
    with Image.open(paths[-1]) as im:  # the candidate's border is green (same identity)
        rgb = im.convert("RGB")
        assert any(rgb.getpixel((x, 40)) == plots.GREEN for x in range(im.width))
    same, diff = plots.pair_scores(emb, labels)
    assert same.size > 0 and diff.size > 0 and np.all(np.abs(same) <= 1.0001)


# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_identify_on_real_nyala_gallery(tmp_path, data_root, tiny_model_dir, capsys):
    base = data_root / "wildlife_reidentification-main" / "Nyala_Data_Zero" / "train"
    ids = sorted(d for d in base.iterdir() if d.is_dir() and len(list(d.glob("*.jpg"))) >= 3)[:10]
    if len(ids) < 10:
        pytest.skip(f"fewer than 10 nyala identities with 3+ images under {base}")
    gcsv, qcsv = tmp_path / "gallery.csv", tmp_path / "queries.csv"
    with open(gcsv, "w", newline="") as g, open(qcsv, "w", newline="") as q:
        gw, qw = csv.writer(g), csv.writer(q)
        gw.writerow(["path", "identity", "species"])
        qw.writerow(["path", "identity"])
        for d in ids:
            imgs = sorted(d.glob("*.jpg"))
            qw.writerow([str(imgs[0]), d.name])
            for p in imgs[1:4]:
                gw.writerow([str(p), d.name, "nyala"])
    argv = ["--model", str(tiny_model_dir), "--gallery", str(gcsv), "--queries", str(qcsv), "--top-k", "3"]
    argv += ["--out", str(tmp_path / "out"), "--threshold", "0.9", "--cache-dir", str(tmp_path / "cache")]
    results = identify.run(argv)
    out1 = capsys.readouterr().out
    assert "embedded 40 images" in out1 and "1. " in out1
    assert len(results) == 10 and all(len(r.candidates) == 3 for r in results)
    assert len(list((tmp_path / "out" / "match_sheets").glob("*.png"))) == 10
    table = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert len(table) == 30 and {r["query_identity"] for r in table} == {d.name for d in ids}
    identify.main(argv + ["--quiet", "--overwrite"])
    assert "embedded 0 images" in capsys.readouterr().out


@pytest.mark.slow  # three subprocesses importing torch + transformers: ~40 s on 2 busy cores
def test_identify_a_hub_model_by_repo_id(tmp_path, folder_gallery, tiny_model_dir):
    """The Hub path: the model is pushed to the local Hub emulator and named by repo id; the embedding cache is
    keyed by the snapshot's commit."""
    emulator = pytest.importorskip("animal_reid.testing.hub_emulator")
    root, qdir = folder_gallery
    with emulator.HubEmulator(tmp_path / "hub") as hub:
        hub.run_python(
            "import sys; from huggingface_hub import HfApi; api = HfApi();"
            "api.create_repo('emulator-user/tiny-reid');"
            "api.upload_folder(folder_path=sys.argv[1], repo_id='emulator-user/tiny-reid')",
            str(tiny_model_dir),
        )
        code = "import sys; from animal_reid.identify import main; sys.exit(main(sys.argv[1:]))"
        args = ["--model", "emulator-user/tiny-reid", "--gallery", str(root), "--queries", str(qdir)]
        args += [
            "--out",
            str(tmp_path / "out"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "-q",
            "--device",
            "cpu",
            "--overwrite",  # the second run writes into the first one's --out
        ]
        first = hub.run_python(code, *args).stdout
        second = hub.run_python(code, *args).stdout
    assert "embedded 12 images" in first and "embedded 0 images" in second
    metas = list((tmp_path / "cache").glob("*/meta.json"))
    assert len(metas) == 1
    meta = json.loads(metas[0].read_text())
    assert meta["weights"].startswith("revision:") and meta["model"] == "emulator-user/tiny-reid"
    assert json.loads((tmp_path / "out" / "results.json").read_text())[0]["candidates"]


def test_gallery_threshold_is_calibrated_on_the_gallery_itself(folder_gallery, tmp_path, tiny_model_dir):
    root, qdir = folder_gallery
    gallery, queries = read_gallery(root), read_queries([qdir])
    results = Identifier(FakeModel()).identify(gallery, queries, top_k=2, threshold="gallery")
    g_emb = FakeModel().encode([g.image for g in gallery])
    expected = identify.OpenSetThreshold.fit_gallery(
        g_emb, [g.identity for g in gallery], [""] * len(gallery)
    )
    # same colour: cosine near 1; across colours at most about -0.2: the threshold lies between them
    assert -0.2 < expected.global_threshold < 0.9
    by = {Path(r.query).stem: r for r in results}
    assert all(r.threshold == pytest.approx(expected.global_threshold) for r in results)
    assert by["q_red"].new_individual is False and by["q_blue"].new_individual is False
    argv = ["--model", str(tiny_model_dir), "--gallery", str(root), "--queries", str(qdir), "-q"]
    assert identify.main([*argv, "--out", str(tmp_path / "o"), "--threshold", "gallery"]) == 0
    rows = json.loads((tmp_path / "o" / "results.json").read_text())
    assert all(r["new_individual"] is not None and r["threshold"] is not None for r in rows)
    # a gallery of one identity has nothing to calibrate on: no verdicts, no crash
    one = [g for g in gallery if g.identity == "red"]
    assert all(
        r.new_individual is None for r in Identifier(FakeModel()).identify(one, queries, threshold="gallery")
    )


def test_a_query_of_an_individual_missing_from_the_gallery_is_right_when_called_new(folder_gallery):
    root, qdir = folder_gallery
    queries = [
        ImageItem(str(qdir / "q_red.png"), "q_red", identity="red"),
        ImageItem(str(qdir / "q_yellow.png"), "q_yellow", identity="yellow"),  # no yellow in the gallery
    ]
    ident = Identifier(FakeModel())
    red, yellow = ident.identify(read_gallery(root), queries, top_k=2, threshold=0.99)
    assert red.query_in_gallery is True and red.correct is True
    assert yellow.query_in_gallery is False and yellow.new_individual is True and yellow.correct is True
    assert accuracy_summary([red, yellow]) == (
        ", top-1 correct 1/1, called new 1/1 of the queries whose individual is not in the gallery"
    )
    # without a threshold there is no verdict, so the missing individual's query cannot be right
    _, no_verdict = ident.identify(read_gallery(root), queries, top_k=2)
    assert no_verdict.new_individual is None and no_verdict.correct is False
