"""Named reviewers: tokens from the operator's reviewers file, each change logged under its reviewer's name; the
file re-read when it changes; a file that cannot be used is one line from ``animal-reid serve``."""

import os

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from animal_reid.serve import cli  # noqa: E402
from animal_reid.serve.app import create_app  # noqa: E402
from animal_reid.serve.reviewers import Reviewers  # noqa: E402
from animal_reid.serve.service import TOKEN_ENV, Service  # noqa: E402
from animal_reid.testing.serve import photo, serve_in_thread, tiny_model  # noqa: E402

ANA, BO, BO_NEW, CARLA = (
    "ana-token-0123456789",
    "bo-token-0123456789",
    "bo-new-token-012345",
    "carla-token-0123456",
)


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _write(path, text: str) -> None:
    """Write the reviewers file and move its mtime on (an edit within one clock tick is still seen)."""
    old = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(old + 2_000_000_000, old + 2_000_000_000))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def test_two_reviewers_from_a_file_are_named_in_the_change_log_and_edits_are_reloaded(
    model_dir, tmp_path, monkeypatch, caplog
):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = tmp_path / "reviewers.txt"
    _write(path, f"# name: token\nAna Ruiz: {ANA}\nBo: {BO}\n")
    service = Service.from_pretrained(model_dir, f"sqlite:///{tmp_path / 'c.db'}", reviewers=path, engine="torch",
                                      poll_s=None)  # fmt: skip
    assert service.reviewers.names() == ["Ana Ruiz", "Bo"]
    with serve_in_thread(create_app(service)) as base, httpx.Client(base_url=base, timeout=30) as c:
        assert c.get("/v1/whoami", headers=_bearer(ANA)).json() == {"reviewer": "Ana Ruiz"}
        asha = c.post(
            "/v1/individuals", json={"name": "Asha", "species": "lion"}, headers=_bearer(ANA)
        ).json()
        r = c.post("/v1/sightings", files={"file": ("a.png", photo(1), "image/png")},
                   data={"individual_id": asha["id"]}, headers=_bearer(BO))  # fmt: skip
        assert r.status_code == 201 and r.json()["created_by"] == "Bo"
        c.patch(
            f"/v1/individuals/{asha['id']}", json={"notes": "scar"}, headers=_bearer(ANA)
        ).raise_for_status()
        log = c.get("/v1/changes").json()["changes"]
        assert [(ch["actor"], ch["kind"]) for ch in log] == [
            ("Ana Ruiz", "individual.create"), ("Bo", "sighting.add"), ("Ana Ruiz", "individual.update")
        ]  # fmt: skip
        wrong = c.post(
            "/v1/individuals", json={"name": "X", "species": "lion"}, headers=_bearer("no-such-token")
        )
        assert (
            wrong.status_code == 403
            and wrong.json()["detail"] == "the bearer token is not valid for this server"
        )
        assert c.get("/v1/whoami").status_code == 401

        # the operator changes Bo's token and adds Carla: no restart
        _write(path, f"Ana Ruiz: {ANA}\nBo: {BO_NEW}\nCarla: {CARLA}\n")
        assert c.get("/v1/whoami", headers=_bearer(BO)).status_code == 403
        assert c.get("/v1/whoami", headers=_bearer(BO_NEW)).json() == {"reviewer": "Bo"}
        c.post(
            "/v1/individuals", json={"name": "Cleo", "species": "lion"}, headers=_bearer(CARLA)
        ).raise_for_status()
        assert c.get("/v1/changes", params={"after": 3}).json()["changes"][0]["actor"] == "Carla"

        # a broken edit keeps the last good list, and says so in the log once
        _write(path, "Ana Ruiz ana-token-without-a-colon\n")
        for _ in range(3):
            assert c.get("/v1/whoami", headers=_bearer(CARLA)).json() == {"reviewer": "Carla"}
        warned = [r.message for r in caplog.records if "keeping the last good list" in r.getMessage()]
        assert len(warned) == 1
    service.close()


def test_without_reviewers_or_token_writes_are_disabled(model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    service = Service.from_pretrained(
        model_dir, f"sqlite:///{tmp_path / 'c.db'}", engine="torch", poll_s=None
    )
    assert not service.reviewers.enabled
    with serve_in_thread(create_app(service)) as base:
        r = httpx.post(f"{base}/v1/individuals", json={"name": "X", "species": "lion"}, headers=_bearer(ANA))
    service.close()
    assert r.status_code == 403 and r.json()["detail"].startswith("writes are disabled on this server")


def test_the_operator_token_and_a_reviewers_file_work_together(tmp_path):
    path = tmp_path / "reviewers.txt"
    _write(path, f"Ana: {ANA}\n")
    both = Reviewers(path, operator_token="operator-token-0123")
    assert (both.who(ANA), both.who("operator-token-0123"), both.who(BO)) == ("Ana", "operator", None)


@pytest.mark.parametrize(
    "text, message",
    [
        (f"Ana: {ANA}\nBo {BO}\n", ":2: expected 'name: token'"),
        (f"Ana: {ANA}\nBo: short\n", ":2: Bo's token is shorter than 16 characters"),
        (f"Ana: {ANA}\nBo: {ANA}\n", ":2: Bo has the same token as Ana"),
        (None, "cannot read the reviewers file"),
    ],
)
def test_a_reviewers_file_that_cannot_be_used_is_one_line_before_the_model_loads(
    text, message, tmp_path, capsys
):
    path = tmp_path / "reviewers.txt"
    if text is not None:
        path.write_text(text)
    code = cli.main(["serve", "--model", str(tmp_path / "no-model-here"), "--catalogue",
                     f"sqlite:///{tmp_path / 'c.db'}", "--reviewers", str(path), "--port", "0"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith(f"error: {path}") and message in err and "\n" not in err
    assert not (tmp_path / "c.db").exists()  # nothing opened
