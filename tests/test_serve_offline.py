"""The service on a machine with no internet, and what a new user meets first.

- ``/docs``, ``/redoc`` and the review page render in headless Chromium with every request to anything but
  127.0.0.1 failing (a dead proxy, no name resolution), and the browser's own network log shows that no request
  left 127.0.0.1; FastAPI's default docs page, the control, is caught reaching for its CDN.
- ``animal-reid serve`` prints ``listening on http://HOST:PORT`` once it answers (``--port 0`` too).
- The OpenAPI spec declares the bearer scheme on the write routes (``/docs`` has an Authorize button).
- Species names are case-insensitive (stored lower-case); ``/v1/species`` lists them; bad names get one line.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from animal_reid.serve.app import create_app  # noqa: E402
from animal_reid.serve.service import Service  # noqa: E402
from animal_reid.testing.serve import free_port, photo, serve_in_thread, tiny_model  # noqa: E402

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NETWORK_SCHEMES = ("http", "https", "ws", "wss", "ftp")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    """A running service with one lion; yields (base URL, service)."""
    root = tmp_path_factory.mktemp("offline")
    service = Service.from_pretrained(model_dir, f"sqlite:///{root / 'c.db'}", threshold=0.9, token=TOKEN,
                                      engine="torch", poll_s=None)  # fmt: skip
    with serve_in_thread(create_app(service)) as base:
        httpx.post(f"{base}/v1/sightings", files={"file": ("a.png", photo(1), "image/png")},
                   data={"name": "Asha", "species": "lion"}, headers=AUTH).raise_for_status()  # fmt: skip
        yield base, service
    service.close()


# --- no request leaves 127.0.0.1 ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def offline_browser(tmp_path_factory):
    """Headless Chromium that cannot reach anything but 127.0.0.1 and logs every request it makes."""
    if not CHROMIUM or not DRIVER:
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium not installed: pip install selenium"
    )
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    dead = free_port()  # nothing listens there: every proxied (= non-loopback) request fails
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--proxy-server=http://127.0.0.1:{dead}",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):  # fmt: skip
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def _requested_urls(driver) -> list[str]:
    """Every URL the page asked for since the last call (Chrome DevTools' Network.requestWillBeSent), less those
    the page's Content-Security-Policy refused (Network.loadingFailed, blockedReason "csp"): the browser
    refuses those before sending anything."""
    urls, blocked = {}, set()
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls[msg["params"]["requestId"]] = msg["params"]["request"]["url"]
        elif msg["method"] == "Network.loadingFailed" and msg["params"].get("blockedReason") == "csp":
            blocked.add(msg["params"]["requestId"])
    return [u for rid, u in urls.items() if rid not in blocked]


def _outside(urls: list[str]) -> list[str]:
    """The URLs that would go over the network to another host than 127.0.0.1 (data:, blob: and Chrome's own
    chrome:// pages never leave the browser)."""
    return [u for u in urls if urlsplit(u).scheme in NETWORK_SCHEMES and urlsplit(u).hostname != "127.0.0.1"]


def _rendered(driver, css: str, text: str, timeout_s: float = 30) -> bool:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(text in e.text for e in driver.find_elements(By.CSS_SELECTOR, css)):
            return True
        time.sleep(0.1)
    return False


PAGES = {  # path -> (element that only exists once the page's scripts ran, text in it)
    "/docs": (".swagger-ui .information-container .title", "animal-reid"),
    "/redoc": ("h1", "animal-reid"),
    "/": ("#species-list option", ""),
}


@pytest.mark.parametrize("path", list(PAGES))
def test_pages_render_with_no_request_leaving_localhost(offline_browser, served, path):
    base, _ = served
    _requested_urls(offline_browser)  # drop what earlier pages logged
    offline_browser.get(base + path)
    css, text = PAGES[path]
    assert _rendered(offline_browser, css, text), f"{path} did not render offline"
    if path == "/docs":  # the bearer scheme shows as an Authorize button
        assert _rendered(offline_browser, ".swagger-ui button.authorize", "Authorize")
    urls = _requested_urls(offline_browser)
    seen = (offline_browser.current_url, urls[:8])
    assert any(u.startswith(base + path) for u in urls), seen  # the log saw the page itself
    assert _outside(urls) == [], f"{path} asked for something outside 127.0.0.1: {_outside(urls)[:5]} {seen}"
    if path != "/":
        assert any("/docs-assets/" in u for u in urls)  # its scripts came from the app


def test_the_check_catches_a_page_that_reaches_for_a_cdn(offline_browser):
    """Control: FastAPI's default /docs loads Swagger UI from a CDN, so offline it stays blank and the log says
    where it tried to go."""
    from fastapi import FastAPI

    _requested_urls(offline_browser)
    with serve_in_thread(_with_ready(FastAPI(title="cdn-docs"))) as base:
        offline_browser.get(base + "/docs")
        rendered = _rendered(offline_browser, ".swagger-ui .information-container .title", "cdn-docs", 3)
        urls = _requested_urls(offline_browser)
    assert not rendered
    assert any(urlsplit(u).hostname == "cdn.jsdelivr.net" for u in _outside(urls)), urls


def _with_ready(app):
    app.get("/ready")(lambda: {"ready": True})
    return app


# --- the OpenAPI spec -------------------------------------------------------------------------------------------
WRITES = [("post", "/v1/individuals"), ("post", "/v1/sightings"), ("post", "/v1/individuals/{individual_id}/merge"),
          ("delete", "/v1/sightings/{sighting_id}"), ("patch", "/v1/sightings/{sighting_id}"),
          ("patch", "/v1/individuals/{individual_id}"), ("delete", "/v1/individuals/{individual_id}"),
          ("post", "/v1/encounters"), ("post", "/v1/flags/{flag_id}/resolve"), ("get", "/v1/whoami")]  # fmt: skip
READS = [("get", "/v1/individuals"), ("post", "/v1/identify"), ("post", "/v1/embed"), ("get", "/v1/species"),
         ("get", "/v1/individuals/{individual_id}"), ("get", "/v1/changes"), ("get", "/v1/flags")]  # fmt: skip


def test_openapi_declares_the_bearer_scheme_on_every_write_route_only(served):
    base, _ = served
    spec = httpx.get(f"{base}/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "a reviewer's token (from the server's --reviewers file) or the operator's (ANIMAL_REID_TOKEN)",
    }  # fmt: skip
    for method, path in WRITES:
        assert spec["paths"][path][method]["security"] == [{"bearer": []}], (method, path)
    for method, path in READS:
        assert "security" not in spec["paths"][path][method], (method, path)
    # the docs pages are not API routes
    assert not {"/docs", "/redoc"} & set(spec["paths"])


@pytest.mark.parametrize(
    ("header", "status", "detail"),
    [
        (None, 401, "writes need an 'Authorization: Bearer <token>' header"),
        ("Basic czNjcmV0", 401, "writes need an 'Authorization: Bearer <token>' header"),
        ("Bearer", 401, "writes need an 'Authorization: Bearer <token>' header"),
        ("Bearer nope", 403, "the bearer token is not valid for this server"),
        (f"bearer {TOKEN}", 201, None),
    ],
)
def test_bearer_header_forms(served, header, status, detail):
    base, _ = served
    headers = {} if header is None else {"Authorization": header}
    r = httpx.post(f"{base}/v1/individuals", json={"name": f"X{status}", "species": "lion"}, headers=headers)
    assert r.status_code == status, r.text
    if detail is not None:
        assert r.json() == {"detail": detail}


# --- the "listening on" line ----------------------------------------------------------------------------------
@pytest.mark.parametrize("port", ["free", "0"])
def test_serve_prints_listening_on_once_it_answers(model_dir, tmp_path, port):
    port = str(free_port()) if port == "free" else port
    env = {**os.environ, "ANIMAL_REID_TOKEN": TOKEN, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "animal_reid.cli", "serve", "--model", str(model_dir),
           "--catalogue", f"sqlite:///{tmp_path / 'c.db'}", "--port", port, "--engine", "torch"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().rstrip("\n")  # blocks until the server printed it (or exited)
        m = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)", line)
        assert m, (line, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
        if port != "0":
            assert m.group(1) == port
        r = httpx.get(f"http://127.0.0.1:{m.group(1)}/ready", timeout=10)  # already answering: no waiting
        assert r.status_code == 200 and r.json()["ready"] is True
    finally:
        proc.terminate()
        out, _err = proc.communicate(timeout=30)
    assert "listening on" not in out  # printed once


@pytest.mark.parametrize(
    ("host", "busy", "why"),
    [
        ("127.0.0.1", True, "the port is in use (another server? choose another --port)"),
        ("localhost", True, "the port is in use (another server? choose another --port)"),
        ("192.0.2.1", False, "cannot assign requested address"),  # TEST-NET-1: no interface of this machine
    ],
)
def test_serve_says_in_one_line_when_it_cannot_listen(model_dir, tmp_path, capsys, host, busy, why):
    import socket

    from animal_reid.cli import main

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1] if busy else free_port()
        db = tmp_path / "c.db"
        argv = ["serve", "--model", str(model_dir), "--catalogue", f"sqlite:///{db}", "--host", host,
                "--port", str(port)]  # fmt: skip
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"error: cannot listen on {host}:{port}: {why}\n"
    assert not db.exists()  # refused before the model loaded and the catalogue opened


# --- species names --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "stored"), [("Lion", "lion"), (" LEOPARD ", "leopard"), ("Red_Fox", "red_fox")]
)
def test_species_are_case_insensitive(served, given, stored):
    base, service = served
    with httpx.Client(base_url=base, timeout=30) as c:
        before = {s["name"]: s for s in c.get("/v1/species").json()["species"]}.get(stored, {})
        made = c.post("/v1/individuals", json={"name": f"N-{stored}", "species": given}, headers=AUTH)
        assert made.status_code == 201 and made.json()["species"] == stored, made.text
        seed = 100 + len(stored)
        s = c.post("/v1/sightings", files={"file": ("p.png", photo(seed), "image/png")},
                   data={"individual_id": made.json()["id"]}, headers=AUTH)  # fmt: skip
        assert s.status_code == 201 and s.json()["species"] == stored
        new = c.post("/v1/sightings", files={"file": ("q.png", photo(seed + 50), "image/png")},
                     data={"name": f"M-{stored}", "species": given.upper()}, headers=AUTH)  # fmt: skip
        assert new.status_code == 201 and new.json()["species"] == stored, new.text
        found = c.post("/v1/identify", files={"file": ("p.png", photo(seed), "image/png")},
                       data={"species": given.swapcase()}).json()  # fmt: skip
        assert found["species"] == stored and found["candidates"][0]["individual_id"] == made.json()["id"]
        listed = c.get("/v1/individuals", params={"species": given}).json()["individuals"]
        assert {f"N-{stored}", f"M-{stored}"} <= {i["name"] for i in listed}
        assert {i["species"] for i in listed} == {stored}
        after = {s["name"]: s for s in c.get("/v1/species").json()["species"]}[stored]
        assert after["individuals"] == before.get("individuals", 0) + 2
        assert after["sightings"] == before.get("sightings", 0) + 2 and after["threshold"] == 0.9
    assert stored in service.catalogue.species()


