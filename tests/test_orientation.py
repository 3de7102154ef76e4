"""One orientation rule everywhere (issue 31): boxes are in the displayed photo's pixels, EXIF orientation applied.

One EXIF-turned photo with a box that fits only the displayed photo goes through every part that reads boxes: the
corpus builder, training's dataset over the built corpus, the image processor, identify (gallery read from the
built corpus), re-ranking's crop and the service. All keep it and see the same pixels. A property test draws
orientations and boxes: the builder, the processor and identify agree on what is kept and what it shows.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from animal_reid.identify import BadImages, Identifier, ImageItem, read_gallery
from animal_reid.testing.images import turned_jpeg
from animal_reid.testing.serve import tiny_model
from data_scripts.build import build
from data_scripts.schema import Record
from data_scripts.sources import miewid_source
from data_scripts.validate import validate
from modeling import AnimalReIDImageProcessor, AnimalReIDModel, InvalidImageError

STORED = (96, 56)  # width x height of the stored pixels; orientation 6 displays them as 56 x 96
BOX = [4.0, 56.0, 44.0, 32.0]  # inside the displayed 56x96 photo, below the stored pixels' 56 rows


def _turned_jpeg(orientation: int, size=STORED, seed: int = 0) -> bytes:
    return turned_jpeg(orientation, size, seed)


def _displayed_crop(data: bytes, box) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        shown = ImageOps.exif_transpose(im).convert("RGB")
    x, y, w, h = box
    return shown.crop((round(x), round(y), round(x + w), round(y + h)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "export", image_size=32)


def _source_with_turned_photo(folder: Path) -> Path:
    """A MiewID CSV source: four upright photos of two zebras and the turned one (its own zebra, twice)."""
    (folder / "img").mkdir(parents=True)
    rows = ["file_path,name,annot_uuid,species,bbox"]
    for i in range(4):
        (folder / "img" / f"{i}.jpg").write_bytes(_turned_jpeg(1, (64, 48), seed=10 + i))
        rows.append(f"img/{i}.jpg,z{i % 2},u{i},plains_zebra,")
    (folder / "img" / "turned.jpg").write_bytes(_turned_jpeg(6))
    rows.append(f'img/turned.jpg,zt,turned,plains_zebra,"{json.dumps(BOX)}"')
    (folder / "t.csv").write_text("\n".join(rows) + "\n")
    return folder / "t.csv"


def test_one_turned_photo_with_a_box_through_every_part(tmp_path, model_dir):
    pytest.importorskip("cv2")
    pytest.importorskip("fastapi")
    import datasets

    from animal_reid.rerank.features import crop_item
    from animal_reid.training.data import ReIDImageDataset

    data = _turned_jpeg(6)
    want = np.asarray(_displayed_crop(data, BOX))
    proc = AnimalReIDImageProcessor.from_pretrained(model_dir)
    model = AnimalReIDModel.from_pretrained(model_dir).eval()
    reference = proc.preprocess_uint8(Image.fromarray(want), None, 0.0)

    # 1. the builder keeps the row, box as given
    csv = _source_with_turned_photo(tmp_path / "src")
    corpus = tmp_path / "corpus"
    result = build([miewid_source("toy", csv, species=("plains_zebra",))], corpus, data_root=tmp_path,
                   min_per_identity=1, workers=1, progress=False)  # fmt: skip
    assert result.problems == [] and result.rows_written == 5
    table = datasets.Dataset.from_parquet([str(p) for p in sorted(corpus.glob("data/*/*.parquet"))])
    table = table.cast_column("image", datasets.Image(decode=False))
    (row,) = [i for i, image_id in enumerate(table["image_id"]) if image_id.endswith("turned")]
    assert table[row]["bbox"] == BOX

    # 2. training's dataset over the built corpus, 3. the processor on the file: the same pixels
    assert np.array_equal(ReIDImageDataset(table, proc).decoded(row).numpy(), reference.numpy())
    assert np.array_equal(proc.preprocess_uint8(data, BOX, 0.0).numpy(), reference.numpy())

    # 4. identify, the gallery read from the built corpus: embedded, as the displayed crop
    items = [it for it in read_gallery(corpus) if it.bbox is not None]
    assert len(items) == 1 and items[0].bbox == BOX
    kept, rows = Identifier(model, proc).embed_usable(items, BadImages("skip"), "gallery")
    assert kept == [0]
    np.testing.assert_allclose(rows[0], model.encode([Image.fromarray(want)], processor=proc)[0], atol=1e-5)

    # 5. re-ranking's crop and the match sheets' crop
    assert np.array_equal(np.asarray(crop_item(items[0])), want)
    assert np.array_equal(np.asarray(items[0].open()), want)

    # 6. the service: the photo's displayed size, the box accepted, the same embedding
    _service_embeds(tmp_path, model_dir, data, model.encode([Image.fromarray(want)], processor=proc)[0])


def _service_embeds(tmp_path: Path, model_dir: Path, data: bytes, want: np.ndarray) -> None:
    import types

    httpx = pytest.importorskip("httpx")
    from animal_reid.serve.app import check_image, create_app
    from animal_reid.serve.service import Limits, Service
    from animal_reid.testing.serve import serve_in_thread

    photo = check_image(data, "turned.jpg", types.SimpleNamespace(limits=Limits()))
    assert (photo.width, photo.height) == (56, 96)
    service = Service.from_pretrained(
        model_dir, f"sqlite:///{tmp_path / 'c.db'}", photo_dir=tmp_path / "photos", token="t", engine="torch"
    )
    try:
        with serve_in_thread(create_app(service)) as base, httpx.Client(base_url=base, timeout=60) as c:
            files = [("files", ("turned.jpg", data, "image/jpeg"))]
            r = c.post("/v1/embed", files=files, data={"boxes": json.dumps([BOX])})
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(np.array(r.json()["embeddings"][0], np.float32), want, atol=1e-5)
    finally:
        service.close()


# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(model_dir):
    proc = AnimalReIDImageProcessor.from_pretrained(model_dir, min_side=8)
    return AnimalReIDModel.from_pretrained(model_dir).eval(), proc


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    orientation=st.integers(1, 8),
    size=st.tuples(st.integers(24, 64), st.integers(24, 64)),
    box=st.tuples(st.integers(-16, 72), st.integers(-16, 72), st.integers(-4, 72), st.integers(-4, 72)),
)
def test_builder_processor_and_identify_agree_on_any_orientation_and_box(tmp_path_factory, tiny, orientation,
                                                                         size, box):  # fmt: skip
    """A box inside the displayed photo: all three keep it and see the displayed crop. A box with no pixel in the
    displayed photo: all three refuse it. (A box across the border is clipped by the processor and identify at
    query time and refused by the builder, which keeps a corpus to exact boxes.)"""
    model, proc = tiny
    w, h = size
    dw, dh = (h, w) if orientation >= 5 else (w, h)
    data = _turned_jpeg(orientation, size, seed=orientation)
    x, y, bw, bh = box
    inside = x >= 0 and y >= 0 and x + bw <= dw and y + bh <= dh and min(bw, bh) >= 8
    outside = bw <= 0 or bh <= 0 or x >= dw or y >= dh or x + bw <= 0 or y + bh <= 0
    bbox = [float(v) for v in box]

    built = validate([Record("s", "dog", "rex", "s:dog:0", data=data, bbox=tuple(bbox))],
                     min_per_identity=1, workers=1, progress=False)  # fmt: skip
    path = tmp_path_factory.mktemp("o") / "p.jpg"
    path.write_bytes(data)
    bad = BadImages("skip")
    kept, rows = Identifier(model, proc).embed_usable([ImageItem(str(path), "p", bbox=bbox)], bad, "gallery")
    try:
        crop = np.asarray(proc.crop(proc.load_image(data), bbox))
    except InvalidImageError:
        crop = None

    if inside:
        assert len(built.rows) == 1 and (built.rows[0].width, built.rows[0].height) == (dw, dh)
        assert np.array_equal(crop, np.asarray(_displayed_crop(data, box)))
        assert kept == [0]
        np.testing.assert_allclose(
            rows[0], model.encode([Image.fromarray(crop)], processor=proc)[0], atol=1e-5
        )
    if outside:
        assert built.rows == [] and crop is None and kept == []
        assert len(bad.skipped) == 1 and "\n" not in bad.skipped[0].reason
    if crop is None:  # the processor refuses: identify skips it, the builder does not keep it
        assert kept == [] and built.rows == []
    else:
        assert kept == [0]
