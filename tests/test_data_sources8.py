"""The two sources that take the real corpus from six species to eight: HumpbackWhaleID (flukes) and
Cat-Faces-Identification (cat faces, bursts kept in one encounter), and the ``real8`` group.

Generated folders in each source's layout test the burst rule, the splits and the bad inputs; the counts and
licences of the shared copies are checked where ``../shared/data`` exists (``realdata``)."""

import csv
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("datasets")

from data_scripts.build import build, main, resolve_sources  # noqa: E402
from data_scripts.sources import LOCAL_SOURCES, REAL8_SOURCES, SourceError, get_source  # noqa: E402
from data_scripts.sources.base import UNIDENTIFIED  # noqa: E402
from data_scripts.sources.catfaces import (  # noqa: E402
    BURST_MAX_DHASH,
    CatFaces,
    read_subject_names,
    signature,
)
from data_scripts.splits import SplitConfig, check_disjoint  # noqa: E402
from data_scripts.validate import DUPLICATE_ID, MALFORMED_ROW, MISSING_FILE, validate  # noqa: E402

CROPS = "Cat-Faces-Identification/images/dataset/cropped"
NAMES = "Cat-Faces-Identification/dataset_info/subject-to-name.txt"


# --- generated images -------------------------------------------------------------------------------------------


def _pattern(seed: int, lo: int = 0, hi: int = 255, noise: int = 0, noise_seed: int = 0) -> bytes:
    """A 64x64 JPEG of smooth random colour blobs (values in [lo, hi]); ``noise`` > 0 adds a little pixel noise:
    the same moment photographed again."""
    rng = np.random.default_rng(seed)
    small = rng.integers(lo, hi + 1, (6, 6, 3), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC), dtype=np.int16)
    if noise:
        arr = arr + np.random.default_rng(1000 + noise_seed).integers(-noise, noise + 1, arr.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _photo(kind: str, cat: int = 1) -> bytes:
    """``A``, ``B``, ``C``: three unrelated moments of cat ``cat``; ``A1``, ``A2``: moment A again (a burst);
    ``D1``, ``D2``: two very dark photos of unrelated structure (a dark burst: its dHash is noise, its colours
    agree)."""
    if kind[0] == "D":
        return _pattern(100 * cat + 50 + int(kind[1]), 0, 8)
    base = 100 * cat + {"A": 1, "B": 2, "C": 3}[kind[0]]
    return _pattern(base, noise=3 if len(kind) > 1 else 0, noise_seed=int(kind[1:] or 0))


def make_catfaces(root: Path, cats: dict[str, list[tuple[int, str]]], names: str | None = None) -> Path:
    """A Cat-Faces-Identification folder under ``root``: ``cats`` maps ``s<N>`` to (file number, photo kind); a
    kind ``copy:<n>`` is a byte-identical copy of that cat's file ``<n>``."""
    for cat, files in cats.items():
        folder = root / CROPS / cat
        folder.mkdir(parents=True, exist_ok=True)
        for number, kind in files:
            copy = kind.startswith("copy:")
            data = (folder / f"{kind[5:]}.jpg").read_bytes() if copy else _photo(kind, int(cat[1:]))
            (folder / f"{number}.jpg").write_bytes(data)
    names_file = root / NAMES
    names_file.parent.mkdir(parents=True, exist_ok=True)
    if names is None:
        names = "".join(f"{cat}\tcat{cat[1:]}\n" for cat in cats)
    names_file.write_text(names)
    return root


def make_humpback(root: Path, rows: list[tuple[str, str]], files: list[str] | None = None) -> Path:
    """A HumpbackWhaleID folder: ``train.csv`` with ``rows`` (Image, Id), and a generated photo for each name of
    ``files`` (default: every Image of ``rows``)."""
    folder = root / "HumpbackWhaleID"
    (folder / "train").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(files if files is not None else [r[0] for r in rows]):
        (folder / "train" / name).write_bytes(_pattern(100 + i))
    with open(folder / "train.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Image", "Id"])
        writer.writerows(rows)
    return root


def _groups(records) -> list[list[int]]:
    """Records' encounters as lists of file numbers, in file order."""
    by_enc = defaultdict(list)
    for r in records:
        by_enc[r.encounter].append(int(Path(r.image_id.rsplit(":", 1)[1]).stem))
    return sorted((sorted(v) for v in by_enc.values()), key=lambda g: g[0])


