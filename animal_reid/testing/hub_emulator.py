"""A local Hugging Face Hub emulator, so that pushes and reads of models and datasets run offline.

A stdlib ``ThreadingHTTPServer`` on 127.0.0.1 answers the HTTP calls that ``huggingface_hub`` 2.x makes (with
``HF_HUB_DISABLE_XET=1``) for ``upload_folder`` / ``create_commit`` (``create_pr=True`` included),
``hf_hub_download`` / ``snapshot_download``, ``PreTrainedModel.push_to_hub`` / ``from_pretrained`` and
``Dataset.push_to_hub`` / ``load_dataset``. Storage is plain files: ``objects/<sha256>`` holds every file's
bytes, ``repos/<type>s/<namespace>/<name>.json`` one repo's refs and commit history. ``HubEmulator(root)``
keeps them in ``root/hub`` and gives clients a fresh ``HF_HOME`` in ``root/client_home``.

Endpoints, as in ``ROUTES`` below (``{t}``: ``models`` or ``datasets``; ``{p}``: ``""`` or ``"datasets/"``;
``{repo}``: ``namespace/name``; ``{rev}``: a branch, ``refs/pr/N`` or a commit sha, URL-quoted or not)::

    GET       /api/whoami-v2
    POST      /api/repos/create                   JSON {name, organization, type, visibility}; 409 if taken
    POST      /api/validate-yaml                  always valid
    GET       /api/{t}/{repo}[/revision/{rev}]     sha, private, siblings (rfilename, size, blobId, lfs)
    GET       /api/{t}/{repo}/tree/{rev}[/{path}]  ?recursive=true; one page
    POST      /api/{t}/{repo}/paths-info/{rev}    form paths=...
    GET       /api/{t}/{repo}/refs                branches, and pull requests with ?include_prs=1
    GET       /api/{t}/{repo}/commits/{rev}       first-parent history
    POST      /api/{t}/{repo}/branch/{name}       JSON {startingPoint}; 409 if it exists
    POST      /api/{t}/{repo}/preupload/{rev}     uploadMode "lfs" over 10 MiB or for .gitattributes patterns
    POST      /api/{t}/{repo}/commit/{rev}        NDJSON header/file/lfsFile/deletedFile/deletedFolder lines;
                                                  ?create_pr=1 opens refs/pr/N on {rev}
    POST      /{p}{repo}.git/info/lfs/objects/batch   LFS batch API, "basic" transfer
    PUT       /lfs-objects/{sha256}               the batch answer's upload href; bytes checked against sha256
    GET|HEAD  /{p}{repo}/resolve/{rev}/{path}     ETag, X-Repo-Commit, Content-Length, and for LFS files
                                                  X-Linked-Etag/X-Linked-Size; Range requests answer 206

Errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound), which huggingface_hub maps to
its exception classes. Not emulated: Xet storage, multipart LFS, tags, spaces, discussions, auth (any token
passes). ``load_dataset`` also asks ``datasets-server.<endpoint host>`` for a Parquet export; that host does
not resolve, which datasets takes as "no export", and it reads the pushed Parquet files instead.

Clients read ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and ``HF_HUB_DISABLE_XET`` into module constants at import
time (``huggingface_hub.constants``, ``datasets.config``, transformers' shared ``HfApi``), so run the client
in a subprocess with ``hub.env`` merged into its environment (``hub.run_python`` does that). In-process,
``HfApi(endpoint=hub.endpoint)`` and ``hf_hub_download(..., endpoint=hub.endpoint)`` work once
``huggingface_hub.constants.HF_HUB_OFFLINE`` is False and ``HF_HUB_DISABLE_XET`` is True (monkeypatch both),
but ``from_pretrained`` and ``load_dataset`` take no endpoint.

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
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

LFS_THRESHOLD_BYTES = 10 * 1024 * 1024
LFS_PATTERNS = (  # the Hub's default .gitattributes
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.gz *.h5 *.joblib *.model *.msgpack *.npy *.npz *.onnx *.ot *.parquet "
    "*.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
).split()
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)
DUMMY_TOKEN = "hf_emulator_token"
URL_PREFIXES = {"model": "", "dataset": "datasets/"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")
_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")
_API = r"/api/(?P<t>models|datasets)/(?P<repo>[^/]+/[^/]+)"
_REV = r"(?P<rev>refs/pr/\d+|[^/]+)"  # quoted revisions are one segment; an unquoted PR ref spans three
ROUTES = [  # (methods, path regex, handler method name)
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", _API + rf"(?:/revision/{_REV})?", "repo_info"),
    ("GET", _API + rf"/tree/{_REV}(?:/(?P<path>.*))?", "tree"),
    ("POST", _API + rf"/paths-info/{_REV}", "paths_info"),
    ("GET", _API + r"/refs", "refs"),
    ("GET", _API + rf"/commits/{_REV}", "commits"),
    ("POST", _API + r"/branch/(?P<branch>[^/]+)", "create_branch"),
    ("POST", _API + rf"/preupload/{_REV}", "preupload"),
    ("POST", _API + rf"/commit/{_REV}", "commit"),
    ("POST", r"/(?P<t>datasets/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/lfs-objects/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
    ("GET HEAD", rf"/(?P<t>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/{_REV}/(?P<path>.+)", "resolve"),
]


class HubError(Exception):
    """An error answer: HTTP status, huggingface_hub's ``X-Error-Code``, a message and extra JSON fields."""

    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class HubStore:
    """Repos and objects on disk. ``lock`` serialises every read-modify-write of a repo file."""

    def __init__(self, root: str | Path, user: str = "emulator-user"):
        self.root, self.user = Path(root), user
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    def _repo_file(self, repo_type: str, repo_id: str) -> Path:
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(_NAME.fullmatch(p) for p in parts):
            raise HubError(404, "RepoNotFound", f"expected a repo id 'namespace/name', got {repo_id!r}")
        return self.root / "repos" / f"{repo_type}s" / parts[0] / f"{parts[1]}.json"

    def load(self, repo_type: str, repo_id: str) -> dict:
        path = self._repo_file(repo_type, repo_id)
        with self.lock:
            if not path.is_file():
                raise HubError(404, "RepoNotFound", f"{repo_type} repository {repo_id!r} not found")
            return json.loads(path.read_text())

    def save(self, repo_type: str, repo_id: str, state: dict) -> None:
        path = self._repo_file(repo_type, repo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    def put_object(self, data: bytes | Iterable[bytes], expected_sha256: str | None = None) -> str:
        """Store bytes (or an iterable of chunks, streamed to disk) under their sha256 and return it."""
        digest, tmp = hashlib.sha256(), self.objects / f".upload-{threading.get_ident()}-{time.time_ns()}"
        try:
            with open(tmp, "wb") as f:
                for chunk in [data] if isinstance(data, bytes) else data:
                    digest.update(chunk)
                    f.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        sha256 = digest.hexdigest()
        if expected_sha256 not in (None, sha256):
            tmp.unlink()
            raise HubError(
                400, "BadRequest", f"uploaded bytes hash to sha256 {sha256}, not {expected_sha256}"
            )
        os.replace(tmp, self.objects / sha256)
        return sha256

    def object_size(self, sha256: str) -> int | None:
        path = self.objects / sha256
        return path.stat().st_size if _SHA256.fullmatch(sha256) and path.is_file() else None

    def file_entry(self, data: bytes) -> dict:
        return {"sha256": self.put_object(data), "size": len(data), "lfs": False, "oid": git_blob_sha1(data)}

    @staticmethod
    def lfs_entry(sha256: str, size: int) -> dict:
        return {"sha256": sha256, "size": size, "lfs": True, "oid": git_blob_sha1(lfs_pointer(sha256, size))}

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> bool:
        """Create a repo whose first commit adds ``.gitattributes``; False when it already exists."""
        with self.lock:
            if self._repo_file(repo_type, repo_id).is_file():
                return False
            state = {"private": private, "refs": {}, "commits": {}, "num_prs": 0}
            files = {".gitattributes": self.file_entry(GITATTRIBUTES.encode())}
            self.add_commit(state, "main", None, files, "initial commit", "")
            self.save(repo_type, repo_id, state)
        logger.info("created %s repo %s", repo_type, repo_id)
        return True

    @staticmethod
    def resolve(state: dict, rev: str) -> str:
        if rev in state["refs"]:
            return state["refs"][rev]
        if _SHA1.fullmatch(rev) and rev in state["commits"]:
            return rev
        raise HubError(404, "RevisionNotFound", f"revision {rev!r} not found")

    def files_at(self, state: dict, rev: str) -> tuple[str, dict[str, dict]]:
        sha = self.resolve(state, rev)
        return sha, state["commits"][sha]["files"]

    @staticmethod
    def add_commit(state: dict, ref: str, parent: str | None, files: dict, title: str, message: str) -> str:
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        record = {"parent": parent, "files": files, "title": title, "message": message, "date": date}
        sha = hashlib.sha1(json.dumps([record, ref, time.time_ns()], sort_keys=True).encode()).hexdigest()
        state["commits"][sha], state["refs"][ref] = record, sha
        return sha

    def commit(self, repo_type: str, repo_id: str, rev: str, lines: list[dict], create_pr: bool):
        """Apply an NDJSON commit payload to branch/PR ``rev`` (or a new PR on it); return (sha, PR number)."""
        with self.lock:
            state = self.load(repo_type, repo_id)
            header = next((line["value"] for line in lines if line.get("key") == "header"), {})
            parent, pr_num, ref = self.resolve(state, rev), None, rev
            if create_pr:
                state["num_prs"] += 1
                pr_num = state["num_prs"]
                ref = f"refs/pr/{pr_num}"
            elif rev not in state["refs"]:
                raise HubError(400, "BadRequest", f"cannot commit to {rev!r}: not a branch or PR ref")
            if header.get("parentCommit") not in (None, parent):
                raise HubError(412, "PreconditionFailed", "A commit has happened since. Please refresh.")
            files = dict(state["commits"][parent]["files"])
            for line in lines:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, "BadRequest", f"expected base64, got {value.get('encoding')!r}")
                    files[value["path"]] = self.file_entry(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    size = self.object_size(value["oid"])
                    if size is None:
                        raise HubError(422, "BadRequest", f"LFS object of {value['path']!r} never uploaded")
                    files[value["path"]] = self.lfs_entry(value["oid"], size)
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(
                            404, "EntryNotFound", f"A file with this name doesn't exist: {value['path']}"
                        )
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {path: entry for path, entry in files.items() if not path.startswith(prefix)}
                elif key != "header":
                    raise HubError(400, "BadRequest", f"unknown commit operation {key!r}")
            title, message = header.get("summary", ""), header.get("description", "")
            sha = self.add_commit(state, ref, parent, files, title, message)
            self.save(repo_type, repo_id, state)
        logger.info("commit %s on %s %s@%s (%d files)", sha[:8], repo_type, repo_id, ref, len(files))
        return sha, pr_num

    def lfs_patterns(self, files: dict[str, dict]) -> list[str]:
        entry = files.get(".gitattributes")
        if entry is None:
            return list(LFS_PATTERNS)
        text = (self.objects / entry["sha256"]).read_text(errors="replace")
        return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line]


