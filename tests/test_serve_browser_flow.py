"""The review flow in a real headless Chromium: upload a batch -> the queue -> compare -> "same as", new
individual, unsure, undo -> the individual's page shows its history -> an export downloads; and the filing
mistakes the issue found cannot happen: a stale candidate (another item shown since) or a stale version files
nothing, a double click on "same as" files one sighting; at phone width the query and a candidate are both on
screen without scrolling sideways; no request leaves 127.0.0.1."""

import io
import time

import pytest

pytest.importorskip("selenium.webdriver", reason="selenium not installed: pip install selenium")

from PIL import ExifTags, Image  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402
from test_serve_browser import (  # noqa: E402
    add_known,
    chromium,
    foreign_requests,
    individuals,
    page_errors,
    served,
    sign_in,
    wait_text,
)

from animal_reid.testing.serve import photo  # noqa: E402


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path) as driver:
        yield driver


#: whether the page is wider than the window (less its scroll bar), and which elements stick out
SIDEWAYS = "return document.documentElement.scrollWidth > document.documentElement.clientWidth"
TOO_WIDE = """const edge = document.documentElement.clientWidth;
    return [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > edge + 1)
        .map((e) => e.tagName + '#' + e.id + '.' + e.className);"""


def dated_jpeg(seed: int, day: int, size: int = 64) -> bytes:
    """``photo(seed)`` as a JPEG taken on 2026-05-``day`` (EXIF DateTimeOriginal): one encounter per day."""
    im = Image.open(io.BytesIO(photo(seed, size=size)))
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = f"2026:05:{day:02d} 10:00:00"
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif, quality=95)
    return buf.getvalue()


def catalogue_with_lions(c) -> dict:
    """Asha (2 sightings) and Bo (1) in the catalogue; {name: individual id}."""
    add_known(c, "Asha", 1)
    add_known(c, "Asha", 3)
    add_known(c, "Bo", 2)
    return {n: i["id"] for n, i in individuals(c).items()}


def upload_batch(browser, tmp_path, seeds, extra=(), size=64, species="Lion"):
    """Upload photos ``seeds`` (one a day) and ``extra`` files through the page's form; returns the summary."""
    paths = []
    for day, seed in enumerate(seeds, 1):
        paths.append(tmp_path / f"cam{seed}.jpg")
        paths[-1].write_bytes(dated_jpeg(seed, day, size))
    for name, data in extra:
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    browser.find_element(By.ID, "batch-files").send_keys("\n".join(str(p) for p in paths))
    browser.find_element(By.ID, "batch-species").send_keys(species)
    browser.find_element(By.ID, "batch-observer").send_keys("Ana")
    browser.find_element(By.ID, "batch-site").send_keys("north waterhole")
    browser.find_element(By.ID, "batch-submit").click()
    wait_text(browser, "batch-msg", "uploaded", timeout=60)
    return browser.find_element(By.ID, "batch-summary").text


def queue_ids(browser):
    buttons = browser.find_elements(By.CSS_SELECTOR, "#queue-list button")
    return [int(b.get_attribute("data-item")) for b in buttons]


def open_item(browser, item_id):
    """Show queue item ``item_id`` and wait until its decision buttons answer."""
    browser.find_element(By.CSS_SELECTOR, f'#queue-list button[data-item="{item_id}"]').click()
    return shown_item(browser, item_id)


def shown_item(browser, item_id):
    wait = WebDriverWait(browser, 20)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f'#item-header[data-item="{item_id}"]'))
    wait.until(EC.element_to_be_clickable((By.ID, "decide-unsure")))
    return browser.find_elements(By.CSS_SELECTOR, "#compare .cand")


def item_status(c, item_id):
    return c.get(f"/v1/queue/{item_id}").json()["status"]


def n_sightings(c, individual_id):
    return c.get(f"/v1/individuals/{individual_id}").json()["n_sightings"]


