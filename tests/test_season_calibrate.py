"""Decision bands and their calibration: the bands JSON (round trip, old threshold files, identify reading it),
calibration meeting its targets on synthetic clusters, and ``animal-reid calibrate`` end to end and on bad input."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from animal_reid.identify.thresholds import load_threshold, resolve_threshold
from animal_reid.manifest import OutputError
from animal_reid.openset import OpenSetThreshold
from animal_reid.season import calibrate_cli
from animal_reid.season.calibration import (
    CalibrationError,
    bands_table,
    calibrate,
    check_catalogue,
    fit_bands,
    simulated_queries,
)
from animal_reid.season.decisions import BANDS_FORMAT, Band, Bands, BandsError

# --------------------------------------------------------------------------------------------------------------
# bands


@pytest.mark.parametrize(
    "score, decision",
    [
        (0.9, "known"),
        (0.8, "known"),
        (0.79, "unsure"),
        (0.6, "unsure"),
        (0.59, "new"),
        (None, "new"),
        (math.nan, "new"),
    ],
)
def test_band_decides_at_its_edges(score, decision):
    assert Band(0.8, 0.6).decide(score) == decision


@pytest.mark.parametrize(
    "known_above, new_below, message",
    [
        (0.5, 0.6, "known_above 0.5 is below new_below 0.6"),
        (math.nan, 0.6, "known_above must be a finite number, got nan"),
        (0.7, "x", "new_below must be a finite number, got 'x'"),
    ],
)
def test_a_bad_band_is_one_line(known_above, new_below, message):
    with pytest.raises(BandsError) as err:
        Band(known_above, new_below)
    assert str(err.value) == message


def _bands() -> Bands:
    return Bands(
        Band(0.7, 0.5, "all species", {"known_called_new": {"rate": 0.05, "count": 2, "of": 40}}),
        {"lion": Band(0.8, 0.6), "nyala": Band(0.65, 0.65)},
        rule="top2mean",
        targets={"max_known_called_new": 0.05, "max_wrong_known": 0.05},
        calibration={"model": "m"},
    )


def test_bands_json_round_trip_and_no_silent_overwrite(tmp_path):
    path = tmp_path / "bands.json"
    b = _bands()
    b.save(path)
    assert Bands.load(path) == b
    d = json.loads(path.read_text())
    assert (d["format"], d["version"], d["rule"], d["species"]["lion"]["new_below"]) == (
        BANDS_FORMAT,
        1,
        "top2mean",
        0.6,
    )
    assert (
        b.decide(0.75, "lion") == "unsure"
        and b.decide(0.75, "zebra") == "known"
        and b.decide(0.64, "nyala") == "new"
    )
    before = path.read_bytes()
    with pytest.raises(OutputError) as err:
        Bands(Band(0.9, 0.1)).save(path)
    assert (
        str(err.value)
        == f"bands file {path} exists: pass --overwrite to replace it, or choose another file name"
    )
    assert path.read_bytes() == before
    Bands(Band(0.9, 0.1)).save(path, overwrite=True)
    assert Bands.load(path).default == Band(0.9, 0.1)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"format": BANDS_FORMAT, "version": 2}, "version 2, this package reads version 1"),
        ({"format": BANDS_FORMAT, "version": 1, "default": {"new_below": 0.5}}, "default band has no known_above"),
        (
            {"format": BANDS_FORMAT, "version": 1, "default": {"known_above": 0.4, "new_below": 0.5}},
            "default band: known_above 0.4 is below new_below 0.5",
        ),
        (
            {"format": BANDS_FORMAT, "version": 1, "default": {"known_above": 0.6, "new_below": 0.5},
             "species": {"lion": {"known_above": "high", "new_below": 0.5}}},
            "band of species 'lion': known_above must be a finite number, got 'high'",
        ),
        (
            {"format": BANDS_FORMAT, "version": 1, "rule": "median", "default": {"known_above": 0.6, "new_below": 0.5}},
            "rule 'median' is not one of max, mean, top2mean, vote",
        ),
    ],
)  # fmt: skip
def test_a_bad_bands_file_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "bands.json"
    path.write_text(json.dumps(content))
    with pytest.raises(BandsError) as err:
        Bands.load(path)
    assert str(err.value) == f"bands file {path}: {message}"
    with pytest.raises(ValueError) as err:  # identify's reader names it the same way
        load_threshold(path)
    assert str(err.value) == f"threshold file {path}: {message}"


@pytest.mark.parametrize("text", ["", "{not json", "[1, 2]"])
def test_a_file_that_is_no_threshold_at_all_is_one_line(tmp_path, text):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(
        ValueError, match=rf"^threshold file {path} is not an open-set threshold JSON \(\w+: .*\)$"
    ):
        load_threshold(path)
    with pytest.raises(BandsError, match=rf"^bands file {path}: "):
        Bands.load(path)


def test_old_threshold_files_load_and_are_written_as_before(tmp_path):
    old = {"global_threshold": 0.5, "per_species": {"lion": 0.6}, "objective": "geometric_mean_BAKS_BAUS",
           "calibration": {"global": {"threshold": 0.5}}}  # fmt: skip
    path = tmp_path / "open_set_threshold.json"
    path.write_text(json.dumps(old, indent=2))
    thr = load_threshold(path)
    assert thr == OpenSetThreshold(0.5, {"lion": 0.6}, calibration={"global": {"threshold": 0.5}})
    assert resolve_threshold(str(path), None) == thr
    assert thr.to_dict() == old  # no known_above keys: files are written byte for byte as before
    thr.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == path.read_text()
    assert [thr.decision(s, "lion") for s in (0.59, 0.6, 0.99)] == ["new", "known", "known"]  # no unsure band
    assert resolve_threshold("0.4", None).decision(0.41) == "known"


def test_identify_reads_a_bands_file_as_its_threshold(tmp_path):
    path = tmp_path / "bands.json"
    _bands().save(path)
    for thr in (resolve_threshold(str(path), None), resolve_threshold(_bands(), None)):
        assert (thr.global_threshold, thr.per_species) == (0.5, {"lion": 0.6, "nyala": 0.65})
        assert (thr.known_above, thr.known_above_per_species) == (0.7, {"lion": 0.8, "nyala": 0.65})
        assert [thr.decision(s, "lion") for s in (0.59, 0.6, 0.79, 0.8)] == [
            "new",
            "unsure",
            "unsure",
            "known",
        ]
        assert [thr.decision(s, "zebra") for s in (0.49, 0.5, 0.7)] == ["new", "unsure", "known"]
    back = Bands.from_threshold(resolve_threshold(str(path), None))
    assert (back.band_for("lion").known_above, back.band_for("lion").new_below) == (0.8, 0.6)
    plain = Bands.from_threshold(OpenSetThreshold(0.5, {"lion": 0.3}))  # no unsure band anywhere
    assert [(b.known_above, b.new_below) for b in (plain.default, plain.band_for("lion"))] == [
        (0.5, 0.5),
        (0.3, 0.3),
    ]
    assert OpenSetThreshold.from_dict(resolve_threshold(str(path), None).to_dict()).known_above == 0.7


# --------------------------------------------------------------------------------------------------------------
# calibration on synthetic clusters


def _catalogue(n_ids, seed, encounters=4, images=3, dim=32, species=None, noise=1.0):
    """Individuals as cluster centres; an encounter shifts its centre, its images scatter around that."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    emb, ids, encs = [], [], []
    for i in range(n_ids):
        for e in range(encounters):
            centre = centres[i] + 0.6 * rng.normal(size=dim)
            for _ in range(images):
                emb.append(centre + noise * rng.normal(size=dim))
                ids.append(f"{seed}-{i}")
                encs.append(f"{seed}-{i}-{e}")
    sp = None if species is None else [species] * len(ids)
    return np.asarray(emb), ids, sp, encs


