"""The review page in a real headless Chromium (Debian chromium + chromium-driver, driven by Selenium):
upload a photo, see the candidates with their catalogue photos, confirm "same as ...", and the sighting is in
the catalogue; then record a new individual."""

import shutil

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: pip install selenium")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from animal_reid.serve.app import create_app  # noqa: E402
from animal_reid.serve.service import Service  # noqa: E402
from animal_reid.testing.serve import photo, serve_in_thread, tiny_model  # noqa: E402

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    if not CHROMIUM or not DRIVER:
        pytest.skip(
            "headless browser test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"
        )
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}"):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def test_review_page_upload_candidates_confirm(browser, tmp_path):
    model_dir = tiny_model(tmp_path / "model")
    service = Service.from_pretrained(model_dir, f"sqlite:///{tmp_path / 'c.db'}", threshold=0.9, token=TOKEN,
                                      engine="torch")  # fmt: skip
    query = tmp_path / "query.png"
    query.write_bytes(photo(1))
    with serve_in_thread(create_app(service)) as base, httpx.Client(base_url=base, timeout=30) as c:
        asha = c.post("/v1/individuals", json={"name": "Asha", "species": "lion"}, headers=AUTH).json()
        c.post("/v1/sightings", files={"file": ("a.png", photo(1), "image/png")},
               data={"individual_id": asha["id"]}, headers=AUTH).raise_for_status()  # fmt: skip
        c.post("/v1/sightings", files={"file": ("b.png", photo(2), "image/png")},
               data={"name": "Bo", "species": "lion"}, headers=AUTH).raise_for_status()  # fmt: skip

        browser.get(base + "/")
        wait = WebDriverWait(browser, 20)
        browser.find_element(By.ID, "file").send_keys(str(query))
        browser.find_element(By.ID, "species").send_keys("lion")
        browser.find_element(By.ID, "box").send_keys("0,0,40,40")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "identify").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "candidates"))
        cards = browser.find_elements(By.CSS_SELECTOR, "#candidates .cand")
        assert len(cards) == 2 and "Asha" in cards[0].text
        photos = cards[0].find_elements(By.TAG_NAME, "img")
        assert photos and browser.execute_script("return arguments[0].naturalWidth", photos[0]) == 48
        cards[0].find_element(By.CSS_SELECTOR, "button.confirm").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "recorded sighting"))
        assert c.get(f"/v1/individuals/{asha['id']}").json()["n_sightings"] == 2

        browser.find_element(By.ID, "new-name").send_keys("Cleo")
        browser.find_element(By.ID, "new-individual").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "of Cleo"))
        assert "Cleo" in [i["name"] for i in c.get("/v1/individuals").json()]
        assert c.get("/v1/stats").json()["index_agrees_with_store"]
    service.close()
