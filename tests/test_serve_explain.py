"""``POST /v1/explain`` (animal_reid.serve.routes_explain): PAIR-X explanations through real HTTP.

Two uploads, an upload and a catalogue sighting (the sighting's stored box is used: photo B's correspondences
lie inside it, on the query's content shifted by the box's corner), two sightings; the picture as PNG; one-line
4xx answers naming what is wrong; and the service's embeddings unchanged by an explanation (it runs on a copy of
the model, since LRP merges BatchNorm into the convolutions while it runs). The tiny random model at 128 px is
enough: its convolutions are translation-equivariant, which is what the geometry relies on.
"""

import base64
import io

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("zennit")

from animal_reid.serve.app import create_app  # noqa: E402
from animal_reid.serve.service import Service  # noqa: E402
from animal_reid.testing.serve import serve_in_thread, tiny_model  # noqa: E402

TOKEN = "explain-token-0123456"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SIZE = 128  # model input; the default stage is 16 x 16 cells of 8 px
CELL = SIZE // 16
BOX = [40, 24, SIZE, SIZE]  # where the query's content lies in the catalogue photo
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def blobs(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Textured noise: seeded random colours on a coarse grid, smoothly upsampled into blobs (uint8 HWC)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 6, width // 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


SCENE = blobs(200, 176, seed=3)  # the catalogue photo
QUERY = png(SCENE[BOX[1] : BOX[1] + SIZE, BOX[0] : BOX[0] + SIZE])  # the content of BOX, on its own


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    model = tiny_model(root / "model", image_size=SIZE)
    service = Service.from_pretrained(model, f"sqlite:///{root / 'c.db'}", token=TOKEN, engine="torch",
                                      poll_s=None)  # fmt: skip
    with serve_in_thread(create_app(service)) as base, httpx.Client(base_url=base, timeout=120) as client:
        yield client, service
    service.close()


@pytest.fixture(scope="module")
def sighting(served) -> dict:
    """A catalogue sighting of SCENE with its box around the query's content."""
    c, _ = served
    files = {"file": ("scene.png", png(SCENE), "image/png")}
    data = {"name": "Asha", "species": "lion", "box": ",".join(map(str, BOX))}
    r = c.post("/v1/sightings", files=files, data=data, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()


def explain(c, files=None, data=None, **params):
    return c.post("/v1/explain", files=files or {}, data=data or {}, params=params)


def inside(xy: np.ndarray, left: float, top: float, right: float, bottom: float) -> bool:
    return bool(((xy[:, 0] >= left) & (xy[:, 0] <= right) & (xy[:, 1] >= top) & (xy[:, 1] <= bottom)).all())


def test_two_uploads_give_matches_inside_each_photo_and_a_png(served):
    c, _ = served
    a, b = blobs(160, 128, seed=1), blobs(144, 176, seed=2)
    files = {"image_a": ("a.png", png(a), "image/png"), "image_b": ("b.png", png(b), "image/png")}
    r = explain(c, files, top=7)
    assert r.status_code == 200, r.text
    answer = r.json()
    matches = answer["matches"]
    assert len(matches) == min(7, answer["scores"]["n_matches"]) and len(matches) > 0
    assert inside(np.array([m["a"] for m in matches]), 0, 0, 160, 128)
    assert inside(np.array([m["b"] for m in matches]), 0, 0, 144, 176)
    relevance = [m["relevance"] for m in matches]
    assert relevance == sorted(relevance, reverse=True)  # most relevant first
    assert answer["relevance_method"] == "lrp" and -1 <= answer["cosine"] <= 1
    assert 0 <= answer["scores"]["residual"] <= 1 and 0 <= answer["scores"]["coverage"] <= 1
    assert [i["name"] for i in answer["inputs"]] == ["a.png", "b.png"]
    assert np.array(answer["heat_a"]).shape == (16, 16)
    head, data = answer["image"].split(",", 1)
    assert head == "data:image/png;base64"
    picture = Image.open(io.BytesIO(base64.b64decode(data)))
    assert picture.format == "PNG" and picture.width > 160 + 144 // 2 and picture.height >= 128


def test_an_upload_and_a_sighting_use_the_sightings_photo_and_box(served, sighting):
    c, _ = served
    r = explain(c, {"image_a": ("query.png", QUERY, "image/png")}, {"sighting_id": sighting["id"]}, top=20)
    assert r.status_code == 200, r.text
    answer = r.json()
    used = answer["inputs"][1]
    assert used == {
        "name": f"sighting {sighting['id']}",
        "sighting_id": sighting["id"],
        "box": BOX,
        "theta": 0.0,
    }
    xy_a = np.array([m["a"] for m in answer["matches"]])
    xy_b = np.array([m["b"] for m in answer["matches"]])
    assert len(xy_b) == 20
    assert inside(xy_b, BOX[0], BOX[1], BOX[0] + BOX[2], BOX[1] + BOX[3])  # within the stored box
    on_shift = (
        np.abs(xy_b - xy_a - np.array(BOX[:2])).max(axis=1) <= CELL
    )  # the query's content, in the photo
    assert on_shift.mean() >= 0.8, (xy_b - xy_a).tolist()
    assert answer["crop_b"]["affine"][2] == BOX[0] and answer["crop_b"]["affine"][5] == BOX[1]


def test_two_sightings_and_a_box_sent_replacing_the_stored_one(served, sighting):
    c, _ = served
    sid = sighting["id"]
    r = explain(c, data={"sighting_a": sid, "sighting_b": sid, "box_a": "[0, 0, 200, 176]"}, top=5)
    assert r.status_code == 200, r.text
    inputs = r.json()["inputs"]
    assert [i["sighting_id"] for i in inputs] == [sid, sid]
    assert inputs[0]["box"] == [0.0, 0.0, 200.0, 176.0] and inputs[1]["box"] == BOX


def test_format_png_answers_the_picture_only(served, sighting):
    c, _ = served
    r = explain(c, {"image_a": ("q.png", QUERY, "image/png")}, {"sighting_b": sighting["id"]}, format="png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content.startswith(PNG_SIGNATURE) and Image.open(io.BytesIO(r.content)).width > SIZE


def test_unknown_sighting_is_404_naming_it(served):
    c, _ = served
    r = explain(c, {"image_a": ("q.png", QUERY, "image/png")}, {"sighting_id": 987654})
    assert r.status_code == 404 and r.json()["detail"] == "sighting 987654 is not in the catalogue"


def test_bad_requests_are_one_line_naming_the_problem(served, sighting):
    c, _ = served
    query = ("q.png", QUERY, "image/png")
    sid = {"sighting_b": sighting["id"]}
    truncated = explain(c, {"image_a": ("cut.png", QUERY[: len(QUERY) // 2], "image/png")}, sid)
    assert truncated.status_code == 400 and truncated.json()["detail"].startswith(
        "cut.png: cannot use this image"
    )
    garbage = explain(c, {"image_a": ("notes.png", b"not an image at all", "image/png")}, sid)
    assert garbage.status_code == 415 and garbage.json()["detail"].startswith("notes.png: not an image")
    outside = explain(c, {"image_a": query}, {**sid, "box_a": "500,500,20,20"})
    assert outside.status_code == 422 and "q.png: bounding box" in outside.json()["detail"]
    flat = explain(c, {"image_a": query}, {**sid, "box_a": "0,0,0,5"})
    assert flat.status_code == 422 and flat.json()["detail"].startswith("box_a: expected 4 finite numbers")
    for top in (0, 101):
        r = explain(c, {"image_a": query}, sid, top=top)
        assert r.status_code == 422 and r.json()["detail"].startswith("top: ")
    both = explain(c, {"image_a": query}, {**sid, "sighting_a": sighting["id"]})
    assert (
        both.status_code == 422 and both.json()["detail"] == "photo A: give image_a or sighting_a, not both"
    )
    neither = explain(c, {"image_a": query})
    assert (
        neither.status_code == 422
        and neither.json()["detail"] == "photo B: give image_b or sighting_b, not neither"
    )
    for r in (truncated, garbage, outside, flat, both, neither):
        assert "\n" not in r.json()["detail"]


def test_explanations_run_on_a_copy_of_the_model(served, sighting, monkeypatch):
    """LRP merges BatchNorm into the convolutions and hooks the modules while it runs: the micro-batcher, which
    embeds meanwhile on other threads, must never see that, so the route explains with a copy of the model."""
    import torch

    import animal_reid.explain

    c, service = served
    given, real = [], animal_reid.explain.explain_pair
    monkeypatch.setattr(
        animal_reid.explain, "explain_pair", lambda m, *a, **k: given.append(m) or real(m, *a, **k)
    )
    query = [("files", ("q.png", QUERY, "image/png"))]
    before = c.post("/v1/embed", files=query).json()["embeddings"]
    assert (
        explain(c, {"image_a": ("q.png", QUERY, "image/png")}, {"sighting_b": sighting["id"]}).status_code
        == 200
    )
    assert len(given) == 1 and given[0] is not service.model
    theirs, ours = given[0].state_dict(), service.model.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert c.post("/v1/embed", files=query).json()["embeddings"] == before


def test_the_route_declares_its_typed_answer(served):
    c, _ = served
    op = c.get("/openapi.json").json()["paths"]["/v1/explain"]["post"]
    content = op["responses"]["200"]["content"]
    assert content["application/json"]["schema"]["$ref"].endswith("/ExplainAnswer") and "image/png" in content
    assert "security" not in op  # a read: no token


def _explain_first_candidate(browser, card) -> None:
    """Press "Explain" (a real button, with Enter) on ``card``; its picture and scores appear inline."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    button = card.find_element(By.CSS_SELECTOR, "button.explain")
    assert button.tag_name == "button" and button.text == "Explain"
    button.send_keys(Keys.ENTER)
    found = lambda b: card.find_element(By.CSS_SELECTOR, ".explain-out img.explain-picture")  # noqa: E731
    picture = WebDriverWait(browser, 60).until(found)
    WebDriverWait(browser, 10).until(
        lambda b: b.execute_script("return arguments[0].naturalWidth", picture) > 0
    )
    assert picture.get_attribute("src").startswith("data:image/png;base64,")
    caption = card.find_element(By.CSS_SELECTOR, ".explain-scores").text
    assert "cosine" in caption and "matched similarity" in caption and "NaN" not in caption


def test_the_explain_button_shows_the_picture_beside_a_candidate(tmp_path):
    """Single-photo identify and the review queue in headless Chromium: "Explain" on a candidate shows the
    picture inline with the scores as text (skipped without chromium, like test_serve_browser.py)."""
    pytest.importorskip("selenium.webdriver", reason="selenium not installed: pip install selenium")
    from test_serve_browser import add_known, chromium, identify_photo, page_errors, served, sign_in
    from test_serve_browser_flow import open_item, queue_ids, upload_batch

    from animal_reid.testing.serve import photo

    query = tmp_path / "query.png"
    query.write_bytes(photo(1, size=64))
    with chromium(tmp_path) as browser, served(tmp_path) as (base, c, _service):
        add_known(c, "Asha", 1)
        sign_in(browser, base)
        cards = identify_photo(browser, query, box="0,0,40,40")  # the chosen file: sent as it is
        _explain_first_candidate(browser, cards[0])
        upload_batch(browser, tmp_path, [1])  # a queue photo: fetched from /v1/queue/photos/{id}
        (item,) = queue_ids(browser)
        _explain_first_candidate(browser, open_item(browser, item)[0])
        assert not page_errors(browser)