@pytest.mark.parametrize("rule", ["max", "mean", "top2mean", "vote"])
@pytest.mark.parametrize("targets", [(0.05, 0.05), (0.1, 0.02)])
def test_calibration_meets_its_targets_on_new_individuals(rule, targets):
    """Fitted on one catalogue, the bands keep their promises on another of new individuals from the same
    distribution, within 0.03 (600 known and 600 new queries: about three standard errors)."""
    a, b = targets
    emb, ids, _, encs = _catalogue(150, seed=1)
    bands = calibrate(emb, ids, None, encs, max_known_called_new=a, max_wrong_known=b, rule=rule)
    band = bands.default
    assert band.known_above >= band.new_below
    e = band.expected
    assert e["known_called_new"]["rate"] <= a and e["wrong_known"]["rate"] <= b  # on its own queries: exact
    assert e["known_called_new"]["of"] == 600 and e["new_called_new"]["of"] == 600
    emb2, ids2, _, encs2 = _catalogue(150, seed=2)
    q = simulated_queries(emb2, ids2, None, encs2, rule=rule)
    known, new = q["score"][~q["unknown"]], q["score"][q["unknown"]]
    wrong = q["unknown"] | (q["best"] != q["true"])
    assert np.mean(known < band.new_below) <= a + 0.03
    assert np.mean(q["score"][wrong] >= band.known_above) <= b + 0.03
    assert np.mean(known < band.new_below) >= a - 0.03  # and not needlessly strict
    assert np.mean(new < band.new_below) > 0.1  # the bands do call new animals new