def test_batch_queue_compare_decide_undo_history_export(browser, tmp_path):
    with served(tmp_path) as (base, c, _service):
        ids = catalogue_with_lions(c)
        sign_in(browser, base)
        assert "signed in as" in browser.find_element(By.ID, "who").text
        summary = upload_batch(browser, tmp_path, [1, 7, 8], extra=[("notes.txt", b"not a photo")])
        assert "3 photo(s) in 3 encounter(s)" in summary
        assert "notes.txt" in summary  # skipped, with its reason
        WebDriverWait(browser, 20).until(lambda b: len(queue_ids(b)) == 3)
        first, second, third = queue_ids(browser)
        assert "best" in browser.find_element(By.ID, "queue-list").text

        cards = open_item(browser, first)  # compare: the query pinned beside candidates, best first
        assert "Asha" in cards[0].find_element(By.TAG_NAME, "h3").text
        assert browser.find_element(By.ID, "query-photo").is_displayed()
        scores = [float(s.text) for s in cards[0].find_elements(By.CSS_SELECTOR, ".photo-score")]
        assert scores == sorted(scores, reverse=True) and len(scores) == 2
        assert "no band" in browser.find_element(By.ID, "item-header").text  # and why
        cards[0].find_element(By.CSS_SELECTOR, "button.confirm").click()
        assert "same as Asha" in wait_text(browser, "compare-msg", f"item {first}: same as Asha")
        assert n_sightings(c, ids["Asha"]) == 3 and item_status(c, first) == "decided"

        shown_item(browser, second)  # the next item is shown by itself
        assert not browser.find_elements(By.CSS_SELECTOR, f'#queue-list button[data-item="{first}"]')
        browser.find_element(By.ID, "decide-new").click()
        browser.find_element(By.ID, "new-name").send_keys("Cleo")
        browser.find_element(By.ID, "new-confirm").click()
        wait_text(browser, "compare-msg", "new individual Cleo")
        assert "Cleo" in individuals(c)

        shown_item(browser, third)
        browser.find_element(By.ID, "decide-unsure").click()
        wait_text(browser, "compare-msg", f"item {third}: unsure")
        assert item_status(c, third) == "unsure"

        recent = browser.find_element(By.ID, "recent")
        assert [e.text for e in recent.find_elements(By.CSS_SELECTOR, "button.undo")] == ["undo"] * 3
        recent.find_element(By.CSS_SELECTOR, f'button.undo[data-item="{second}"]').click()  # undo "new Cleo"
        wait_text(browser, "compare-msg", f"item {second} is back in the queue")
        assert "Cleo" not in individuals(c) and item_status(c, second) == "waiting"
        WebDriverWait(browser, 10).until(lambda b: second in queue_ids(b))

        browser.get(f"{base}/individuals/{ids['Asha']}")  # sightings over time and history
        wait_text(browser, "ind-name", "Asha")
        sightings = browser.find_elements(By.CSS_SELECTOR, "#sightings li")
        assert len(sightings) == 3 and "2026-05-01 10:00" in sightings[0].text + sightings[-1].text
        assert "north waterhole" in browser.find_element(By.ID, "sightings").text
        WebDriverWait(browser, 10).until(lambda b: "sighting" in b.find_element(By.ID, "history").text)
        assert "operator" in browser.find_element(By.ID, "history").text  # who filed it

        browser.find_element(By.CSS_SELECTOR, '#export-links a[data-format="csv"]').click()
        wait_text(browser, "export-msg", "downloaded")
        deadline = time.monotonic() + 20
        while not [p for p in browser.download_dir.iterdir() if not p.name.endswith(".crdownload")]:
            assert time.monotonic() < deadline, "the export did not download"
            time.sleep(0.2)
        (saved,) = browser.download_dir.iterdir()
        assert saved.suffix == ".csv" and "Asha" in saved.read_text()
        assert foreign_requests(browser, base) == [] and not page_errors(browser)


def test_stale_candidates_and_stale_version_file_nothing(browser, tmp_path):
    with served(tmp_path) as (base, c, _service):
        ids = catalogue_with_lions(c)
        sign_in(browser, base)
        upload_batch(browser, tmp_path, [1, 2])
        WebDriverWait(browser, 20).until(lambda b: len(queue_ids(b)) == 2)
        a, b = queue_ids(browser)

        open_item(browser, a)
        browser.execute_script("window.oldSame = document.querySelector('#compare button.confirm')")
        open_item(browser, b)  # another item shown: item a's candidates are gone
        assert browser.find_element(By.ID, "item-header").get_attribute("data-item") == str(b)
        browser.execute_script("window.oldSame.click()")  # item a's "same as", clicked anyway
        wait_text(browser, "compare-msg", f"belonged to item {a}")
        assert n_sightings(c, ids["Asha"]) == 2 and n_sightings(c, ids["Bo"]) == 1
        assert item_status(c, a) == item_status(c, b) == "waiting"

        # item b changes elsewhere (another reviewer skips it) while the page still shows the old version
        version = c.get(f"/v1/queue/{b}").json()["version"]
        c.post(f"/v1/queue/{b}/decide", json={"kind": "unsure", "version": version}).raise_for_status()
        browser.find_element(By.CSS_SELECTOR, "#compare button.confirm").click()
        message = wait_text(browser, "compare-msg", "nothing was filed")
        assert f"item {b}" in message
        assert n_sightings(c, ids["Asha"]) == 2 and n_sightings(c, ids["Bo"]) == 1
        assert item_status(c, b) == "unsure" and c.get(f"/v1/queue/{b}").json()["decision"] is None
        assert not page_errors(browser)


