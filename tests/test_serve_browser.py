"""The pages in a real headless Chromium (Debian chromium + chromium-driver, driven by Selenium): single-photo
identify (candidates with their photos and per-photo scores, "same as ...", a new individual), the guards against
filing mistakes there (a new photo clears the old candidates, clearing the box clears the rectangle, the same photo
twice is refused with the server's one line), the catalogue and individual pages, and no request leaving
127.0.0.1. The review-queue flow is in test_serve_browser_flow.py."""

import shutil
from contextlib import contextmanager

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: pip install selenium")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from animal_reid.serve.app import create_app  # noqa: E402
from animal_reid.serve.service import Service  # noqa: E402
from animal_reid.testing.serve import photo, serve_in_thread, tiny_model  # noqa: E402

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
RESOURCES = "return performance.getEntriesByType('resource').map((e) => e.name)"


@contextmanager
def chromium(tmp_path):
    """Headless Chromium with its console and downloads (to ``driver.download_dir``) readable by the test."""
    if not CHROMIUM or not DRIVER:
        pytest.skip(
            "headless browser test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"
        )
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}"):  # fmt: skip
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})  # fmt: skip
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.download_dir = downloads
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path) as driver:
        yield driver


@contextmanager
def served(tmp_path, **kwargs):
    """(base URL, httpx client with the token, service) for a fresh catalogue with the tiny model."""
    service = Service.from_pretrained(tiny_model(tmp_path / "model"), f"sqlite:///{tmp_path / 'c.db'}",
                                      token=TOKEN, engine="torch", **kwargs)  # fmt: skip
    try:
        with (
            serve_in_thread(create_app(service)) as base,
            httpx.Client(base_url=base, timeout=30, headers=AUTH) as c,
        ):
            yield base, c, service
    finally:
        service.close()


def sign_in(browser, base, path="/"):
    browser.get(base + path)
    browser.find_element(By.ID, "token").send_keys(TOKEN + Keys.ENTER)
    WebDriverWait(browser, 10).until(EC.visibility_of_element_located((By.ID, "signout")))


def wait_text(browser, element_id, text, timeout=20):
    WebDriverWait(browser, timeout).until(EC.text_to_be_present_in_element((By.ID, element_id), text))
    return browser.find_element(By.ID, element_id).text


def page_errors(browser):
    """Script errors the page logged (a broken script shows up here; refused API calls are the page's business)."""
    logs = browser.get_log("browser")
    severe = [e["message"] for e in logs if e["level"] == "SEVERE"]
    return [m for m in severe if "Failed to load resource" not in m]


def foreign_requests(browser, base):
    """Every resource the page loaded from anywhere but ``base``."""
    urls = browser.execute_script(RESOURCES)
    return [u for u in urls if not u.startswith(base + "/") and not u.startswith(("blob:", "data:"))]


def individuals(c, species="lion") -> dict:
    """{name: individual} of ``species`` through the API."""
    page = c.get("/v1/individuals", params={"species": species}).json()
    return {i["name"]: i for i in (page["individuals"] if isinstance(page, dict) else page)}


def add_known(c, name, seed, species="lion", **data):
    """A sighting of ``name`` (created when new) from ``photo(seed)``; returns the sighting."""
    known = {n: i["id"] for n, i in individuals(c, species).items()}
    who = {"individual_id": known[name]} if name in known else {"name": name, "species": species}
    r = c.post(
        "/v1/sightings", files={"file": (f"p{seed}.png", photo(seed), "image/png")}, data={**who, **data}
    )
    r.raise_for_status()
    return r.json()


def identify_photo(browser, path, species="lion", box=""):
    browser.find_element(By.ID, "file").send_keys(str(path))  # a new photo: the box field starts empty
    browser.find_element(By.ID, "box").send_keys(box)
    species_field = browser.find_element(By.ID, "species")
    species_field.clear()
    species_field.send_keys(species)
    browser.find_element(By.ID, "identify").click()
    wait_text(browser, "identify-msg", "candidates")
    return browser.find_elements(By.CSS_SELECTOR, "#identify-result .cand")


