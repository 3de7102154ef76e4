"""Offline round trips through the local Hub emulator (animal_reid.testing.hub_emulator).

huggingface_hub, transformers and datasets read HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_DISABLE_XET into module
constants at import time, and tests/conftest.py sets HF_HUB_OFFLINE=1 for this process, so the clients run in
subprocesses with ``hub.env`` (``hub.run_python``). Each client script asserts on what it reads back and prints a
JSON summary that the test checks again against the emulator's store.
"""

import hashlib
import http.client
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from animal_reid.testing.hub_emulator import LFS_THRESHOLD_BYTES, HubEmulator


def _run_json(hub: HubEmulator, code: str, *args: str, timeout: float = 240) -> dict:
    """Run a client script under ``hub.env``; its last stdout line is a JSON summary."""
    out = hub.run_python(code, *args, timeout=timeout).stdout.strip().splitlines()
    return json.loads(out[-1])


def _head_files(hub: HubEmulator, repo_type: str, repo_id: str, rev: str = "main") -> dict[str, dict]:
    with hub.store.lock:
        state = hub.store.load(repo_type, repo_id)
    return hub.store.files_at(state, rev)[1]


UPLOAD_CLIENT = r"""
import json, pathlib, sys
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

folder = pathlib.Path(sys.argv[1])
api = HfApi()
assert api.whoami()["name"] == "emulator-user"
url = api.create_repo("alice/tiny-upload")
assert url.repo_id == "alice/tiny-upload", url
api.create_repo("alice/tiny-upload", exist_ok=True)

main = api.upload_folder(repo_id="alice/tiny-upload", folder_path=folder, commit_message="first upload")
(folder / "config.json").write_text('{"version": 2}')
pr = api.upload_folder(repo_id="alice/tiny-upload", folder_path=folder, create_pr=True)

original = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
original["config.json"] = b'{"version": 1}'
for name, data in original.items():
    assert pathlib.Path(hf_hub_download("alice/tiny-upload", name)).read_bytes() == data, name
pr_config = hf_hub_download("alice/tiny-upload", "config.json", revision=pr.pr_revision)
assert pathlib.Path(pr_config).read_text() == '{"version": 2}'
by_sha = hf_hub_download("alice/tiny-upload", "config.json", revision=main.oid)
assert pathlib.Path(by_sha).read_text() == '{"version": 1}'

snap = pathlib.Path(snapshot_download("alice/tiny-upload"))
snap_files = {p.relative_to(snap).as_posix(): p.read_bytes() for p in snap.rglob("*") if p.is_file()}
assert {k: v for k, v in snap_files.items() if k != ".gitattributes"} == original
pr_snap = pathlib.Path(snapshot_download("alice/tiny-upload", revision=pr.pr_revision))
assert (pr_snap / "config.json").read_text() == '{"version": 2}'
assert (pr_snap / "weights" / "big.dat").read_bytes() == original["weights/big.dat"]

errors = []
for call in (
    lambda: hf_hub_download("alice/tiny-upload", "missing.txt"),
    lambda: hf_hub_download("alice/no-such-repo", "config.json"),
    lambda: hf_hub_download("alice/tiny-upload", "config.json", revision="no-such-branch"),
):
    try:
        call()
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as err:
        errors.append(type(err).__name__)
refs = api.list_repo_refs("alice/tiny-upload", include_pull_requests=True)
print(json.dumps({
    "main_oid": main.oid, "pr_revision": pr.pr_revision, "pr_num": pr.pr_num, "errors": errors,
    "lfs": {s.rfilename: s.lfs is not None for s in api.model_info("alice/tiny-upload").siblings},
    "prs": [r.ref for r in refs.pull_requests],
}))
"""


def test_upload_folder_lfs_create_pr_and_download(tmp_path):
    folder = tmp_path / "upload"
    (folder / "weights").mkdir(parents=True)
    (folder / "config.json").write_text('{"version": 1}')
    (folder / "notes.txt").write_bytes(os.urandom(1000))  # small, no LFS pattern: inline base64
    (folder / "model.safetensors").write_bytes(os.urandom(4096))  # forced LFS by .gitattributes pattern
    (folder / "weights" / "big.dat").write_bytes(os.urandom(LFS_THRESHOLD_BYTES + 4096))  # LFS by size
    with HubEmulator(tmp_path / "hub") as hub:
        summary = _run_json(hub, UPLOAD_CLIENT, str(folder))
        main_files = _head_files(hub, "model", "alice/tiny-upload")
        pr_files = _head_files(hub, "model", "alice/tiny-upload", "refs/pr/1")
        objects = {p.name for p in hub.store.objects.iterdir()}

    assert summary["pr_revision"] == "refs/pr/1" and summary["pr_num"] == 1
    assert summary["prs"] == ["refs/pr/1"]
    assert summary["errors"] == [
        "RemoteEntryNotFoundError",
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
    ]
    expected_lfs = {".gitattributes": False, "config.json": False, "notes.txt": False}
    expected_lfs |= {"model.safetensors": True, "weights/big.dat": True}
    assert summary["lfs"] == expected_lfs
    # the LFS files went through lfsFile operations: stored by sha256, flagged LFS in the commit
    assert {path for path, entry in main_files.items() if entry["lfs"]} == {
        "model.safetensors",
        "weights/big.dat",
    }
    assert main_files["weights/big.dat"]["size"] == LFS_THRESHOLD_BYTES + 4096
    assert all(entry["sha256"] in objects for entry in main_files.values())
    assert main_files["config.json"]["sha256"] != pr_files["config.json"]["sha256"]