# --- the group, the vocabulary ----------------------------------------------------------------------------------


def test_real_group_is_unchanged_and_real8_adds_two():
    assert [s.info.name for s in resolve_sources(["real"])] == list(LOCAL_SOURCES)
    assert [s.info.name for s in resolve_sources(["real8"])] == [
        *LOCAL_SOURCES,
        "humpbackwhaleid",
        "catfaces",
    ]
    assert REAL8_SOURCES[: len(LOCAL_SOURCES)] == LOCAL_SOURCES


def test_declarations_carry_licence_citation_and_counts():
    whale, cat = get_source("humpbackwhaleid").info, get_source("catfaces").info
    assert (whale.species, whale.license) == (
        ("humpback",),
        "competition data: research use only, no redistribution",
    )
    assert (whale.reported_images, whale.reported_identities) == (6658, 1078)
    assert (cat.species, cat.license) == (("cat",), "MIT")
    assert (cat.reported_images, cat.reported_identities) == (371, 23)
    for info in (whale, cat):
        assert info.citation.startswith("@misc{") and info.url.startswith("https://")


# --- the burst rule -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            [(1, "A"), (2, "A1"), (3, "A2"), (4, "B")], [[1, 2, 3], [4]], id="burst-then-new-moment"
        ),
        pytest.param([(1, "A"), (3, "A1"), (6, "A2")], [[1, 3], [6]], id="hole-of-one-links-hole-of-two-not"),
        pytest.param([(1, "D1"), (2, "D2"), (3, "B")], [[1, 2], [3]], id="dark-burst-by-colour"),
        pytest.param([(1, "A"), (2, "B"), (9, "copy:1")], [[1, 9], [2]], id="byte-identical-copy-far-away"),
        pytest.param([(1, "A"), (2, "B"), (3, "C")], [[1], [2], [3]], id="unrelated-neighbours-apart"),
    ],
)
def test_bursts_become_one_encounter(tmp_path, files, expected):
    root = make_catfaces(tmp_path, {"s1": files})
    records = list(CatFaces().records(root))
    assert _groups(records) == expected
    for group in expected:  # a burst is named by its crops; a lone crop is its own encounter
        encounters = {r.encounter for r in records if int(Path(r.image_id).stem) in group}
        name = f"catfaces:cat:s1/crops{'+'.join(map(str, group))}" if len(group) > 1 else None
        assert len(encounters) == 1 and (name is None or encounters == {name})


def test_dark_burst_is_linked_by_colour_not_by_dhash(tmp_path):
    """The dark pair of the test above differs in structure: only the colour test links it."""
    a, b = tmp_path / "d1.jpg", tmp_path / "d2.jpg"
    a.write_bytes(_photo("D1"))
    b.write_bytes(_photo("D2"))
    assert signature(a).dhash_distance(signature(b)) > BURST_MAX_DHASH


@pytest.mark.parametrize("policy", ["closed", "open"])
def test_split_keeps_bursts_together(tmp_path, policy):
    """Six cats, each with bursts and lone crops: no encounter (burst) is in two splits, and in the closed split
    the cats' encounters are dealt to several splits (so the test can fail)."""
    cats = {
        f"s{c}": [(1, "A"), (2, "A1"), (3, "A2"), (4, "B"), (5, "C"), (6, "D1"), (7, "D2"), (12, "copy:4")]
        for c in range(1, 7)
    }
    root = make_catfaces(tmp_path / "data", cats)
    out = tmp_path / "corpus"
    build([CatFaces()], out, data_root=root, split=SplitConfig(policy=policy), workers=1, progress=False)
    import pyarrow.parquet as pq

    rows = []
    for f in sorted((out / "data").glob("*/*.parquet")):
        rows += pq.read_table(f, columns=["identity", "encounter", "split", "image_id"]).to_pylist()
    assert len(rows) == 6 * 8
    assert (
        check_disjoint([(r["identity"], r["encounter"], r["split"]) for r in rows])[
            "encounters_in_several_splits"
        ]
        == 0
    )
    sizes = Counter(Counter(r["encounter"] for r in rows).values())
    assert sizes == {3: 6, 2: 12, 1: 6}  # per cat: the burst of 3, the dark pair, the copy pair, C alone
    if policy == "closed":  # encounters of one cat were dealt to several splits
        assert any(
            len({r["split"] for r in rows if r["identity"] == i}) > 1 for i in {r["identity"] for r in rows}
        )