def test_double_click_on_same_as_files_one_sighting(browser, tmp_path):
    with served(tmp_path) as (base, c, _service):
        ids = catalogue_with_lions(c)
        sign_in(browser, base)
        upload_batch(browser, tmp_path, [1, 3])
        WebDriverWait(browser, 20).until(lambda b: len(queue_ids(b)) == 2)
        a, b = queue_ids(browser)
        cards = open_item(browser, a)
        ActionChains(browser).double_click(cards[0].find_element(By.CSS_SELECTOR, "button.confirm")).perform()
        wait_text(browser, "compare-msg", f"item {a}: same as")
        shown_item(browser, b)
        target = c.get(f"/v1/queue/{a}").json()["decision"]["individual_id"]
        assert n_sightings(c, target) == (3 if target == ids["Asha"] else 2)
        assert item_status(c, b) == "waiting"  # the second click did not land on the next item
        assert sum(i["n_sightings"] for i in individuals(c).values()) == 4

        disabled_at_once = """const same = document.querySelector('#compare button.confirm');
            same.click();
            return [...document.querySelectorAll('#compare button')].every((x) => x.disabled);"""
        assert browser.execute_script(disabled_at_once)  # from the click until the answer
        wait_text(browser, "compare-msg", f"item {b}: same as")
        assert sum(i["n_sightings"] for i in individuals(c).values()) == 5


def test_phone_width_shows_query_and_candidate_without_sideways_scroll(browser, tmp_path):
    with served(tmp_path) as (base, c, _service):
        catalogue_with_lions(c)
        sign_in(browser, base)
        upload_batch(browser, tmp_path, [1], size=640)  # a photo wider than the phone
        browser.set_window_size(375, 800)
        assert browser.execute_script("return window.innerWidth") <= 400
        WebDriverWait(browser, 20).until(lambda b: len(queue_ids(b)) == 1)
        cards = open_item(browser, queue_ids(browser)[0])
        candidate = cards[-1].find_element(By.CSS_SELECTOR, "figure img")
        query = browser.find_element(By.ID, "query-photo")
        loaded = "return [...document.images].every((i) => i.complete && i.naturalWidth > 0)"
        WebDriverWait(browser, 10).until(lambda b: b.execute_script(loaded))
        browser.execute_script("arguments[0].scrollIntoView({block: 'end'})", candidate)
        on_screen = """const r = arguments[0].getBoundingClientRect();
            return r.width > 0 && r.top >= 0 && r.bottom <= innerHeight + 1 && r.left >= 0
                   && r.right <= innerWidth;"""
        assert browser.execute_script(on_screen, candidate), "the candidate's photo is off screen"
        assert browser.execute_script(on_screen, query), "the query photo scrolled away (not pinned)"
        top = "return arguments[0].getBoundingClientRect().bottom <= arguments[1].getBoundingClientRect().top"
        assert browser.execute_script(top, query, candidate)  # stacked: the query above
        assert not browser.execute_script(SIDEWAYS), "the page scrolls sideways at 375 px"
        assert not browser.execute_script(TOO_WIDE)


def group_card(browser, group_id):
    return browser.find_element(By.CSS_SELECTOR, f'#groups article[data-group="{group_id}"]')


def proposed(c):
    return {g["id"]: g["items"] for g in c.get("/v1/groups", params={"status": "proposed"}).json()["groups"]}


def test_proposed_new_individuals_split_merge_accept(browser, tmp_path):
    with served(tmp_path) as (base, c, _service):
        sign_in(browser, base)
        upload_batch(browser, tmp_path, [20, 21, 22, 23], species="zebra")  # a species nobody filed yet
        groups = proposed(c)
        assert sorted(map(len, groups.values())) == [2, 2]  # discovery proposes two pairs
        g1, g2 = sorted(groups)
        WebDriverWait(browser, 20).until(
            lambda b: len(b.find_elements(By.CSS_SELECTOR, "#groups article")) == 2
        )
        assert group_card(browser, g1).find_elements(By.CSS_SELECTOR, "img.thumb")  # its items' photos

        moved = groups[g1][1]
        group_card(browser, g1).find_element(By.CSS_SELECTOR, f'li[data-item="{moved}"] button.split').click()
        wait_text(browser, "groups-msg", f"item {moved} split off")
        (g3,) = set(proposed(c)) - {g1, g2}
        assert proposed(c)[g3] == [moved] and proposed(c)[g1] == [groups[g1][0]]

        WebDriverWait(browser, 20).until(
            lambda b: len(b.find_elements(By.CSS_SELECTOR, "#groups article")) == 3
        )
        card = group_card(browser, g2)
        Select(card.find_element(By.CSS_SELECTOR, "select")).select_by_value(str(g3))
        card.find_element(By.CSS_SELECTOR, "button.merge").click()
        wait_text(browser, "groups-msg", "merged")
        assert sorted(proposed(c)[g2]) == sorted(groups[g2] + [moved])

        WebDriverWait(browser, 20).until(
            lambda b: len(b.find_elements(By.CSS_SELECTOR, "#groups article")) == 2
        )
        name = group_card(browser, g2).find_element(By.CSS_SELECTOR, "form.accept input")
        name.clear()
        name.send_keys("Zara" + Keys.ENTER)
        wait_text(browser, "groups-msg", "filed as Zara")
        assert individuals(c, "zebra")["Zara"]["n_sightings"] == 3 and g2 not in proposed(c)
        assert not page_errors(browser)
