"""``animal-reid season`` end to end on generated photos and a tiny model: inputs and catalogue in, decisions,
proposed individuals, exports and a self-contained report out, under the output policy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from animal_reid.manifest import MANIFEST_NAME
from animal_reid.season.decisions import Band, Bands
from animal_reid.season.season_cli import main
from animal_reid.testing.images import turned_jpeg
from animal_reid.testing.serve import tiny_model

pytest.importorskip("faiss")


def _photo(path: Path, seed: int, when: str, camera: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = {0x010F: "test", 0x0110: camera}
    data = turned_jpeg(1, (64, 64), seed=seed, exif=exif)
    from PIL import Image

    img = Image.open(__import__("io").BytesIO(data))
    tags = img.getexif()
    tags.get_ifd(0x8769)[0x9003] = when
    img.save(path, format="JPEG", quality=95, exif=tags.tobytes())


@pytest.fixture(scope="module")
def season(tmp_path_factory):
    root = tmp_path_factory.mktemp("season")
    model = tiny_model(root / "model", image_size=32)
    rows = ["path,identity,species,encounter"]
    for ident, seed in (("ann", 1), ("bob", 2), ("cid", 3)):
        for enc in range(2):
            path = root / "catalogue" / f"{ident}{enc}.jpg"
            _photo(path, seed * 10 + enc, f"2025:06:0{enc + 1} 08:00:00", "cam0")
            rows.append(f"{path},{ident},zebra,{ident}-{enc}")
    (root / "catalogue.csv").write_text("\n".join(rows) + "\n")
    photos = root / "photos"
    _photo(photos / "a1.jpg", 10, "2026:05:01 06:00:00", "camA")  # ann's first catalogue photo, again
    _photo(photos / "a2.jpg", 10, "2026:05:01 06:00:20", "camA")  # same encounter
    _photo(photos / "n1.jpg", 77, "2026:05:09 07:00:00", "camB")  # a new animal
    _photo(photos / "n2.jpg", 78, "2026:05:20 07:00:00", "camB")
    bands = Bands(Band(0.999, 0.5))
    bands.save(root / "bands.json")
    return {"root": root, "model": model, "photos": photos}


def _args(s, out: Path, *extra: str) -> list[str]:
    return ["--folder", str(s["photos"]), "--species", "zebra", "--model", str(s["model"]), "--catalogue",
            str(s["root"] / "catalogue.csv"), "--no-cache", "--out", str(out), "-q", *extra]  # fmt: skip


def test_a_season_with_given_bands_writes_every_file(season, capsys):
    out = season["root"] / "out1"
    assert main(_args(season, out, "--bands", str(season["root"] / "bands.json"))) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("4 annotations in ") and line.endswith(f"files to {out}")
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {
        "annotations.csv",
        "coco.json",
        "bands.json",
        "report.html",
        "skipped.csv",
        MANIFEST_NAME,
    } <= files
    rows = {Path(r["photo"]).name: r for r in csv.DictReader(open(out / "annotations.csv", encoding="utf-8"))}
    assert set(rows) == {"a1.jpg", "a2.jpg", "n1.jpg", "n2.jpg"}
    # a1/a2 are one encounter (camA, 20 s apart), their photo is ann's catalogue photo: known, ann
    assert rows["a1.jpg"]["encounter"] == rows["a2.jpg"]["encounter"]
    assert (rows["a1.jpg"]["decision"], rows["a1.jpg"]["individual"]) == ("known", "ann")
    assert {r["decision"] for r in rows.values()} <= {"known", "unsure", "new"}
    for r in rows.values():
        if r["decision"] == "new":
            assert r["individual"].startswith("new:zebra:")
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "Counts per species" in report and "http://" not in report and "https://" not in report
    assert json.loads((out / "bands.json").read_text())["default"]["known_above"] == pytest.approx(0.999)


def test_a_second_run_needs_overwrite_and_keeps_user_files(season, capsys):
    out = season["root"] / "out2"
    args = _args(season, out, "--bands", str(season["root"] / "bands.json"))
    assert main(args) == 0
    (out / "my_notes.txt").write_text("keep me")
    assert main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert (out / "my_notes.txt").read_text() == "keep me"


def test_calibrating_on_the_catalogue_when_no_bands_are_given(season, capsys):
    out = season["root"] / "out3"
    assert main(_args(season, out, "--min-queries", "1")) == 0
    bands = json.loads((out / "bands.json").read_text())
    assert bands["targets"] == {"max_known_called_new": 0.05, "max_wrong_known": 0.05}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gap", "-1"], "error: --gap must be a number of seconds >= 0, got -1"),
        (["--sensitive", "lion"], "error: --sensitive 'lion': expected SPECIES=DEGREES, e.g. lion=0.1"),
        (["--sensitive", "lion=0"], "error: --sensitive 'lion=0': expected SPECIES=DEGREES with DEGREES > 0"),
        (["--bands", "/nonexistent/bands.json"], "error: --bands /nonexistent/bands.json: no such file"),
    ],
)
def test_bad_options_are_one_line_before_any_work(season, capsys, extra, message):
    out = season["root"] / "never"
    assert main(_args(season, out, *extra)) == 2
    assert capsys.readouterr().err.strip() == message
    assert not out.exists()


def test_an_output_that_is_not_ours_is_refused(season, capsys):
    out = season["root"] / "project"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    assert main(_args(season, out, "--bands", str(season["root"] / "bands.json"))) == 2
    assert "was not written by animal-reid" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