def test_species_get_their_own_bands_and_a_small_one_the_default_with_a_warning(caplog):
    e1, i1, s1, n1 = _catalogue(60, seed=3, species="zebra", noise=0.5)
    e2, i2, s2, n2 = _catalogue(60, seed=4, species="lion", noise=1.5)
    e3, i3, s3, n3 = _catalogue(3, seed=5, species="okapi", encounters=2)
    emb = np.concatenate([e1, e2, e3])
    with caplog.at_level(logging.WARNING, logger="animal_reid.season.calibration"):
        bands = calibrate(emb, i1 + i2 + i3, s1 + s2 + s3, n1 + n2 + n3)
    assert {k: b.source for k, b in bands.species.items()} == {
        "lion": "species",
        "okapi": "default",
        "zebra": "species",
    }
    assert bands.species["zebra"].new_below > bands.species["lion"].new_below + 0.1  # tighter clusters
    assert (bands.species["okapi"].known_above, bands.species["okapi"].new_below) == (
        bands.default.known_above,
        bands.default.new_below,
    )
    assert [r.getMessage() for r in caplog.records] == [
        "species okapi: 6 encounters of 3 individuals give 6 known and 6 new calibration queries (fewer than 20): "
        "it uses the default band, fitted on all species"
    ]
    assert bands.species["okapi"].expected["catalogue"] == {"images": 18, "encounters": 6, "individuals": 3}
    table = bands_table(bands).splitlines()
    assert table[0].split() == ["species", "images", "enc.", "indiv.", "new_below", "known_above", "known",
                                "called", "new", "known", "unsure", "new", "unsure", "wrong", "known", "band"]  # fmt: skip
    assert [row.split()[0] for row in table[1:]] == ["lion", "okapi", "zebra", "(default)"]
    assert table[2].split()[1:4] == ["18", "6", "3"] and table[2].endswith("default")


def test_extreme_targets():
    emb, ids, _, encs = _catalogue(20, seed=6)
    q = simulated_queries(emb, ids, None, encs)
    known = q["score"][~q["unknown"]]
    none_new = fit_bands(q, 0.0, 1.0).default
    assert none_new.new_below < known.min() and none_new.known_above == none_new.new_below
    all_new = fit_bands(q, 1.0, 0.0).default
    assert all_new.new_below > known.max() and all_new.known_above > q["score"].max()


def test_viewpoint_aware_calibration_compares_flanks_only_with_flanks():
    # each individual: left and right flanks look unrelated; the right flank of another individual looks like one's left
    rng = np.random.default_rng(7)
    emb, ids, encs, views = [], [], [], []
    left = rng.normal(size=(10, 16))
    for i in range(10):
        for e in range(3):
            for v, base in (("left", left[i]), ("right", left[(i + 1) % 10])):
                emb.append(base + 0.2 * rng.normal(size=16))
                ids.append(f"i{i}")
                encs.append(f"i{i}-{e}")
                views.append(v)
    emb = np.asarray(emb)
    blind = simulated_queries(emb, ids, None, encs, views, table=None)
    aware = simulated_queries(emb, ids, None, encs, views)
    right = lambda q: np.mean(q["best"][~q["unknown"]] == q["true"][~q["unknown"]])  # noqa: E731
    assert right(aware) == 1.0 and right(blind) < 1.0


@pytest.mark.parametrize(
    "ids, species, encounters, message",
    [
        ([], None, None, "the catalogue is empty: calibration needs labelled images of at least two individuals"),
        (["A", "A", "A"], None, None, "the catalogue holds one individual only ('A'): calibration needs two "
         "individuals of one species (each held out in turn plays a new animal)"),
        (["A", "A"], ["lion", "zebra"], ["e1", "e2"], "the catalogue holds one individual only ('A'): calibration "
         "needs two individuals of one species (each held out in turn plays a new animal)"),
        (["A", "B"], ["lion", "zebra"], None, "the catalogue: no species has two individuals (held out in turn, "
         "they play new animals)"),
        (["A", "A", "B"], None, ["e1", "e1", "e2"], "the catalogue: no individual has two encounters (3 images of "
         "2 individuals): a known animal is simulated by matching one of its encounters against its others"),
    ],
)  # fmt: skip
def test_a_catalogue_that_cannot_be_calibrated_on_is_one_line(ids, species, encounters, message):
    with pytest.raises(CalibrationError) as err:
        check_catalogue(ids, species, encounters)
    assert str(err.value) == message