# --- bad inputs: whole files stop the build with one line -----------------------------------------------------------


def _subject_error(tmp_path, text: str | None) -> str:
    root = make_catfaces(tmp_path, {"s1": [(1, "A"), (2, "B")]}, names=text or "")
    if text is None:
        (root / NAMES).unlink()
    with pytest.raises(SourceError) as err:
        list(CatFaces().records(root))
    return str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "s1\tTigro\nTigro\n",
            "line 2: expected 's<N>' and a name separated by a tab, got 'Tigro'",
            id="name-only",
        ),
        pytest.param(
            "s1\n", "line 1: expected 's<N>' and a name separated by a tab, got 's1'", id="subject-only"
        ),
        pytest.param(
            "cat1\tTigro\n",
            "line 1: expected 's<N>' and a name separated by a tab, got 'cat1\\tTigro'",
            id="not-s-number",
        ),
        pytest.param(
            "s1\tTigro\n\ns1\tMina\n", "lines 1 and 3 name s1 twice ('Tigro' and 'Mina')", id="two-names"
        ),
        pytest.param(None, "not found: expected lines 's<N><tab><name>'", id="missing-file"),
    ],
)
def test_subject_to_name_problems_are_one_line_naming_file_and_line(tmp_path, text, message):
    text_of_error = _subject_error(tmp_path, text)
    assert text_of_error.startswith(f"source 'catfaces': {tmp_path / NAMES}")
    assert message in text_of_error and "\n" not in text_of_error