def _tree_entry(path: str, entry: dict | None) -> dict:
    """A ``tree`` / ``paths-info`` item; ``entry=None`` is a folder."""
    if entry is None:
        return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0}
    info = {"type": "file", "path": path, "size": entry["size"], "oid": entry["oid"]}
    if entry["lfs"]:
        pointer_size = len(lfs_pointer(entry["sha256"], entry["size"]))
        info["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": pointer_size}
    return info


def _folders(files: dict) -> set[str]:
    return {path.rsplit("/", i)[0] for path in files for i in range(1, path.count("/") + 1)}


class _Handler(BaseHTTPRequestHandler):
    """Matches the request against ``ROUTES`` and calls ``self.<handler>(**groups)``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_GET

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.store: HubStore = self.server.store  # type: ignore[attr-defined]
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self.body = self._read_body() if self.command == "POST" else b""  # PUT bodies are streamed
        self.close_connection = self.command == "PUT"  # until the upload has consumed the body
        try:
            for methods, pattern, name in ROUTES:
                match = re.fullmatch(pattern, url.path)
                if match and self.command in methods.split():
                    groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    if "t" in match.groupdict():
                        is_dataset = groups.pop("t", "").startswith("dataset")
                        groups["repo_type"] = "dataset" if is_dataset else "model"
                    return getattr(self, name)(**groups)
            raise HubError(404, "NotFound", f"the hub emulator does not answer {self.command} {url.path}")
        except HubError as err:
            logger.debug("%s %s -> %d %s", self.command, self.path, err.status, err.message)
            ascii_message = err.message.encode("ascii", "backslashreplace").decode()  # headers are latin-1
            headers = {"X-Error-Code": err.code, "X-Error-Message": ascii_message}
            self._json({"error": err.message, **err.extra}, err.status, headers)
        except Exception as err:  # answer 500 and keep serving, as the Hub would
            logger.exception("hub emulator failed on %s %s", self.command, self.path)
            self._json({"error": f"{type(err).__name__}: {err}"}, 500)

    def _body_chunks(self) -> Iterator[bytes]:
        """The request body, by Content-Length or chunked transfer encoding, in pieces of at most 1 MiB."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                yield from self._read_exactly(size)
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
        else:
            yield from self._read_exactly(int(self.headers.get("Content-Length") or 0))

    def _read_exactly(self, size: int) -> Iterator[bytes]:
        while size > 0:
            chunk = self.rfile.read(min(size, 1 << 20))
            if not chunk:
                raise HubError(400, "BadRequest", "request body ended early")
            size -= len(chunk)
            yield chunk

    def _read_body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload, status: int = 200, headers: dict | None = None) -> None:
        headers = {"Content-Type": "application/json", **(headers or {})}
        self._send(status, json.dumps(payload).encode(), headers)

    def _url(self, path: str) -> str:
        """An absolute URL on this server, as the client addressed it."""
        host, port = self.server.server_address[:2]
        return f"http://{self.headers.get('Host') or f'{host}:{port}'}/{path}"

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return self._url(URL_PREFIXES[repo_type] + repo_id)

    # -- account and repos -----------------------------------------------------------------------------------
    def whoami(self) -> None:
        user = self.store.user
        self._json(
            {"type": "user", "name": user, "fullname": user, "orgs": [], "auth": {"type": "access_token"}}
        )

    def validate_yaml(self) -> None:
        self._json({"errors": [], "warnings": []})

    def create_repo(self) -> None:
        payload = json.loads(self.body)
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, "BadRequest", f"repo type must be model or dataset, got {repo_type!r}")
        repo_id = f"{payload.get('organization') or self.store.user}/{payload['name']}"
        private = payload.get("visibility", "public") != "public" or bool(payload.get("private"))
        url = self._repo_url(repo_type, repo_id)
        if not self.store.create_repo(repo_type, repo_id, private):
            raise HubError(409, "Conflict", f"You already created this {repo_type} repo: {url}", url=url)
        self._json({"url": url, "name": repo_id})

    def repo_info(self, repo_type: str, repo: str, rev: str = "main") -> None:
        state = self.store.load(repo_type, repo)
        sha, files = self.store.files_at(state, rev)
        siblings = []
        for path, entry in sorted(files.items()):
            siblings.append({"rfilename": path, "size": entry["size"], "blobId": entry["oid"]})
            if entry["lfs"]:
                pointer_size = len(lfs_pointer(entry["sha256"], entry["size"]))
                lfs = {"sha256": entry["sha256"], "size": entry["size"], "pointerSize": pointer_size}
                siblings[-1]["lfs"] = lfs
        date, author = state["commits"][sha]["date"], repo.split("/")[0]
        info = {"id": repo, "author": author, "sha": sha, "private": state["private"], "lastModified": date}
        self._json({**info, "siblings": siblings, "tags": []})

    def tree(self, repo_type: str, repo: str, rev: str, path: str = "") -> None:
        files = self.store.files_at(self.store.load(repo_type, repo), rev)[1]
        base = path.strip("/") + "/" if path.strip("/") else ""
        below = {p[len(base) :]: entry for p, entry in files.items() if p.startswith(base)}
        if base and not below:
            raise HubError(404, "EntryNotFound", f"no folder {path!r} in {repo}@{rev}")
        recursive = self.query.get("recursive", "false").lower() in ("1", "true")
        items: dict[str, dict | None] = {}
        for rel, entry in below.items():
            if recursive or "/" not in rel:
                items[base + rel] = entry
            folders = _folders({rel: entry}) if recursive else {rel.split("/")[0]} - {rel}
            items.update({base + folder: None for folder in folders})
        self._json([_tree_entry(p, entry) for p, entry in sorted(items.items())])

    def paths_info(self, repo_type: str, repo: str, rev: str) -> None:
        files = self.store.files_at(self.store.load(repo_type, repo), rev)[1]
        folders = _folders(files)
        wanted = parse_qs(self.body.decode()).get("paths", [])
        self._json([_tree_entry(p, files.get(p)) for p in wanted if p in files or p in folders])

    def refs(self, repo_type: str, repo: str) -> None:
        refs = sorted(self.store.load(repo_type, repo)["refs"].items())
        branches = [
            {"name": r, "ref": f"refs/heads/{r}", "targetCommit": s}
            for r, s in refs
            if not r.startswith("refs/")
        ]
        prs = [{"name": r, "ref": r, "targetCommit": s} for r, s in refs if r.startswith("refs/pr/")]
        pull_requests = prs if self.query.get("include_prs") else None
        self._json({"branches": branches, "converts": [], "tags": [], "pullRequests": pull_requests})

    def commits(self, repo_type: str, repo: str, rev: str) -> None:
        state = self.store.load(repo_type, repo)
        sha, history = self.store.resolve(state, rev), []
        while sha is not None:
            c = state["commits"][sha]
            item = {"id": sha, "title": c["title"], "message": c["message"], "date": c["date"]}
            history.append({**item, "authors": [{"user": self.store.user}]})
            sha = c["parent"]
        self._json(history)

    def create_branch(self, repo_type: str, repo: str, branch: str) -> None:
        with self.store.lock:
            state = self.store.load(repo_type, repo)
            if branch in state["refs"]:
                raise HubError(409, "Conflict", f"branch {branch!r} already exists")
            start = (json.loads(self.body or b"{}") or {}).get("startingPoint") or "main"
            state["refs"][branch] = self.store.resolve(state, start)
            self.store.save(repo_type, repo, state)
        self._json({})

    # -- uploads ---------------------------------------------------------------------------------------------
    def preupload(self, repo_type: str, repo: str, rev: str) -> None:
        state = self.store.load(repo_type, repo)
        base = rev if rev in state["refs"] or _SHA1.fullmatch(rev) else "main"  # a new branch starts at main
        sha, existing = self.store.files_at(state, base)
        patterns, answer = self.store.lfs_patterns(existing), []
        for f in json.loads(self.body)["files"]:
            name = f["path"].rsplit("/", 1)[-1]
            matches = any(fnmatch.fnmatch(f["path"] if "/" in p else name, p) for p in patterns)
            lfs = f["size"] > LFS_THRESHOLD_BYTES or matches
            old = existing.get(f["path"])
            oid = None if old is None or old["lfs"] != lfs else old["sha256"] if lfs else old["oid"]
            mode = "lfs" if lfs else "regular"
            answer.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._json({"files": answer, "commitOid": sha})

    def commit(self, repo_type: str, repo: str, rev: str) -> None:
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        create_pr = self.query.get("create_pr", "").lower() in ("1", "true")
        sha, pr_num = self.store.commit(repo_type, repo, rev, lines, create_pr)
        url = self._repo_url(repo_type, repo)
        pr_url = f"{url}/discussions/{pr_num}" if pr_num is not None else None
        self._json({"commitOid": sha, "commitUrl": f"{url}/commit/{sha}", "pullRequestUrl": pr_url})

    def lfs_batch(self, repo_type: str, repo: str) -> None:
        self.store.load(repo_type, repo)  # RepoNotFound
        payload = json.loads(self.body)
        if payload.get("operation") != "upload":
            raise HubError(
                400, "BadRequest", f"only LFS 'upload' is emulated, got {payload.get('operation')}"
            )
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            if not _SHA256.fullmatch(oid):
                error = {"code": 422, "message": "oid is not a sha256"}
                objects.append({"oid": oid, "size": size, "error": error})
            elif self.store.object_size(oid) == size:
                objects.append({"oid": oid, "size": size})  # already stored: no actions, nothing to upload
            else:
                upload = {"href": self._url(f"lfs-objects/{oid}")}
                objects.append({"oid": oid, "size": size, "actions": {"upload": upload}})
        body = json.dumps({"transfer": "basic", "objects": objects}).encode()
        self._send(200, body, {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_upload(self, oid: str) -> None:
        self.store.put_object(self._body_chunks(), expected_sha256=oid)
        self.close_connection = False
        self._send(200)

    # -- downloads -------------------------------------------------------------------------------------------
    def resolve(self, repo_type: str, repo: str, rev: str, path: str) -> None:
        sha, files = self.store.files_at(self.store.load(repo_type, repo), rev)
        entry = files.get(path)
        if entry is None:
            raise HubError(404, "EntryNotFound", f"{path!r} not found in {repo}@{rev}")
        size = entry["size"]
        headers = {"ETag": f'"{entry["oid"]}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
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
                raise HubError(416, "RangeNotSatisfiable", f"range {match[0]!r} outside {size} bytes")
            headers["Content-Range"], status = f"bytes {start}-{end}/{size}", 206
        self._send(status, headers={**headers, "Content-Length": end - start + 1})
        if self.command == "GET":
            with open(self.store.objects / entry["sha256"], "rb") as f:
                f.seek(start)
                remaining = end - start + 1
                while remaining > 0 and (chunk := f.read(min(remaining, 1 << 20))):
                    self.wfile.write(chunk)
                    remaining -= len(chunk)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: HubStore):
        super().__init__(address, _Handler)
        self.store = store

    def handle_error(self, request, client_address) -> None:
        """Log instead of printing to stderr; a client dropping its connection is routine."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            logger.debug("client %s dropped the connection", client_address)
        else:
            logger.exception("hub emulator: error while serving %s", client_address)


class HubEmulator:
    """The emulator in a background thread: ``with HubEmulator(root) as hub:`` gives ``endpoint``, ``env``."""

    def __init__(
        self, root: str | Path, *, port: int = 0, user: str = "emulator-user", token: str = DUMMY_TOKEN
    ):
        self.root, self.port, self.token = Path(root), port, token
        self.store = HubStore(self.root / "hub", user=user)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "HubEmulator":
        self._server = _Server(("127.0.0.1", self.port), self.store)
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
            raise RuntimeError("the hub emulator is not running: use `with HubEmulator(root) as hub:`")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a client process; ``HF_HOME`` is a fresh cache, so no real cache is touched."""
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
        self, code: str, *args: str, timeout: float = 300, cwd=None
    ) -> subprocess.CompletedProcess:
        """Run ``python -c code *args`` with ``os.environ | self.env``; raise with its stderr if it fails."""
        cmd, env = [sys.executable, "-c", code, *args], {**os.environ, **self.env}
        proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"client exited with {proc.returncode}; its stderr:\n{proc.stderr[-4000:]}")
        return proc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a local Hugging Face Hub emulator in the foreground.")
    parser.add_argument(
        "--root", required=True, help="folder for the emulated repos (ROOT/hub) and client cache"
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free port)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    hub = HubEmulator(args.root, port=args.port).start()
    print(" ".join(f"{key}={value}" for key, value in hub.env.items()), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