def test_identify_compare_confirm_and_new_individual(browser, tmp_path):
    query = tmp_path / "query.png"
    query.write_bytes(photo(1, size=64))
    other = tmp_path / "other.png"
    other.write_bytes(photo(9))
    with served(tmp_path) as (base, c, _service):
        asha = add_known(c, "Asha", 1)
        add_known(c, "Asha", 3)
        add_known(c, "Bo", 2)
        sign_in(browser, base)
        cards = identify_photo(browser, query, box="0,0,40,40")
        assert len(cards) == 2 and "Asha" in cards[0].text
        scores = [float(s.text) for s in cards[0].find_elements(By.CSS_SELECTOR, ".photo-score")]
        assert len(scores) == 2 and scores == sorted(scores, reverse=True)  # per-photo scores, best first
        assert all(len(s.text.split(".")[1]) == 2 for s in cards[0].find_elements(By.CSS_SELECTOR, ".score"))
        photos = cards[0].find_elements(By.CSS_SELECTOR, "figure img")
        assert browser.execute_script("return arguments[0].naturalWidth", photos[0]) == 48
        assert "no band" in browser.find_element(By.ID, "verdict").text  # says why, not "your call"

        photos[0].click()  # zoom: a full-screen overlay, Esc closes it
        WebDriverWait(browser, 5).until(EC.visibility_of_element_located((By.ID, "zoom")))
        browser.find_element(By.ID, "zoom").send_keys(Keys.ESCAPE)
        WebDriverWait(browser, 5).until(EC.invisibility_of_element_located((By.ID, "zoom")))

        cards[0].find_element(By.CSS_SELECTOR, "button.confirm").click()
        wait_text(browser, "identify-msg", "recorded sighting")
        filed = c.get(f"/v1/individuals/{asha['individual_id']}").json()["sightings"]
        assert len(filed) == 3 and [0, 0, 40, 40] in [s["box"] for s in filed]  # the box went with it
        assert not browser.find_elements(By.CSS_SELECTOR, "#identify-result .cand")  # filed: candidates gone

        identify_photo(browser, other)
        browser.find_element(By.ID, "new-name").send_keys("Cleo" + Keys.ENTER)
        wait_text(browser, "identify-msg", "of Cleo")
        assert "Cleo" in individuals(c)
        assert c.get("/v1/stats").json()["index_agrees_with_store"]
        assert not page_errors(browser)


def canvas_pixels(browser):
    return browser.execute_script("return document.getElementById('preview').toDataURL()")


def test_identify_guards_against_filing_mistakes(browser, tmp_path):
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(photo(5))
    second.write_bytes(photo(6))
    with served(tmp_path) as (base, c, _service):
        asha = add_known(c, "Asha", 1)
        sign_in(browser, base)
        browser.find_element(By.ID, "file").send_keys(str(first))
        WebDriverWait(browser, 10).until(lambda b: b.execute_script("return preview.width") > 0)
        plain = canvas_pixels(browser)
        browser.find_element(By.ID, "box").send_keys("0,0,20,20")
        assert canvas_pixels(browser) != plain  # the rectangle is drawn
        browser.find_element(By.ID, "box").send_keys(Keys.CONTROL, "a", Keys.BACKSPACE)
        assert canvas_pixels(browser) == plain  # clearing the field clears the rectangle

        identify_photo(browser, first)
        browser.execute_script("window.oldButton = document.querySelector('#identify-result button.confirm')")
        browser.find_element(By.ID, "file").send_keys(str(second))  # another photo: old candidates go first
        assert not browser.find_elements(By.CSS_SELECTOR, "#identify-result .cand")
        browser.execute_script("window.oldButton.click()")  # the first photo's button, clicked anyway
        assert "nothing was filed" in wait_text(browser, "identify-msg", "earlier photo")
        assert c.get(f"/v1/individuals/{asha['individual_id']}").json()["n_sightings"] == 1
        assert not page_errors(browser)


def test_pages_load_nothing_from_elsewhere(browser, tmp_path):
    with served(tmp_path) as (base, c, _service):
        asha = add_known(c, "Asha", 1)
        for path in ("/", "/catalogue", f"/individuals/{asha['individual_id']}"):
            answer = c.get(path)
            assert answer.status_code == 200
            assert "default-src 'self'" in answer.headers["content-security-policy"]
            browser.get(base + path)
            WebDriverWait(browser, 10).until(
                lambda b: b.execute_script("return document.readyState") == "complete"
            )
            loaded = browser.execute_script(RESOURCES)
            assert any(u.endswith("/app-assets/common.js") for u in loaded)
            assert foreign_requests(browser, base) == [], path
        wait_text(browser, "ind-name", "Asha")
        assert not page_errors(browser)