def test_subject_to_name_reads_names_and_blank_lines(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text(
        "\ufeffs1\tTigro\n\ns2  Cumberbatch \ns1\tTigro\n"
    )  # BOM, blank line, spaces, exact repeat
    assert read_subject_names(path) == {"s1": "Tigro", "s2": "Cumberbatch"}


@pytest.mark.parametrize(
    ("write", "message"),
    [
        pytest.param(
            None, "train.csv not found: expected Kaggle's table with columns Image,Id", id="missing"
        ),
        pytest.param(
            b"Image,Whale\na.jpg,w_1\n",
            "train.csv: expected columns Image,Id; ['Id'] missing",
            id="no-id-column",
        ),
        pytest.param(b"", "train.csv is empty: expected a header row Image,Id", id="empty"),
        pytest.param(b"Image,Id\n\xff\xfe.jpg,w_1\n", "train.csv is not UTF-8 text", id="not-utf8"),
    ],
)
def test_humpback_table_problems_are_one_line_naming_the_file(tmp_path, write, message):
    root = make_humpback(tmp_path, [("a.jpg", "w_1"), ("b.jpg", "w_1")])
    table = root / "HumpbackWhaleID/train.csv"
    if write is None:
        table.unlink()
    else:
        table.write_bytes(write)
    with pytest.raises(SourceError) as err:
        list(get_source("humpbackwhaleid").records(root))
    assert str(err.value).startswith(f"source 'humpbackwhaleid': {table}")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_humpback_missing_table_fails_the_command_in_one_line_and_writes_nothing(tmp_path, capsys):
    root = make_humpback(tmp_path / "data", [("a.jpg", "w_1"), ("b.jpg", "w_1")])
    (root / "HumpbackWhaleID/train.csv").unlink()
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["--sources", "humpbackwhaleid", "--data-root", str(root), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and err.count("\n") == 0
    assert err == (
        f"error: source 'humpbackwhaleid': {root / 'HumpbackWhaleID/train.csv'} not found: expected Kaggle's "
        "table with columns Image,Id"
    )
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


# --- bad inputs: rows are skipped and reported, naming train.csv and the line ------------------------------------------


@pytest.mark.parametrize(
    ("bad_row", "files", "reason", "detail"),
    [
        pytest.param(
            ("ghost.jpg", "w_2"),
            None,
            MISSING_FILE,
            "train.csv line 6 names 'ghost.jpg', not found in",
            id="missing-file",
        ),
        pytest.param(("e.jpg", ""), None, MALFORMED_ROW, "train.csv line 6: empty Id", id="empty-id"),
        pytest.param(("", "w_2"), None, MALFORMED_ROW, "train.csv line 6: empty Image", id="empty-image"),
        pytest.param(
            ("e.jpg", "new_whale"), None, UNIDENTIFIED, "train.csv line 6: Id new_whale", id="new-whale"
        ),
        pytest.param(
            ("a.jpg", "w_2"),
            None,
            DUPLICATE_ID,
            "train.csv line 6 and train.csv line 2 have the same id but differ (identity",
            id="listed-twice",
        ),
    ],
)
def test_humpback_bad_rows_are_reported_skips(tmp_path, bad_row, files, reason, detail):
    good = [("a.jpg", "w_1"), ("b.jpg", "w_1"), ("c.jpg", "w_2"), ("d.jpg", "w_2")]
    names = [r[0] for r in good] + (["e.jpg"] if bad_row[0] == "e.jpg" else [])
    root = make_humpback(tmp_path, [*good, bad_row], files=names)
    records = get_source("humpbackwhaleid").records(root)
    result = validate(records, min_per_identity=1, workers=1, progress=False)
    details = [p.detail for p in result.problems if p.reason == reason]
    assert any(detail in d for d in details) and not any("\n" in d for d in details), result.problems
    if reason == DUPLICATE_ID:  # both rows skipped, each naming the other
        assert any("train.csv line 2 and train.csv line 6 have the same id" in d for d in details)
    kept = {r.record.image_id.rsplit(":", 1)[1] for r in result.rows}
    assert {"b.jpg", "c.jpg", "d.jpg"} <= kept  # the other rows are read


def test_humpback_photos_are_their_own_encounters_except_copies(tmp_path):
    root = make_humpback(tmp_path, [("a.jpg", "w_1"), ("b.jpg", "w_1"), ("c.jpg", "w_1"), ("d.jpg", "w_2")])
    folder = root / "HumpbackWhaleID/train"
    (folder / "c.jpg").write_bytes((folder / "a.jpg").read_bytes())  # a copy of a.jpg
    records = {r.image_id.rsplit(":", 1)[1]: r for r in get_source("humpbackwhaleid").records(root)}
    assert records["a.jpg"].encounter == records["c.jpg"].encounter != records["b.jpg"].encounter
    assert records["b.jpg"].encounter.endswith("img:b.jpg") and records["a.jpg"].viewpoint == "fluke"


# --- the shared copies --------------------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("name", "images", "identities", "encounters"),
    [("humpbackwhaleid", 6658, 1078, 6657), ("catfaces", 371, 23, 328)],
)
def test_shared_copies_match_the_declared_counts(data_root, name, images, identities, encounters):
    src = get_source(name)
    recs = list(src.records(data_root))
    assert (len(recs), len({r.identity for r in recs}), len({r.encounter for r in recs})) == (
        images,
        identities,
        encounters,
    )
    assert (src.info.reported_images, src.info.reported_identities) == (images, identities)
    assert {r.license for r in recs} == {src.info.license}
    assert not [r for r in recs if "invalid" in r.extra]


@pytest.mark.realdata
def test_shared_cat_bursts(data_root):
    sizes = Counter(Counter(r.encounter for r in get_source("catfaces").records(data_root)).values())
    assert sizes == {1: 297, 2: 25, 3: 4, 5: 1, 7: 1}


@pytest.mark.realdata
def test_build_of_the_two_new_sources_lists_their_configs(data_root, tmp_path):
    out = tmp_path / "two"
    result = build(resolve_sources(["humpbackwhaleid", "catfaces"]), out, data_root=data_root, progress=False)
    assert (result.counts["humpback"]["images"], result.counts["cat"]["images"]) == (6658, 371)
    card = (out / "README.md").read_text()
    assert "config_name: humpback" in card and "config_name: cat" in card
    assert "competition data: research use only, no redistribution" in card and "- MIT: catfaces" in card
    report = json.loads((out / "build_report.json").read_text())
    for species in ("humpback", "cat"):
        assert report["split"]["in_several_splits"][species] == {
            "identities_in_several_splits": 0,
            "encounters_in_several_splits": 0,
        }
