"""A local Hugging Face Hub emulator, so that pushes and reads of models and datasets run offline.

A stdlib ``ThreadingHTTPServer`` on 127.0.0.1 answers the HTTP calls that ``huggingface_hub`` 2.x makes (with
``HF_HUB_DISABLE_XET=1``) for ``upload_folder`` / ``create_commit`` (``create_pr=True`` included),
``hf_hub_download`` / ``snapshot_download``, ``PreTrainedModel.push_to_hub`` / ``from_pretrained`` and
``Dataset.push_to_hub`` / ``load_dataset``. Files live on disk under ``root``: ``objects/<sha256>`` holds every
file's bytes, ``repos/<type>s/<namespace>/<name>.json`` one repo's refs and commit history. ``HubEmulator(root)``
keeps them under ``root/hub`` and gives clients a fresh ``HF_HOME`` in ``root/client_home``.

Endpoints (``{t}``: ``models`` or ``datasets``; ``{p}``: ``""`` or ``"datasets/"``; ``{repo}``: ``namespace/name``;
``{rev}``: a branch, ``refs/pr/N`` or a commit sha, URL-quoted or not)::

    GET       /api/whoami-v2
    POST      /api/repos/create                   JSON {name, organization, type, visibility}; 409 if it exists
    POST      /api/validate-yaml                  always valid
    GET       /api/{t}/{repo}[/revision/{rev}]     sha, private, siblings (rfilename, size, blobId, lfs)
    GET       /api/{t}/{repo}/tree/{rev}[/{path}]  ?recursive=true; a single page
    POST      /api/{t}/{repo}/paths-info/{rev}    form paths=...
    GET       /api/{t}/{repo}/refs                branches, and pull requests with ?include_prs=1
    GET       /api/{t}/{repo}/commits/{rev}       first-parent history
    POST      /api/{t}/{repo}/preupload/{rev}     uploadMode "lfs" over 10 MiB or for .gitattributes LFS patterns
    POST      /api/{t}/{repo}/commit/{rev}        NDJSON header/file/lfsFile/deletedFile/deletedFolder; ?create_pr=1
    POST      /{p}{repo}.git/info/lfs/objects/batch   LFS batch API, "basic" transfer
    PUT       /lfs-objects/{sha256}               the upload href the batch answer gives; body checked against sha256
    GET|HEAD  /{p}{repo}/resolve/{rev}/{path}     ETag, X-Repo-Commit, Content-Length, X-Linked-Etag/-Size for LFS,
                                                  Range requests (206)

Errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound), which huggingface_hub maps to its
exception classes. Not emulated: Xet storage, multipart LFS, tags/branches creation, spaces, discussions, auth.

Clients read ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and ``HF_HUB_DISABLE_XET`` into module constants at import time
(``huggingface_hub.constants``, ``datasets.config``), so run the client in a subprocess with ``hub.env`` merged into
its environment (``hub.run_python`` does this). ``HfApi(endpoint=...)`` and ``hf_hub_download(endpoint=...)`` honour
an endpoint in-process, but ``from_pretrained`` and ``load_dataset`` do not, and a process that imported
huggingface_hub with ``HF_HUB_OFFLINE=1`` (as the test suite does) refuses every request.

    with HubEmulator(tmp_path) as hub:
        hub.run_python("from huggingface_hub import HfApi; HfApi().create_repo('me/x')")
"""

import argparse
import base64
import fnmatch
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

LFS_THRESHOLD_BYTES = 10 * 1024 * 1024
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.gz *.h5 *.joblib *.model *.msgpack *.npy *.npz *.onnx *.ot *.parquet "
    "*.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
).split()
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)
REPO_TYPES = {"models": "model", "datasets": "dataset"}
URL_PREFIXES = {"model": "", "dataset": "datasets/"}
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