def test_refusals_are_shown_as_the_servers_one_line(browser, tmp_path):
    again = tmp_path / "again.png"
    again.write_bytes(photo(1))  # the very photo Asha's sighting holds
    with served(tmp_path) as (base, c, _service):
        add_known(c, "Asha", 1)
        browser.get(base + "/")
        cards = identify_photo(browser, again)
        cards[0].find_element(By.CSS_SELECTOR, "button.confirm").click()  # not signed in
        wait_text(browser, "identify-msg", "sign in first")

        browser.find_element(By.ID, "token").send_keys("not-a-token" + Keys.ENTER)
        assert "not valid" in wait_text(browser, "who", "token")
        browser.find_element(By.ID, "signout").click()
        browser.find_element(By.ID, "token").send_keys(TOKEN + Keys.ENTER)
        assert wait_text(browser, "who", "signed in as") == "signed in as operator"

        cards = identify_photo(browser, again)
        cards[0].find_element(By.CSS_SELECTOR, "button.confirm").click()  # the same photo twice
        message = wait_text(browser, "identify-msg", "already")
        assert "again.png" in message and "Asha" in message and "\n" not in message
        assert individuals(c)["Asha"]["n_sightings"] == 1


def test_catalogue_search_and_individual_page_edit_merge_delete(browser, tmp_path):
    with served(tmp_path) as (base, c, _service):
        asha = add_known(c, "Asha", 1, site="river", taken_at="2026-05-02T08:00:00")["individual_id"]
        add_known(c, "Asha", 3, taken_at="2026-04-01T08:00:00")
        bo = add_known(c, "Bo", 2)["individual_id"]
        add_known(c, "Zed", 4, species="zebra")
        c.patch(f"/v1/individuals/{bo}", json={"aliases": ["Big Bo"]}).raise_for_status()
        sign_in(browser, base, "/catalogue")
        wait_text(browser, "cat-total", "3 individual(s)")
        browser.find_element(By.ID, "cat-q").send_keys("big" + Keys.ENTER)  # an alias, any case
        wait_text(browser, "cat-total", "1 individual(s)")
        assert (
            "Bo" in browser.find_element(By.ID, "cat-rows").text
            and "Asha" not in browser.find_element(By.ID, "cat-rows").text
        )
        browser.get(f"{base}/catalogue?species=lion")
        wait_text(browser, "cat-total", "2 individual(s)")
        browser.find_element(By.LINK_TEXT, "Asha").click()

        wait_text(browser, "ind-name", "Asha")  # sightings over time: oldest first, with date and place
        dates = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#sightings .when")]
        assert dates == ["2026-04-01 08:00", "2026-05-02 08:00"]
        assert "river" in browser.find_elements(By.CSS_SELECTOR, "#sightings li")[1].text

        for field, value in (
            ("edit-name", "Asha II"),
            ("edit-aliases", "A1, Lefty"),
            ("edit-notes", "torn left ear"),
        ):
            browser.find_element(By.ID, field).clear()
            browser.find_element(By.ID, field).send_keys(value)
        browser.find_element(By.ID, "edit-save").click()
        wait_text(browser, "status", "saved")
        got = c.get(f"/v1/individuals/{asha}").json()
        assert (got["name"], got["aliases"], got["notes"]) == ("Asha II", ["A1", "Lefty"], "torn left ear")
        WebDriverWait(browser, 10).until(lambda b: "Asha II" in b.find_element(By.ID, "history").text)

        browser.find_element(By.ID, "edit-name").clear()
        browser.find_element(By.ID, "edit-name").send_keys("bo" + Keys.ENTER)  # taken in this species
        assert "\n" not in wait_text(browser, "status", "Bo")
        assert c.get(f"/v1/individuals/{asha}").json()["name"] == "Asha II"

        browser.find_element(By.ID, "merge-button").click()  # Bo (the only other lion) into Asha II
        browser.find_element(By.ID, "confirm-yes").click()
        wait_text(browser, "status", "merged")
        assert c.get(f"/v1/individuals/{asha}").json()["n_sightings"] == 3
        assert c.get(f"/v1/individuals/{bo}").status_code == 404

        browser.find_element(By.ID, "delete-button").click()
        browser.find_element(By.ID, "confirm-yes").click()
        wait_text(browser, "status", "deleted")
        assert c.get(f"/v1/individuals/{asha}").status_code == 404
        assert not page_errors(browser)
