"""wildlife-datasets as a source (data_scripts/sources/wildlife.py).

The conversion is tested with stand-in dataset classes (a ``summary``, a ``df`` built from generated rows), so it
runs without the library; the two-routes check (the library's ``MacaqueFaces`` / ``DogFaceNet`` reading
``../shared/data`` in place against our own declarations) runs where both the library and the data are."""

import io
import sys

import numpy as np
import pytest
from PIL import Image

pd = pytest.importorskip("pandas")
pytest.importorskip("datasets")

from data_scripts.build import build  # noqa: E402
from data_scripts.sources import SourceError, get_source, wildlife_source  # noqa: E402
from data_scripts.sources.base import UNIDENTIFIED  # noqa: E402
from data_scripts.sources.wildlife import INSTALL_HINT, dataset_class, species_key  # noqa: E402
from data_scripts.validate import MALFORMED_ROW, MISSING_FILE, TWO_IDENTITIES, validate  # noqa: E402


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


SUMMARY = {
    "licenses": "Attribution 4.0 International (CC BY 4.0)",
    "licenses_url": "https://creativecommons.org/licenses/by/4.0/",
    "url": "https://example.org/fakefaces",
    "publication_url": "https://doi.org/10.0/fake",
    "cite": "fake2024faces",
    "animals": {"rhesus macaque"},
    "reported_n_total": 6,
    "reported_n_individuals": 2,
}


def fake_class(rows: list[dict], *, error: BaseException | None = None, name: str = "FakeFaces") -> type:
    """A stand-in for a ``wildlife_datasets`` class: what the source uses of one (``summary``, ``unknown_name``,
    ``col_path``, ``col_label``, ``df``), over ``rows``; ``error`` is raised by the constructor."""

    def __init__(self, root=None, check_files=True, **kwargs):
        if error is not None:
            raise error
        self.root, self.check_files, self.kwargs = root, check_files, kwargs
        self.col_path, self.col_label = "path", "identity"
        self.df = pd.DataFrame(rows)

    return type(name, (), {"summary": SUMMARY, "unknown_name": "unknown", "__init__": __init__})


GOOD_ROWS = [
    {
        "image_id": 0,
        "identity": "Ann",
        "path": "imgs/a0.jpg",
        "date": "2020-05-01 10:00:00",
        "orientation": "left",
    },
    {
        "image_id": 1,
        "identity": "Ann",
        "path": "imgs/a1.jpg",
        "date": "2020-05-01 11:30:00",
        "orientation": "left",
    },
    {"image_id": 2, "identity": "Ann", "path": "imgs/a2.jpg", "date": "2020-06-02", "orientation": "right"},
    {"image_id": 3, "identity": "Bob", "path": "imgs/b0.jpg", "date": None, "bbox": [2, 3, 40, 30]},
    {"image_id": 4, "identity": "Bob", "path": "imgs/b1.jpg", "date": None, "bbox": "[1, 1, 20, 20]"},
    {"image_id": 5, "identity": "Bob", "path": "imgs/b2.jpg", "date": None},
]


@pytest.fixture()
def folder(tmp_path):
    """A data root with ``FakeFaces/imgs/*.jpg`` for every path of :data:`GOOD_ROWS` (plus ``c0.jpg``)."""
    (tmp_path / "FakeFaces/imgs").mkdir(parents=True)
    for i, name in enumerate(["a0", "a1", "a2", "b0", "b1", "b2", "c0"]):
        (tmp_path / "FakeFaces/imgs" / f"{name}.jpg").write_bytes(_jpeg(i))
    return tmp_path


def _by_file(records) -> dict:
    return {r.image_id.split(":", 2)[2]: r for r in records}