@pytest.mark.parametrize("bad", ["../etc", "red fox", "", "x" * 65, "lion!"])
def test_bad_species_names_are_one_line_422(served, bad):
    base, _ = served
    want = f"species: expected 1-64 letters, digits or _ (like 'lion' or 'red_fox'), got {bad!r}"
    with httpx.Client(base_url=base, timeout=30) as c:
        answers = [
            c.post("/v1/individuals", json={"name": "X", "species": bad}, headers=AUTH),
            c.post("/v1/identify", files={"file": ("p.png", photo(1), "image/png")}, data={"species": bad}),
            c.post(
                "/v1/sightings",
                files={"file": ("p.png", photo(1), "image/png")},
                data={"name": "X", "species": bad},
                headers=AUTH,
            ),  # fmt: skip
            c.get("/v1/individuals", params={"species": bad}),
        ]
    for r in answers:
        if bad == "" and r.request.method == "POST" and r.request.url.path == "/v1/sightings":
            assert r.status_code == 422 and r.json() == {
                "detail": "give individual_id (a known individual) or name and species (a new one)"
            }  # an empty form field is a missing one
            continue
        if bad == "" and r.request.method == "POST" and r.request.url.path == "/v1/identify":
            assert r.status_code == 422 and r.json()["detail"].startswith("species: ")
            continue
        assert r.status_code == 422 and r.json() == {"detail": want}, (r.request.url, r.text)


def test_species_list_includes_the_threshold_files_species(model_dir, tmp_path):
    from animal_reid.openset import OpenSetThreshold

    thr = OpenSetThreshold(global_threshold=0.5, per_species={"zebra": 0.7, "Not A Key": 0.1})
    service = Service.from_pretrained(model_dir, f"sqlite:///{tmp_path / 'c.db'}", threshold=thr, token=TOKEN,
                                      engine="torch", poll_s=None)  # fmt: skip
    service.open()
    try:
        service.catalogue.create_individual("Asha", "Lion")
        assert service.species() == [
            {"name": "lion", "individuals": 1, "sightings": 0, "threshold": 0.5},
            {"name": "zebra", "individuals": 0, "sightings": 0, "threshold": 0.7},
        ]
    finally:
        service.close()