@pytest.mark.parametrize("a, b", [(1.5, 0.05), (0.05, -0.1), (math.nan, 0.05), (0.05, "0.1")])
def test_targets_out_of_range_are_one_line(a, b):
    emb, ids, _, encs = _catalogue(5, seed=8)
    with pytest.raises(CalibrationError) as err:
        calibrate(emb, ids, None, encs, max_known_called_new=a, max_wrong_known=b)
    name, value = ("max_known_called_new", a) if not (0 <= a <= 1) else ("max_wrong_known", b)
    assert str(err.value) == f"{name} must be a share in [0, 1], got {value!r}"


# --------------------------------------------------------------------------------------------------------------
# the command line


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from animal_reid.testing.serve import tiny_model

    return tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def _photos(root: Path, n_ids=6, encounters=3, images=2, viewpoints=True) -> Path:
    from animal_reid.testing.serve import photo

    rows = []
    for i in range(n_ids):
        for e in range(encounters):
            for k in range(images):
                name = f"{i}_{e}_{k}.png"
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(photo(1000 * i + 10 * e + k))
                rows.append({"path": name, "identity": f"A{i}", "species": "zebra" if i % 2 else "lion",
                             "encounter": f"e{i}-{e}", "viewpoint": ("left", "right")[k % 2] if viewpoints else ""})  # fmt: skip
    with open(root / "catalogue.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "catalogue.csv"


def test_calibrate_end_to_end_then_identify_reads_the_bands(tmp_path, tiny, capsys):
    from animal_reid.identify import main as identify_main

    cat = _photos(tmp_path / "cat")
    out = tmp_path / "bands" / "bands.json"
    argv = ["--model", str(tiny), "--catalogue", str(cat), "--out", str(out), "--cache-dir", str(tmp_path / "c"),
            "--max-known-called-new", "0.1", "--fusion", "mean", "--min-queries", "5"]  # fmt: skip
    assert calibrate_cli.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed[:4]] == ["species", "lion", "zebra", "(default)"]
    assert printed[-1].startswith(
        f"bands for 2 species and a default written to {out} (mean fusion; 36 images of 6 "
    )
    assert "embedded 36 images" in printed[-1]
    bands = Bands.load(out)
    assert bands.rule == "mean" and bands.targets == {"max_known_called_new": 0.1, "max_wrong_known": 0.05}
    assert bands.calibration["viewpoint_aware"] is True and bands.calibration["catalogue"] == str(cat)
    assert bands.species["lion"].expected["catalogue"] == {"images": 18, "encounters": 9, "individuals": 3}
    assert bands.species["lion"].expected["known_called_new"]["of"] == 9
    # again: refused without --overwrite (the file unchanged), then the cache embeds nothing
    before = out.read_bytes()
    assert calibrate_cli.main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: --out {out} exists: pass --overwrite to replace it, or choose another file name\n"
    )
    assert out.read_bytes() == before
    assert calibrate_cli.main([*argv, "--overwrite", "-q"]) == 0
    assert "embedded 0 images" in capsys.readouterr().out
    assert out.read_bytes() == before  # same inputs, same bands
    q = tmp_path / "cat" / "0_0_0.png"
    assert identify_main(["--model", str(tiny), "--gallery", str(cat), "--queries", str(q), "--out",
                          str(tmp_path / "id"), "--threshold", str(out), "--cache-dir", str(tmp_path / "c"), "-q"]) == 0  # fmt: skip
    (result,) = json.loads((tmp_path / "id" / "results.json").read_text())
    assert result["threshold"] == pytest.approx(bands.species["lion"].new_below)


def _fake_model(tmp_path: Path) -> Path:
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "m" / "config.json").write_text("{}")  # enough for the checks made before the model is loaded
    return tmp_path / "m"


def _run_bad(tmp_path, capsys, catalogue, *extra) -> str:
    out = tmp_path / "bands.json"
    argv = ["--model", str(_fake_model(tmp_path)), "--catalogue", str(catalogue), "--out", str(out), *extra]
    assert calibrate_cli.main(argv) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err.rstrip("\n")


