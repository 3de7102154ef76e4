"""``identify --explain DIR``: a PAIR-X sheet per query against its top candidates (animal_reid.identify.explain_out).

One module fixture runs the command twice on a tiny random model and generated photos: a first run (one query file
is corrupt), then ``--overwrite`` into the same folders with a query that disappears between identification and
its explanation. The tests read what each run wrote; the refusals need no model and run on their own.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animal_reid import identify
from animal_reid.identify import Identifier

TOP_K, EXPLAIN_TOP, MATCHES = 3, 2, 4
SIZES = {"ann": (96, 80), "bob": (80, 96), "cat": (112, 72)}  # photo sizes (width, height) per individual


def blobs(seed: int, size=(96, 80)) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(size[1] // 6, size[0] // 6, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


def read_folder(folder: Path) -> dict:
    """What a run left in ``folder``: each JSON parsed, each PNG's size, skipped.csv's rows."""
    out = {"json": {}, "png": {}, "skipped": []}
    for p in sorted(folder.iterdir()):
        if p.suffix == ".json" and not p.name.startswith("."):
            out["json"][p.stem] = json.loads(p.read_text())
        elif p.suffix == ".png":
            with Image.open(p) as im:
                out["png"][p.stem] = im.size
    with open(folder / "skipped.csv", newline="") as f:
        out["skipped"] = list(csv.DictReader(f))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from animal_reid.testing.serve import tiny_model

    root = tmp_path_factory.mktemp("identify_explain")
    model = tiny_model(root / "model", image_size=64)
    for k, (name, size) in enumerate(SIZES.items()):
        for i in range(2):
            (root / "gallery" / name).mkdir(parents=True, exist_ok=True)
            blobs(10 * k + i, size).save(root / "gallery" / name / f"{i}.png")
    queries = root / "queries"
    queries.mkdir()
    blobs(0).crop((8, 0, 96, 80)).save(queries / "q1.png")  # ann/0.png shifted by 8 px
    blobs(11, SIZES["bob"]).save(queries / "q2.png")
    (queries / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # corrupt
    argv = ["--model", str(model), "--gallery", str(root / "gallery"), "--queries", str(queries)]
    argv += ["--out", str(root / "out"), "--explain", str(root / "explain"), "--top-k", str(TOP_K)]
    argv += ["--explain-top", str(EXPLAIN_TOP), "--explain-matches", str(MATCHES), "--no-cache", "--quiet"]
    first = identify.run(argv)
    first_folder = read_folder(root / "explain")
    with pytest.MonkeyPatch.context() as mp:  # q2.png vanishes once identified, before it is explained
        identify_all = Identifier.identify

        def identify_then_remove(self, *args, **kwargs):
            results = identify_all(self, *args, **kwargs)
            (queries / "q2.png").unlink()
            return results

        mp.setattr(Identifier, "identify", identify_then_remove)
        second = identify.run(argv + ["--overwrite", "--explain-top", "1"])
    return {
        "root": root,
        "argv": argv,
        "first": (first, first_folder),
        "second": (second, read_folder(root / "explain")),
    }


def test_one_sheet_per_query_explaining_its_top_candidates(runs):
    results, folder = runs["first"]
    assert sorted(folder["png"]) == sorted(folder["json"]) == ["q1", "q2"]  # not the broken query
    for r in results:
        stem = Path(r.query).stem
        record = folder["json"][stem]
        assert record["query"] == r.query
        cands = record["candidates"]
        assert [c["rank"] for c in cands] == [1, 2] and len(r.candidates) == TOP_K
        assert [(c["identity"], c["name"]) for c in cands] == [
            (c["identity"], c["image"]) for c in r.candidates[:EXPLAIN_TOP]
        ]
        for c in cands:
            e = c["explanation"]
            assert len(e["matches"]) == MATCHES and e["relevance_method"] == "lrp"
            assert e["scores"]["n_matches"] >= MATCHES and -1.0 <= e["cosine"] <= 1.0
        width, height = folder["png"][stem]
        assert height > EXPLAIN_TOP * 320 and width > 2 * 240  # two rows of two panels 320 pixels high
    q1 = next(r for r in results if r.query.endswith("q1.png"))
    assert q1.candidates[0]["identity"] == "ann"


def test_coordinates_lie_inside_each_photo(runs):
    _, folder = runs["first"]
    query_size = {"q1": (88, 80), "q2": SIZES["bob"]}
    for stem, record in folder["json"].items():
        for c in record["candidates"]:
            gallery_size = SIZES[c["identity"]]
            xy_a = np.array([m["a"] for m in c["explanation"]["matches"]])
            xy_b = np.array([m["b"] for m in c["explanation"]["matches"]])
            assert ((xy_a >= 0) & (xy_a <= query_size[stem])).all(), xy_a
            assert ((xy_b >= 0) & (xy_b <= gallery_size)).all(), xy_b


def test_a_query_that_cannot_be_read_is_skipped_and_reported(runs):
    results, folder = runs["first"]
    assert len(results) == 2
    assert [(Path(s["path"]).name, s["role"]) for s in folder["skipped"]] == [("broken.png", "query")]
    assert "not a readable image" in folder["skipped"][0]["reason"]
    # the second run: q2 is gone by the time it is explained; its sheet from the first run is not left behind
    results, folder = runs["second"]
    assert len(results) == 2 and sorted(folder["png"]) == sorted(folder["json"]) == ["q1"]
    assert len(folder["json"]["q1"]["candidates"]) == 1  # --overwrite replaced the first run's sheet
    rows = {Path(s["path"]).name: s for s in folder["skipped"]}
    assert sorted(rows) == ["broken.png", "q2.png"] and rows["q2.png"]["role"] == "query"
    assert (
        rows["q2.png"]["reason"].startswith("not explained:") and "No such file" in rows["q2.png"]["reason"]
    )


def test_the_folder_is_never_written_over_without_consent(runs, tmp_path, capsys):
    argv, root = runs["argv"], runs["root"]
    before = sorted(p.name for p in (root / "explain").iterdir())
    new_out = ["--out", str(tmp_path / "out2")]
    assert identify.main(argv + new_out) == 2  # a previous output of ours needs --overwrite
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"error: --explain {root / 'explain'} holds the output of a previous animal-reid identify"
    )
    assert "pass --overwrite" in err and "\n" not in err
    assert sorted(p.name for p in (root / "explain").iterdir()) == before and not (tmp_path / "out2").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("field notes")
    for extra, message in [
        (
            ["--explain", str(mine), "--overwrite"],
            f"error: --explain {mine} is not empty (1 entry: notes.txt)",
        ),
        (["--explain", str(tmp_path / "out2" / "x")], "must be separate folders, neither inside the other"),
        (["--explain-top", "0"], "error: --explain-top must be >= 1, got 0"),
    ]:
        assert identify.main(argv + new_out + extra) == 2
        assert message in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "field notes" and sorted(p.name for p in mine.iterdir()) == [
        "notes.txt"
    ]
    no_explain = [a for a in argv if a not in ("--explain", str(root / "explain"))]
    assert identify.main(no_explain + new_out) == 2  # --explain-top / --explain-matches without --explain
    assert "error: --explain-top needs --explain DIR" in capsys.readouterr().err