class HubError(Exception):
    """An HTTP error answer: status, huggingface_hub's ``X-Error-Code`` and a message."""

    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class HubStore:
    """Repos and objects on disk; one lock serialises every read-modify-write of a repo file."""

    def __init__(self, root: str | Path, user: str = "emulator-user"):
        self.root, self.user = Path(root), user
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    # -- storage ---------------------------------------------------------------------------------------------
    def _repo_file(self, repo_type: str, repo_id: str) -> Path:
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(_NAME.match(p) for p in parts):
            raise HubError(404, "RepoNotFound", f"expected a repo id 'namespace/name', got {repo_id!r}")
        return self.root / "repos" / f"{repo_type}s" / parts[0] / f"{parts[1]}.json"

    def load(self, repo_type: str, repo_id: str) -> dict:
        path = self._repo_file(repo_type, repo_id)
        if not path.is_file():
            raise HubError(404, "RepoNotFound", f"{repo_type} repository {repo_id!r} not found")
        return json.loads(path.read_text())

    def _save(self, repo_type: str, repo_id: str, state: dict) -> None:
        path = self._repo_file(repo_type, repo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{threading.get_ident()}")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, path)

    def put_object(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.objects / sha256
        if not path.exists():
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha256

    def object_size(self, sha256: str) -> int | None:
        path = self.objects / sha256
        return path.stat().st_size if _SHA256.match(sha256) and path.is_file() else None

    # -- repos and revisions ---------------------------------------------------------------------------------
    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> bool:
        """Create a repo with one initial commit adding ``.gitattributes``; False when it already exists."""
        with self.lock:
            if self._repo_file(repo_type, repo_id).is_file():
                return False
            state = {"private": private, "refs": {}, "commits": {}, "num_prs": 0}
            self._add_commit(
                state,
                "main",
                None,
                {".gitattributes": self._file_entry(GITATTRIBUTES.encode())},
                "initial commit",
                "",
            )
            self._save(repo_type, repo_id, state)
            logger.info("created %s repo %s", repo_type, repo_id)
            return True

    @staticmethod
    def resolve(state: dict, rev: str) -> str:
        if rev in state["refs"]:
            return state["refs"][rev]
        if _SHA1.match(rev) and rev in state["commits"]:
            return rev
        raise HubError(404, "RevisionNotFound", f"revision {rev!r} not found")

    def files_at(self, state: dict, rev: str) -> tuple[str, dict[str, dict]]:
        sha = self.resolve(state, rev)
        return sha, state["commits"][sha]["files"]

    def _file_entry(self, data: bytes, lfs: bool = False) -> dict:
        sha256 = self.put_object(data)
        oid = git_blob_sha1(lfs_pointer(sha256, len(data)) if lfs else data)
        return {"sha256": sha256, "size": len(data), "lfs": lfs, "oid": oid}

    @staticmethod
    def _add_commit(state: dict, ref: str, parent: str | None, files: dict, title: str, message: str) -> str:
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        record = {"parent": parent, "files": files, "title": title, "message": message, "date": date}
        sha = hashlib.sha1(json.dumps([record, ref, time.time_ns()], sort_keys=True).encode()).hexdigest()
        state["commits"][sha], state["refs"][ref] = record, sha
        return sha

    def commit(
        self, repo_type: str, repo_id: str, rev: str, lines: list[dict], create_pr: bool
    ) -> tuple[str, int | None]:
        """Apply one NDJSON commit payload; returns (commit sha, pull request number or None)."""
        with self.lock:
            state = self.load(repo_type, repo_id)
            header = next((line["value"] for line in lines if line.get("key") == "header"), {})
            if create_pr:
                parent = self.resolve(state, rev)
                state["num_prs"] += 1
                pr_num, ref = state["num_prs"], f"refs/pr/{state['num_prs']}"
            elif rev in state["refs"]:
                parent, pr_num, ref = state["refs"][rev], None, rev
            else:
                raise HubError(
                    404, "RevisionNotFound", f"cannot commit to {rev!r}: not a branch or pull request ref"
                )
            if header.get("parentCommit") not in (None, parent):
                raise HubError(
                    412, "PreconditionFailed", "A commit has happened since. Please refresh and try again."
                )
            files = dict(state["commits"][parent]["files"])
            for line in lines:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(
                            400, "BadRequest", f"expected base64 encoding, got {value.get('encoding')!r}"
                        )
                    files[value["path"]] = self._file_entry(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    size = self.object_size(value["oid"])
                    if size is None:
                        raise HubError(
                            422,
                            "BadRequest",
                            f"LFS object {value['oid']} for {value['path']!r} was never uploaded",
                        )
                    pointer = lfs_pointer(value["oid"], size)
                    files[value["path"]] = {
                        "sha256": value["oid"],
                        "size": size,
                        "lfs": True,
                        "oid": git_blob_sha1(pointer),
                    }
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(
                            404, "EntryNotFound", f"A file with this name doesn't exist: {value['path']!r}"
                        )
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {path: entry for path, entry in files.items() if not path.startswith(prefix)}
                elif key != "header":
                    raise HubError(400, "BadRequest", f"unknown commit operation {key!r}")
            sha = self._add_commit(
                state, ref, parent, files, header.get("summary", ""), header.get("description", "")
            )
            self._save(repo_type, repo_id, state)
            logger.info("commit %s on %s %s@%s (%d files)", sha[:8], repo_type, repo_id, ref, len(files))
            return sha, pr_num

    def lfs_patterns(self, state: dict, rev: str) -> list[str]:
        try:
            entry = self.files_at(state, rev)[1].get(".gitattributes")
        except HubError:
            entry = None
        if entry is None:
            return list(LFS_PATTERNS)
        text = (self.objects / entry["sha256"]).read_text(errors="replace")
        return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line]


def _is_lfs(path: str, size: int, patterns: list[str]) -> bool:
    name = path.rsplit("/", 1)[-1]
    return size > LFS_THRESHOLD_BYTES or any(fnmatch.fnmatch(path if "/" in p else name, p) for p in patterns)


def _tree_entry(path: str, entry: dict | None) -> dict:
    if entry is None:
        return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0}
    info = {"type": "file", "path": path, "size": entry["size"], "oid": entry["oid"]}
    if entry["lfs"]:
        pointer_size = len(lfs_pointer(entry["sha256"], entry["size"]))
        info["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": pointer_size}
    return info


def _split_rev(parts: list[str]) -> tuple[str, list[str]]:
    """Split ``[rev, *path]`` where an unquoted ``refs/pr/N`` revision spans three segments."""
    if not parts:
        return "main", []
    if parts[0] in ("refs",) and len(parts) >= 3:
        return "/".join(parts[:3]), parts[3:]
    return parts[0], parts[1:]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "ThreadingHTTPServer"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # -- plumbing --------------------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailer section
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(
        self, status: int, body: bytes = b"", headers: dict | None = None, length: int | None = None
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload, status: int = 200, headers: dict | None = None) -> None:
        self._send(
            status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
        )

    @property
    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{self.headers.get('Host') or f'{host}:{port}'}"

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/")[1:] if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self._read_body() if method in ("POST", "PUT") else b""
        try:
            self._route(method, parts, query, body)
        except HubError as err:
            logger.debug("%s %s -> %d %s", method, self.path, err.status, err.message)
            self._json(
                {"error": err.message, **err.extra},
                err.status,
                {"X-Error-Code": err.code, "X-Error-Message": err.message},
            )
        except Exception as err:  # answer 500 and keep serving, as the Hub would
            logger.exception("hub emulator failed on %s %s", method, self.path)
            self._json({"error": f"{type(err).__name__}: {err}"}, 500)

    def _route(self, method: str, parts: list[str], query: dict, body: bytes) -> None:
        store: HubStore = self.server.store  # type: ignore[attr-defined]
        if parts[:2] == ["api", "whoami-v2"]:
            return self._json(
                {
                    "type": "user",
                    "name": store.user,
                    "fullname": store.user,
                    "orgs": [],
                    "auth": {"accessToken": {"role": "write"}},
                }
            )
        if parts[:2] == ["api", "validate-yaml"]:
            return self._json({"errors": [], "warnings": []})
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            payload = json.loads(body)
            repo_type = payload.get("type") or "model"
            if repo_type not in URL_PREFIXES:
                raise HubError(
                    400, "BadRequest", f"repo type must be one of {sorted(URL_PREFIXES)}, got {repo_type!r}"
                )
            repo_id = f"{payload.get('organization') or store.user}/{payload['name']}"
            private = payload.get("visibility", "public") != "public" or bool(payload.get("private"))
            url = f"{self._base}/{URL_PREFIXES[repo_type]}{repo_id}"
            if not store.create_repo(repo_type, repo_id, private):
                raise HubError(409, "Conflict", f"You already created this {repo_type} repo: {url}", url=url)
            return self._json({"url": url, "name": repo_id})
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in REPO_TYPES:
            return self._api_repo(
                method, REPO_TYPES[parts[1]], "/".join(parts[2:4]), parts[4:], query, body, store
            )
        if parts[-5:] == ["info", "lfs", "objects", "batch"] or parts[-4:] == [
            "info",
            "lfs",
            "objects",
            "batch",
        ]:
            return self._lfs_batch(parts, json.loads(body), store)
        if len(parts) == 2 and parts[0] == "lfs-objects" and method == "PUT":
            if not _SHA256.match(parts[1]) or hashlib.sha256(body).hexdigest() != parts[1]:
                raise HubError(400, "BadRequest", f"uploaded bytes do not hash to sha256 {parts[1]!r}")
            store.put_object(body)
            return self._send(200)
        repo_type = "dataset" if parts[:1] == ["datasets"] else "model"
        parts = parts[1:] if repo_type == "dataset" else parts
        if len(parts) >= 4 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            rev, path = _split_rev(parts[3:])
            return self._resolve(repo_type, "/".join(parts[:2]), rev, "/".join(path), store)
        raise HubError(404, "NotFound", f"the hub emulator does not answer {method} {self.path}")

    # -- /api/{t}/{repo}/... ---------------------------------------------------------------------------------
    def _api_repo(self, method, repo_type, repo_id, rest, query, body, store: HubStore) -> None:
        with store.lock:
            state = store.load(repo_type, repo_id)
        action = rest[0] if rest else "revision"
        rev, sub = _split_rev(rest[1:])
        if action == "revision" and method == "GET":
            sha, files = store.files_at(state, rev)
            siblings = [
                {
                    "rfilename": p,
                    **{k: v for k, v in _tree_entry(p, e).items() if k in ("size", "lfs")},
                    "blobId": e["oid"],
                }
                for p, e in sorted(files.items())
            ]
            for sibling in siblings:
                if "lfs" in sibling:
                    sibling["lfs"] = {
                        "sha256": sibling["lfs"]["oid"],
                        "size": sibling["lfs"]["size"],
                        "pointerSize": sibling["lfs"]["pointerSize"],
                    }
            last = state["commits"][sha]["date"]
            return self._json(
                {
                    "id": repo_id,
                    "author": repo_id.split("/")[0],
                    "sha": sha,
                    "private": state["private"],
                    "lastModified": last,
                    "siblings": siblings,
                    "tags": [],
                }
            )
        if action == "tree" and method == "GET":
            _, files = store.files_at(state, rev)
            prefix = "/".join(sub)
            return self._json(
                self._tree(files, prefix, query.get("recursive", "false").lower() in ("1", "true"))
            )
        if action == "paths-info" and method == "POST":
            _, files = store.files_at(state, rev)
            wanted = parse_qs(body.decode()).get("paths", [])
            dirs = {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)}
            return self._json([_tree_entry(p, files.get(p)) for p in wanted if p in files or p in dirs])
        if action == "refs" and method == "GET":
            refs = sorted(state["refs"].items())
            branches = [
                {"name": r, "ref": f"refs/heads/{r}", "targetCommit": s}
                for r, s in refs
                if not r.startswith("refs/")
            ]
            prs = [{"name": r, "ref": r, "targetCommit": s} for r, s in refs if r.startswith("refs/pr/")]
            return self._json(
                {
                    "branches": branches,
                    "converts": [],
                    "tags": [],
                    "pullRequests": prs if query.get("include_prs") else None,
                }
            )
        if action == "commits" and method == "GET":
            sha, history = store.resolve(state, rev), []
            while sha is not None:
                record = state["commits"][sha]
                history.append(
                    {
                        "id": sha,
                        "title": record["title"],
                        "message": record["message"],
                        "authors": [{"user": store.user}],
                        "date": record["date"],
                    }
                )
                sha = record["parent"]
            return self._json(history)
        if action == "preupload" and method == "POST":
            target = "main" if rev not in state["refs"] and not _SHA1.match(rev) else rev
            patterns = store.lfs_patterns(state, target)
            try:
                existing = store.files_at(state, target)[1]
            except HubError:
                existing = {}
            answer = []
            for f in json.loads(body)["files"]:
                lfs = _is_lfs(f["path"], f["size"], patterns)
                old = existing.get(f["path"])
                oid = None if old is None or old["lfs"] != lfs else (old["sha256"] if lfs else old["oid"])
                answer.append(
                    {
                        "path": f["path"],
                        "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False,
                        "oid": oid,
                    }
                )
            return self._json({"files": answer, "commitOid": store.resolve(state, target)})
        if action == "commit" and method == "POST":
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            create_pr = query.get("create_pr") in ("1", "true", "True")
            sha, pr_num = store.commit(repo_type, repo_id, rev, lines, create_pr)
            repo_url = f"{self._base}/{URL_PREFIXES[repo_type]}{repo_id}"
            pr_url = f"{repo_url}/discussions/{pr_num}" if pr_num is not None else None
            return self._json(
                {
                    "success": True,
                    "commitOid": sha,
                    "commitUrl": f"{repo_url}/commit/{sha}",
                    "pullRequestUrl": pr_url,
                }
            )
        raise HubError(404, "NotFound", f"the hub emulator does not answer {method} {self.path}")

    @staticmethod
    def _tree(files: dict, prefix: str, recursive: bool) -> list[dict]:
        base = prefix.strip("/") + "/" if prefix.strip("/") else ""
        below = {p[len(base) :]: e for p, e in files.items() if p.startswith(base)}
        if base and not below:
            raise HubError(404, "EntryNotFound", f"no folder {prefix!r} in this revision")
        entries: dict[str, dict | None] = {}
        for rel, entry in below.items():
            segments = rel.split("/")
            depth = len(segments) if recursive else 1
            for i in range(1, min(depth, len(segments) - 1) + 1):
                entries.setdefault(base + "/".join(segments[:i]), None)  # folders
            if recursive or len(segments) == 1:
                entries[base + rel] = entry
        return [_tree_entry(p, e) for p, e in sorted(entries.items())]

    def _lfs_batch(self, parts: list[str], payload: dict, store: HubStore) -> None:
        repo_type = "dataset" if parts[0] == "datasets" else "model"
        names = parts[1:3] if repo_type == "dataset" else parts[0:2]
        repo_id = f"{names[0]}/{names[1].removesuffix('.git')}"
        with store.lock:
            store.load(repo_type, repo_id)  # 404 if the repo does not exist
        if payload.get("operation") != "upload":
            raise HubError(
                400,
                "BadRequest",
                f"only the LFS 'upload' operation is emulated, got {payload.get('operation')!r}",
            )
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            if not _SHA256.match(oid):
                objects.append(
                    {"oid": oid, "size": size, "error": {"code": 422, "message": "oid must be a sha256"}}
                )
            elif store.object_size(oid) == size:
                objects.append({"oid": oid, "size": size})  # already stored: nothing to upload
            else:
                objects.append(
                    {
                        "oid": oid,
                        "size": size,
                        "authenticated": True,
                        "actions": {"upload": {"href": f"{self._base}/lfs-objects/{oid}"}},
                    }
                )
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects}).encode(),
            {"Content-Type": "application/vnd.git-lfs+json"},
        )

    # -- /{p}{repo}/resolve/{rev}/{path} ---------------------------------------------------------------------
    def _resolve(self, repo_type: str, repo_id: str, rev: str, path: str, store: HubStore) -> None:
        with store.lock:
            sha, files = store.files_at(store.load(repo_type, repo_id), rev)
        entry = files.get(path)
        if entry is None:
            raise HubError(404, "EntryNotFound", f"{path!r} not found in {repo_id}@{rev}")
        size = entry["size"]
        headers = {
            "ETag": f'"{entry["oid"]}"',
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": size})
        start, end, status = 0, size - 1, 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if match and (match[1] or match[2]):
            if match[1]:
                start, end = int(match[1]), min(int(match[2]), size - 1) if match[2] else size - 1
            else:
                start = max(size - int(match[2]), 0)
            if start >= size or start > end:
                raise HubError(
                    416, "RangeNotSatisfiable", f"range {self.headers['Range']!r} outside {size} bytes"
                )
            headers["Content-Range"], status = f"bytes {start}-{end}/{size}", 206
        if self.command == "HEAD":
            return self._send(status, headers=headers, length=end - start + 1)
        with open(store.objects / entry["sha256"], "rb") as f:
            f.seek(start)
            self._send(status, f.read(end - start + 1), headers)


class HubEmulator:
    """Run the emulator in a background thread: ``with HubEmulator(root) as hub: ... hub.endpoint, hub.env``."""

    def __init__(
        self, root: str | Path, *, port: int = 0, user: str = "emulator-user", token: str = "hf_emulator"
    ):
        self.root, self.port, self.token = Path(root), port, token
        self.store = HubStore(self.root / "hub", user=user)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "HubEmulator":
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self._server.daemon_threads = True
        self._server.store = self.store  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-emulator", daemon=True)
        self._thread.start()
        logger.info("hub emulator serving %s at %s", self.store.root, self.endpoint)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> "HubEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError(
                "the hub emulator is not running: use `with HubEmulator(root) as hub:` or start()"
            )
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a client process; ``HF_HOME`` is a fresh cache under ``root`` so no real cache is used."""
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "HF_TOKEN": self.token,
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HOME": str(self.root / "client_home"),
        }

    def run_python(
        self, code: str, *args: str, timeout: float = 300, cwd: str | Path | None = None
    ) -> subprocess.CompletedProcess:
        """Run ``python -c code *args`` with ``os.environ | self.env``; raise with its stderr when it fails."""
        proc = subprocess.run(
            [sys.executable, "-c", code, *args],
            env={**os.environ, **self.env},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"client process exited with {proc.returncode}; stderr:\n{proc.stderr[-4000:]}"
            )
        return proc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a local Hugging Face Hub emulator in the foreground.")
    parser.add_argument("--root", required=True, help="folder holding the emulated repos and objects")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    hub = HubEmulator(args.root, port=args.port).start()
    print(" ".join(f"{key}={value}" for key, value in hub.env.items() if key != "HF_HOME"), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