def test_transformers_push_to_hub_and_from_pretrained(tmp_path):
    code = r"""
import json, torch
from transformers import AutoModel, BertConfig, BertModel
torch.manual_seed(0)
config = BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
model = BertModel(config).eval()
model.push_to_hub("alice/tiny-bert", commit_message="tiny bert")
back = AutoModel.from_pretrained("alice/tiny-bert").eval()
ids = torch.tensor([[1, 5, 7, 2]])
with torch.no_grad():
    same = torch.equal(model(input_ids=ids).last_hidden_state, back(input_ids=ids).last_hidden_state)
sd, sd_back = model.state_dict(), back.state_dict()
print(json.dumps({"class": type(back).__name__, "same_output": same, "same_keys": sorted(sd) == sorted(sd_back),
                  "same_weights": all(torch.equal(sd[k], sd_back[k]) for k in sd)}))
"""
    with HubEmulator(tmp_path) as hub:
        summary = _run_json(hub, code)
        files = _head_files(hub, "model", "alice/tiny-bert")
    assert summary == {"class": "BertModel", "same_output": True, "same_keys": True, "same_weights": True}
    assert files["model.safetensors"]["lfs"] and not files["config.json"]["lfs"]


def test_datasets_push_to_hub_and_load_dataset(tmp_path):
    code = r"""
import json
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset
features = Features({"image_id": Value("string"), "x": Value("int32"), "label": ClassLabel(names=["lion", "dog"])})
train = Dataset.from_dict({"image_id": ["a", "b", "c"], "x": [1, 2, 3], "label": [0, 1, 0]}, features=features)
test = Dataset.from_dict({"image_id": ["d"], "x": [4], "label": [1]}, features=features)
DatasetDict({"train": train, "test": test}).push_to_hub("alice/tiny-ds")
back = load_dataset("alice/tiny-ds")
print(json.dumps({"splits": sorted(back), "train": back["train"].to_dict(), "test": back["test"].to_dict(),
                  "features_equal": back["train"].features == features}))
"""
    with HubEmulator(tmp_path) as hub:
        summary = _run_json(hub, code)
        files = _head_files(hub, "dataset", "alice/tiny-ds")
    assert summary["splits"] == ["test", "train"]
    assert summary["train"] == {"image_id": ["a", "b", "c"], "x": [1, 2, 3], "label": [0, 1, 0]}
    assert summary["test"] == {"image_id": ["d"], "x": [4], "label": [1]}
    assert summary["features_equal"] is True
    parquet = sorted(path for path in files if path.endswith(".parquet"))
    assert parquet == ["data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]
    assert all(files[path]["lfs"] for path in parquet) and "README.md" in files


def test_in_process_hfapi_with_explicit_endpoint(tmp_path, monkeypatch):
    """In-process use works for HfApi / hf_hub_download given `endpoint=`, once offline mode and Xet are off."""
    from huggingface_hub import HfApi, constants, hf_hub_download

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with HubEmulator(tmp_path / "hub") as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("alice/in-process", repo_type="dataset")
        payload = os.urandom(3000)
        info = api.upload_file(
            path_or_fileobj=payload, path_in_repo="blob.bin", repo_id="alice/in-process", repo_type="dataset"
        )
        path = hf_hub_download(
            "alice/in-process",
            "blob.bin",
            repo_type="dataset",
            endpoint=hub.endpoint,
            cache_dir=tmp_path / "cache",
            token=hub.token,
        )
        with open(path, "rb") as f:
            assert f.read() == payload
        assert api.dataset_info("alice/in-process").sha == info.oid
        assert _head_files(hub, "dataset", "alice/in-process")["blob.bin"]["lfs"]


def test_commit_semantics_deletes_branches_and_stale_parent(tmp_path, monkeypatch):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with HubEmulator(tmp_path) as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        repo = "alice/semantics"
        api.create_repo(repo)
        adds = [CommitOperationAdd(f"d/{n}.txt", n.encode()) for n in ("a", "b")] + [
            CommitOperationAdd("keep.txt", b"keep")
        ]
        first = api.create_commit(repo, adds, commit_message="three files")
        api.create_branch(repo, branch="dev", revision=first.oid)
        api.create_branch(repo, branch="dev", exist_ok=True)
        api.create_commit(repo, [CommitOperationDelete("d/")], commit_message="drop d/", revision="dev")
        api.delete_file("keep.txt", repo)
        assert api.list_repo_files(repo, revision="dev") == [".gitattributes", "keep.txt"]
        assert api.list_repo_files(repo) == [".gitattributes", "d/a.txt", "d/b.txt"]
        assert [c.title for c in api.list_repo_commits(repo)] == [
            "Delete keep.txt with huggingface_hub",
            "three files",
            "initial commit",
        ]
        with pytest.raises(HfHubHTTPError) as stale:
            api.create_commit(
                repo, [CommitOperationAdd("x.txt", b"x")], commit_message="x", parent_commit=first.oid
            )
        assert stale.value.response.status_code == 412
        assert not api.file_exists(repo, "x.txt") and api.file_exists(repo, "d/a.txt")
        listing = api.list_repo_tree(repo, path_in_repo="d")
        assert [(type(e).__name__, e.path) for e in listing] == [
            ("RepoFile", "d/a.txt"),
            ("RepoFile", "d/b.txt"),
        ]
        top = api.list_repo_tree(repo)
        assert [(type(e).__name__, e.path) for e in top] == [
            ("RepoFile", ".gitattributes"),
            ("RepoFolder", "d"),
        ]


def test_resolve_headers_and_ranges(tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    data = bytes(range(256)) * 8
    with HubEmulator(tmp_path) as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("alice/headers")
        commit = api.upload_file(path_or_fileobj=data, path_in_repo="w.safetensors", repo_id="alice/headers")
        url = f"{hub.endpoint}/alice/headers/resolve/main/w.safetensors"
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as head:
            assert head.status == 200 and head.headers["X-Repo-Commit"] == commit.oid
            assert int(head.headers["Content-Length"]) == len(data) == int(head.headers["X-Linked-Size"])
            assert head.headers["X-Linked-Etag"].strip('"') == hashlib.sha256(data).hexdigest()
            assert head.headers["ETag"]
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=10-19"})) as part:
            assert part.status == 206 and part.read() == data[10:20]
            assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=-5"})) as tail:
            assert tail.read() == data[-5:]
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{hub.endpoint}/alice/headers/resolve/main/nope.bin")
        assert missing.value.code == 404 and missing.value.headers["X-Error-Code"] == "EntryNotFound"


def test_lfs_batch_and_chunked_upload_protocol(tmp_path):
    data = os.urandom(300_000)
    oid = hashlib.sha256(data).hexdigest()
    with HubEmulator(tmp_path) as hub:
        hub.store.create_repo("dataset", "alice/lfs", private=False)
        host, port = hub.endpoint.removeprefix("http://").split(":")

        def request(method: str, path: str, body=None, headers=None, chunked: bool = False):
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            resp = conn.getresponse()
            payload = resp.read()
            conn.close()
            return resp.status, payload

        batch = json.dumps(
            {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}]}
        )
        status, answer = request("POST", "/datasets/alice/lfs.git/info/lfs/objects/batch", batch)
        assert status == 200
        href = json.loads(answer)["objects"][0]["actions"]["upload"]["href"]
        assert href == f"{hub.endpoint}/lfs-objects/{oid}"
        path = href.removeprefix(hub.endpoint)
        status, _ = request("PUT", path, iter([data[:1000], data[1000:]]), chunked=True)
        assert status == 200 and hub.store.object_size(oid) == len(data)
        status, answer = request("PUT", path, data[::-1])
        assert status == 400 and b"sha256" in answer
        status, answer = request("POST", "/datasets/alice/lfs.git/info/lfs/objects/batch", batch)
        assert json.loads(answer)["objects"] == [{"oid": oid, "size": len(data)}]  # stored: nothing to upload
        status, _ = request("POST", "/datasets/alice/missing.git/info/lfs/objects/batch", batch)
        assert status == 404


def test_cli_serves_in_the_foreground(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "animal_reid.testing.hub_emulator", "--root", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        env = dict(item.split("=", 1) for item in proc.stdout.readline().split())
        assert env["HF_HUB_DISABLE_XET"] == "1" and env["HF_ENDPOINT"].startswith("http://127.0.0.1:")
        with urllib.request.urlopen(env["HF_ENDPOINT"] + "/api/whoami-v2") as resp:
            assert json.load(resp)["name"] == "emulator-user"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
