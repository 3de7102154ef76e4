"""Corpus build: central validation (bad rows reported and skipped), importers, Parquet + card round trip."""

import csv
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")

from data_scripts.build import build, main  # noqa: E402
from data_scripts.sources import coco_source, miewid_source  # noqa: E402
from data_scripts.splits import SplitConfig  # noqa: E402
from data_scripts.validate import (  # noqa: E402
    BOX_PAST_BORDER,
    BOX_ZERO_AREA,
    CORRUPT_IMAGE,
    EXCLUDED,
    MISSING_FIELD,
    MISSING_FILE,
    TOO_FEW_IMAGES,
    UNKNOWN_SPECIES,
)


def _jpeg(rng, w=64, h=48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture()
def miewid_folder(tmp_path):
    """A MiewID CSV over generated images: 8 good identities x 3 images, plus one row per kind of problem."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "src"
    (folder / "images").mkdir(parents=True)
    rows = []
    for ident in range(8):
        for i in range(3):
            name = f"images/{ident}_{i}.jpg"
            (folder / name).write_bytes(_jpeg(rng))
            rows.append(
                {
                    "file_path": name,
                    "name": f"z{ident}",
                    "species": "Zebra Plains",
                    "viewpoint": "left",
                    "bbox": "[2, 3, 40, 30]",
                    "theta": "0.25",
                    "encounter": f"{ident}-{i % 2}",
                    "annot_uuid": f"{ident}-{i}",
                }
            )
    good = _jpeg(rng)
    (folder / "images/truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "images/good.jpg").write_bytes(good)
    bad = [
        ("images/truncated.jpg", "z0", "zebra_plains", "[0, 0, 10, 10]", "corrupt"),
        ("images/nowhere.jpg", "z0", "zebra_plains", "", "missing"),
        ("images/good.jpg", "z1", "zebra_plains", "[30, 20, 50, 50]", "outside"),
        ("images/good.jpg", "z1", "zebra_plains", "[3, 3, 0, 10]", "zero"),
        ("images/good.jpg", "z2", "dragon", "", "unknown"),
        ("images/good.jpg", "", "zebra_plains", "", "noname"),
        ("images/good.jpg", "lonely", "zebra_plains", "", "lonely"),
    ]
    for path, name, species, bbox, uid in bad:
        rows.append(
            {
                "file_path": path,
                "name": name,
                "species": species,
                "viewpoint": "",
                "bbox": bbox,
                "theta": "",
                "encounter": "",
                "annot_uuid": uid,
            }
        )
    with open(folder / "annotations.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_bad_rows_are_reported_and_skipped_rest_is_built(miewid_folder, tmp_path):
    src = miewid_source("toy", miewid_folder / "annotations.csv", license="CC0-1.0")
    out = tmp_path / "corpus"
    result = build([src], out, data_root=tmp_path, split=SplitConfig(seed=1), workers=1, progress=False)
    report = json.loads((out / "build_report.json").read_text())
    assert report["skipped_by_reason"] == {
        CORRUPT_IMAGE: 1,
        MISSING_FILE: 1,
        BOX_PAST_BORDER: 1,
        BOX_ZERO_AREA: 1,
        UNKNOWN_SPECIES: 1,
        MISSING_FIELD: 1,
        TOO_FEW_IMAGES: 1,
    }
    skipped = {p["image_id"].rsplit("/", 1)[-1]: p["reason"] for p in report["skipped"]}
    assert skipped["corrupt"] == CORRUPT_IMAGE and skipped["missing"] == MISSING_FILE
    assert skipped["outside"] == BOX_PAST_BORDER and skipped["unknown"] == UNKNOWN_SPECIES
    assert report["rows_read"] == 31 and report["rows_written"] == 24 == result.rows_written
    assert result.counts["plains_zebra"]["identities"] == 8


def test_load_dataset_round_trip_matches_card(miewid_folder, tmp_path):
    src = miewid_source("toy", miewid_folder / "annotations.csv", license="CC0-1.0")
    out = tmp_path / "corpus"
    build([src], out, data_root=tmp_path, workers=1, progress=False)
    card = (out / "README.md").read_text()
    assert "config_name: plains_zebra" in card and "config_name: all" in card and "CC0-1.0" in card
    # the card's count table: | `config` | name | images | identities | train img / id | ...
    table = {
        m[0]: (int(m[1]), int(m[2]))
        for m in re.findall(r"^\| `(\w+)` \|[^|]+\| (\d+) \| (\d+) \|", card, re.M)
    }
    for config in ("all", "plains_zebra"):
        ds = datasets.load_dataset(str(out), config, cache_dir=str(tmp_path / "cache"))
        assert set(ds) == {"train", "validation", "test"}
        n = sum(len(ds[s]) for s in ds)
        ids = set().union(*(ds[s]["identity"] for s in ds))
        assert (n, len(ids)) == table[config] == (24, 8)
    train = ds["train"]
    assert train.features["bbox"] == datasets.Sequence(
        datasets.Value("float32")
    )  # variable length: pyarrow<26
    assert isinstance(train.features["image"], datasets.Image)
    row = train[0]
    assert row["image"].size == (64, 48)
    assert row["bbox"] == [2.0, 3.0, 40.0, 30.0] and row["theta"] == pytest.approx(0.25)
    assert row["identity"].startswith("toy:plains_zebra:z") and row["encounter"].startswith(
        "toy:plains_zebra:"
    )
    assert row["species_scientific"] == "Equus quagga" and row["license"] == "CC0-1.0"


def test_coco_importer_reads_wildbook_fields(tmp_path):
    rng = np.random.default_rng(1)
    base = tmp_path / "ws.coco"
    (base / "images" / "train2020").mkdir(parents=True)
    (base / "annotations").mkdir()
    images, anns = [], []
    for i in range(6):
        (base / "images" / "train2020" / f"{i:06d}.jpg").write_bytes(_jpeg(rng, 80, 60))
        images.append({"id": i, "file_name": f"{i:06d}.jpg", "width": 80, "height": 60})
        anns.append(
            {
                "id": 10 + i,
                "image_id": i,
                "bbox": [1, 2, 30, 20],
                "theta": 0.1 * i,
                "viewpoint": "left",
                "name": f"shark{i % 2}",
                "category_id": 1,
            }
        )
    anns.append(
        {
            "id": 99,
            "image_id": 0,
            "bbox": [40, 30, 30, 20],
            "theta": 0,
            "viewpoint": "right",
            "name": "shark1",
            "category_id": 1,
        }
    )  # a second animal on photo 0
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "whaleshark"}]}
    (base / "annotations" / "instances_train2020.json").write_text(json.dumps(coco))
    src = coco_source("wsx", base)
    recs = list(src.records(tmp_path))
    assert len(recs) == 7
    assert {r.species for r in recs} == {"whale_shark"}
    assert {r.identity for r in recs} == {"wsx:whale_shark:shark0", "wsx:whale_shark:shark1"}
    two = [r for r in recs if r.encounter == "wsx:whale_shark:image:0"]
    assert len(two) == 2 and {r.viewpoint for r in two} == {"left", "right"}  # one photo, one encounter
    assert recs[3].theta == pytest.approx(0.3) and recs[3].bbox == (1.0, 2.0, 30.0, 20.0)
    result = build([src], tmp_path / "out", data_root=tmp_path, workers=1, progress=False)
    assert result.rows_written == 7 and result.report["skipped_by_reason"] == {}


def test_cli_builds_small_synthetic_corpus(tmp_path, capsys):
    out = tmp_path / "synth"
    result = main(
        [
            "--sources",
            "synthetic",
            "--out",
            str(out),
            "--synthetic-identities",
            "5",
            "--synthetic-images",
            "4",
            "--synthetic-patterns",
            "stripes",
            "spots",
            "--synthetic-size",
            "64",
            "--no-progress",
            "--workers",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert "synth_stripes" in printed and "images/s" in printed
    assert result.counts["all"]["images"] == 40 and result.counts["all"]["identities"] == 10
    assert sorted(p.name for p in (out / "data").iterdir()) == ["synth_spots", "synth_stripes"]
    report = json.loads((out / "build_report.json").read_text())
    assert report["split"]["in_several_splits"]["synth_spots"] == {
        "identities_in_several_splits": 0,
        "encounters_in_several_splits": 0,
    }
    assert report["timing"]["images_per_second"] > 0


def test_label_fixes_and_exclusions_are_declared_data(miewid_folder, tmp_path):
    from dataclasses import replace

    src = miewid_source("toy", miewid_folder / "annotations.csv")
    src.info = replace(
        src.info,
        label_fixes={"z1": "z0"},  # z1 was the same zebra as z0
        exclude=frozenset({"annotations/0-0"}),
        exclude_reason="blurred beyond recognition",
    )
    recs = {r.image_id: r for r in src.records(tmp_path)}
    assert recs["toy:plains_zebra:annotations/1-0"].identity == "toy:plains_zebra:z0"
    result = build([src], tmp_path / "out", data_root=tmp_path, workers=1, progress=False)
    assert result.report["skipped_by_reason"][EXCLUDED] == 1
    assert [p["detail"] for p in result.report["skipped"] if p["reason"] == EXCLUDED] == [
        "blurred beyond recognition"
    ]
    assert result.counts["plains_zebra"]["identities"] == 7


def test_yaml_config_sets_defaults_and_command_line_wins(tmp_path, repo_root):
    from data_scripts.build import UsageError, parse_args

    args = parse_args(["--config", str(repo_root / "configs" / "corpus_real.yaml")])
    assert args.sources == ["real"] and str(args.out) == "corpus/real" and args.min_per_identity == 2
    args = parse_args(
        ["--config", str(repo_root / "configs" / "corpus_real.yaml"), "--split", "closed", "--out", "x"]
    )
    assert args.split == "closed" and str(args.out) == "x"
    bad = tmp_path / "bad.yaml"
    bad.write_text("sauces: [real]\n")
    with pytest.raises(UsageError, match="unknown option 'sauces'"):
        parse_args(["--config", str(bad), "--out", "x"])


def test_leave_one_species_out_corpus_loads(tmp_path):
    out = tmp_path / "loso"
    result = main(
        [
            "--sources",
            "synthetic",
            "--out",
            str(out),
            "--synthetic-identities",
            "6",
            "--synthetic-images",
            "3",
            "--synthetic-patterns",
            "stripes",
            "spots",
            "--synthetic-size",
            "40",
            "--leave-out",
            "synth_spots",
            "--no-progress",
            "--workers",
            "1",
        ]
    )
    assert result.counts["synth_stripes"]["test"]["images"] == 0
    stripes = datasets.load_dataset(str(out), "synth_stripes", cache_dir=str(tmp_path / "cache"))
    assert set(stripes) == {"train", "validation"}  # an empty split is left out of the config
    everything = datasets.load_dataset(str(out), "all", cache_dir=str(tmp_path / "cache"))
    assert set(everything["test"]["species"]) == {"synth_spots"} and len(everything["test"]) == 18
    assert "synth_spots" not in set(everything["train"]["species"])