def test_rows_become_records(folder):
    src = wildlife_source(fake_class(GOOD_ROWS))
    recs = _by_file(src.records(folder))
    assert sorted(recs) == sorted(r["path"] for r in GOOD_ROWS)
    a0, a1, a2, b0, b1, b2 = (recs[f"imgs/{n}.jpg"] for n in ("a0", "a1", "a2", "b0", "b1", "b2"))
    assert a0.identity == "wildlife_fakefaces:macaque:Ann" and a0.species == "macaque"
    assert a0.encounter == a1.encounter == "wildlife_fakefaces:macaque:Ann/date:2020-05-01" != a2.encounter
    assert (a0.viewpoint, a2.viewpoint, b0.viewpoint) == ("left", "right", None)
    assert (b0.bbox, b1.bbox, b2.bbox) == ((2.0, 3.0, 40.0, 30.0), (1.0, 1.0, 20.0, 20.0), None)
    assert b0.encounter.endswith("img:imgs/b0.jpg")  # no date: its own encounter
    assert a0.path == folder / "FakeFaces/imgs/a0.jpg" and a0.extra["row"] == "FakeFaces row 0 (imgs/a0.jpg)"


def test_metadata_from_the_summary_or_the_arguments():
    info = wildlife_source(fake_class([])).info
    assert info.species == ("macaque",)  # "rhesus macaque" is the vocabulary's common name
    assert (
        info.license
        == "Attribution 4.0 International (CC BY 4.0) (https://creativecommons.org/licenses/by/4.0/)"
    )
    assert (info.reported_images, info.reported_identities, info.url) == (
        6,
        2,
        "https://example.org/fakefaces",
    )
    assert info.citation.startswith("@misc{fake2024faces,") and "https://doi.org/10.0/fake" in info.citation
    assert (info.name, info.folder) == ("wildlife_fakefaces", "FakeFaces")
    given = wildlife_source(
        fake_class([]), "mine", "elsewhere", species="Canis familiaris", license="MIT", citation="@misc{x}",
        reported_images=3,
    ).info  # fmt: skip
    assert (given.name, given.folder, given.species, given.license, given.citation) == (
        "mine", "elsewhere", ("dog",), "MIT", "@misc{x}",
    )  # fmt: skip
    assert (given.reported_images, given.reported_identities) == (3, 2)


@pytest.mark.parametrize(
    ("text", "key"),
    [("dog", "dog"), ("rhesus macaque", "macaque"), ("Megaptera novaeangliae", "humpback"), ("Felis catus", "cat"),
     ("zebra_plains", "plains_zebra"), ("okapi", "okapi")],
)  # fmt: skip
def test_species_names(text, key):
    assert species_key(text) == key


@pytest.mark.parametrize(
    ("bad", "reason", "detail"),
    [
        pytest.param({"identity": "unknown"}, UNIDENTIFIED, "FakeFaces row 6: identity 'unknown' for imgs/c0.jpg", id="unknown"),
        pytest.param({"identity": None}, MALFORMED_ROW, "FakeFaces row 6: no identity for imgs/c0.jpg", id="no-identity"),
        pytest.param({"path": None}, MALFORMED_ROW, "FakeFaces row 6: no path", id="no-path"),
        pytest.param({"bbox": "[1, 2, 3]"}, MALFORMED_ROW, "FakeFaces row 6: bbox: expected 4 numbers [x, y, w, h], got '[1, 2, 3]'", id="bbox-3"),
        pytest.param({"bbox": "1 2 3 4"}, MALFORMED_ROW, "FakeFaces row 6: bbox: expected 4 numbers [x, y, w, h], got '1 2 3 4'", id="bbox-text"),
        pytest.param({"path": "imgs/ghost.jpg"}, MISSING_FILE, "FakeFaces row 6: imgs/ghost.jpg not found in", id="missing-file"),
    ],
)  # fmt: skip
def test_bad_rows_are_reported_skips_naming_the_row(folder, bad, reason, detail):
    row = {"image_id": 6, "identity": "Cid", "path": "imgs/c0.jpg", **bad}
    src = wildlife_source(fake_class([*GOOD_ROWS, row]))
    result = validate(src.records(folder), min_per_identity=1, workers=1, progress=False)
    assert [(p.reason, p.detail[: len(detail)]) for p in result.problems] == [(reason, detail)]
    assert "\n" not in result.problems[0].detail
    assert len(result.rows) == len(GOOD_ROWS)  # every other row is read