@pytest.mark.parametrize(
    "flag, value, shown",
    [("--max-known-called-new", "1.5", "1.5"), ("--max-wrong-known", "-0.1", "-0.1"),
     ("--max-known-called-new", "nan", "nan"), ("--max-wrong-known", "2", "2")],
)  # fmt: skip
def test_cli_target_out_of_range(tmp_path, capsys, flag, value, shown):
    err = _run_bad(tmp_path, capsys, tmp_path, flag, value)
    assert err == f"error: {flag} must be a share in [0, 1], got {shown}"


@pytest.mark.parametrize("kind", ["empty folder", "header-only csv", "folder without images"])
def test_cli_empty_catalogue(tmp_path, capsys, kind):
    if kind == "empty folder":
        cat = tmp_path / "cat"
        cat.mkdir()
    elif kind == "header-only csv":
        cat = tmp_path / "cat.csv"
        cat.write_text("path,identity\n")
    else:
        cat = tmp_path / "cat"
        (cat / "A").mkdir(parents=True)
        (cat / "A" / "notes.txt").write_text("no photo here")
    err = _run_bad(tmp_path, capsys, cat)
    skipped = " (1 unusable files skipped)" if kind == "folder without images" else ""
    assert err == (
        f"error: --catalogue: gallery {cat} holds no images{skipped}: expected <identity>/<image> folders, a CSV, "
        "or a corpus directory"
    )


@pytest.mark.parametrize("kind", ["folder", "csv", "csv of two species"])
def test_cli_one_individual_only(tmp_path, capsys, kind):
    from animal_reid.testing.serve import photo

    for i in range(3):
        (tmp_path / "cat" / "Ann").mkdir(parents=True, exist_ok=True)
        (tmp_path / "cat" / "Ann" / f"{i}.png").write_bytes(photo(i))
    cat = tmp_path / "cat"
    if kind != "folder":
        cat = tmp_path / "cat" / "catalogue.csv"
        species = ["lion", "lion", "lion"] if kind == "csv" else ["lion", "zebra", "lion"]
        cat.write_text(
            "path,identity,species\n" + "".join(f"Ann/{i}.png,Ann,{species[i]}\n" for i in range(3))
        )
    err = _run_bad(tmp_path, capsys, cat)
    assert err == (
        f"error: catalogue {cat} holds one individual only ('Ann'): calibration needs two individuals of one "
        "species (each held out in turn plays a new animal)"
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--viewpoints", "left"], "--viewpoints: 'left' is not a pair a:b (e.g. left:right)"),
        (["--min-queries", "0"], "--min-queries must be >= 1, got 0"),
        (["--max-queries-per-species", "-3"], "--max-queries-per-species must be >= 1, got -3"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ],
)  # fmt: skip
def test_cli_bad_options(tmp_path, capsys, extra, message):
    assert _run_bad(tmp_path, capsys, tmp_path, *extra) == f"error: {message}"


def test_calibrate_reads_a_corpus_with_its_viewpoints(tmp_path, tiny, tiny_corpus, capsys):
    import pyarrow.parquet as pq

    from animal_reid.identify import read_gallery

    items = read_gallery(tiny_corpus)
    views = calibrate_cli.catalogue_viewpoints(tiny_corpus, items)
    truth = {
        row["image_id"]: row["viewpoint"]
        for shard in sorted((tiny_corpus / "data").glob("*/*.parquet"))
        for row in pq.read_table(shard, columns=["image_id", "viewpoint"]).to_pylist()
    }
    assert views == [truth[it.name] for it in items] and {"left", "right"} <= set(views)
    assert calibrate_cli.catalogue_viewpoints(tmp_path, items) is None  # a folder says nothing
    out = tmp_path / "bands.json"
    argv = ["--model", str(tiny), "--catalogue", str(tiny_corpus), "--out", str(out), "--no-cache", "-q"]
    assert calibrate_cli.main(argv) == 0
    assert capsys.readouterr().out.startswith(
        f"bands for 2 species and a default written to {out} (max fusion; "
    )
    bands = Bands.load(out)
    assert bands.calibration["viewpoint_aware"] is True and set(bands.species) == {it.species for it in items}
    assert calibrate_cli.main([*argv, "--overwrite", "--viewpoint-blind"]) == 0
    assert Bands.load(out).calibration["viewpoint_aware"] is False