def test_one_photo_under_two_identities_names_both_rows(folder):
    rows = [*GOOD_ROWS, {"image_id": 6, "identity": "Cid", "path": "imgs/b2.jpg"}]
    src = wildlife_source(fake_class(rows))
    recs = list(src.records(folder))
    ids = sorted(r.image_id.split(":", 2)[2] for r in recs if "b2" in r.image_id)
    assert ids == ["imgs/b2.jpg#5", "imgs/b2.jpg#6"]  # two rows on one photo: each its own id
    result = validate(recs, min_per_identity=1, workers=1, progress=False)
    details = sorted(p.detail for p in result.problems if p.reason == TWO_IDENTITIES)
    assert len(details) == 2
    assert (
        details[0].startswith("FakeFaces row 5 (imgs/b2.jpg) labels")
        and "FakeFaces row 6 (imgs/b2.jpg) says" in details[0]
    )


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError("[Errno 2] No such file: 'x/meta.csv'"),
        Exception("Image ID\nnot unique."),
        KeyError("ID"),
    ],
    ids=["missing-csv", "multiline", "keyerror"],
)
def test_a_class_that_cannot_read_the_folder_stops_with_one_line(folder, error):
    src = wildlife_source(fake_class([], error=error))
    with pytest.raises(SourceError) as err:
        list(src.records(folder))
    text = str(err.value)
    assert text.startswith(
        f"source 'wildlife_fakefaces': wildlife_datasets FakeFaces cannot read {folder / 'FakeFaces'}: "
        f"{type(error).__name__}: "
    )
    assert "\n" not in text


def test_builds_a_corpus(folder, tmp_path):
    out = tmp_path / "corpus"
    result = build([wildlife_source(fake_class(GOOD_ROWS))], out, data_root=folder, workers=1, progress=False)
    assert result.counts["macaque"]["images"] == 6 and result.counts["macaque"]["identities"] == 2
    card = (out / "README.md").read_text()
    assert "config_name: macaque" in card
    assert (
        "| [wildlife_fakefaces](https://example.org/fakefaces) | macaque | Attribution 4.0 International"
        in card
    )


def test_missing_library_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wildlife_datasets", None)
    monkeypatch.setitem(sys.modules, "wildlife_datasets.datasets", None)
    with pytest.raises(SourceError) as err:
        dataset_class("MacaqueFaces")
    assert str(err.value).startswith("wildlife-datasets is not importable (") and str(err.value).endswith(
        INSTALL_HINT
    )


# --- the two routes on the shared copies ----------------------------------------------------------------------------


def _pairs(records) -> set[tuple[str, str]]:
    """(resolved path, original identity) of each record."""
    return {(str(r.path.resolve()), r.identity.split(":", 2)[2]) for r in records}


def _partition(records) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for r in records:
        groups.setdefault(r.encounter, set()).add(str(r.path.resolve()))
    return {frozenset(g) for g in groups.values()}


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("cls", "ours", "species"),
    [("MacaqueFaces", "macaquefaces", "macaque"), ("DogFaceNet", "dogfacenet", "dog")],
)
def test_two_routes_give_the_same_corpus_records(data_root, cls, ours, species):
    pytest.importorskip(
        "wildlife_datasets", reason="wildlife-datasets not installed (data_scripts/README.md)"
    )
    declared = get_source(ours)
    theirs = wildlife_source(cls, ours, species=species, exclude=declared.info.exclude)
    a, b = list(theirs.records(data_root)), list(declared.records(data_root))
    assert len(a) == len(b) == declared.info.reported_images
    assert _pairs(a) == _pairs(b)
    assert _partition(a) == _partition(b)  # macaque: one encounter per monkey and day; dog: one per photo
    assert {r.image_id for r in a if "excluded" in r.extra} == {
        r.image_id for r in b if "excluded" in r.extra
    }
    assert not [r for r in a if "invalid" in r.extra]
