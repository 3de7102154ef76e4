"""Resumable downloads, verification and extraction, against a stdlib HTTP server on 127.0.0.1."""

import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from data_scripts.download import Download, DownloadError, download, extract, fetch_and_extract
from data_scripts.sources import get_source


class _Files(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` unless ``server.ranges`` is False; can cut a response."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and server.ranges:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_after is not None:  # the connection drops part way
            self.wfile.write(body[: server.cut_after])
            server.cut_after = None
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    httpd.files, httpd.requests, httpd.ranges, httpd.cut_after = {}, [], True, None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _images_zip(top: str) -> bytes:
    """A GitHub-style archive: one top folder holding generated images in identity folders."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for ident in range(3):
            for i in range(2):
                img = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img, format="JPEG")
                zf.writestr(f"{top}/DogFaceNet/after_4_bis/{ident}/{ident}.{i}.jpg", img.getvalue())
    return buf.getvalue()


def test_interrupted_download_resumes_with_range(server, tmp_path):
    payload = np.random.default_rng(1).bytes(300_000)
    server.files["blob.bin"] = payload
    server.cut_after = 100_000
    spec = Download(
        url=f"{server.url}/blob.bin",
        filename="blob.bin",
        size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        extract=False,
    )
    path = download(spec, tmp_path, progress=False)
    assert path.read_bytes() == payload
    ranges = [r for _, r in server.requests]
    assert ranges[0] is None and ranges[1] == "bytes=100000-"  # the second request resumed, not restarted
    assert not (tmp_path / "blob.bin.part").exists()
    # already there and verified: no new request
    n = len(server.requests)
    assert download(spec, tmp_path, progress=False) == path and len(server.requests) == n


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    payload = np.random.default_rng(2).bytes(50_000)
    server.files["a.bin"] = payload
    (tmp_path / "a.bin.part").write_bytes(payload[:20_000])
    spec = Download(url=f"{server.url}/a.bin", filename="a.bin", size=len(payload), extract=False)
    assert download(spec, tmp_path, progress=False).read_bytes() == payload
    assert server.requests == [("/a.bin", "bytes=20000-")]


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    payload = np.random.default_rng(3).bytes(40_000)
    server.files["b.bin"], server.ranges = payload, False
    (tmp_path / "b.bin.part").write_bytes(payload[:10_000])
    spec = Download(url=f"{server.url}/b.bin", filename="b.bin", size=len(payload), extract=False)
    assert download(spec, tmp_path, progress=False).read_bytes() == payload


def test_checksum_mismatch_and_missing_file_raise(server, tmp_path):
    server.files["c.bin"] = b"hello world"
    bad = Download(url=f"{server.url}/c.bin", filename="c.bin", sha256="0" * 64, extract=False)
    with pytest.raises(DownloadError, match="expected sha256"):
        download(bad, tmp_path, retries=1, progress=False)
    assert not (tmp_path / "c.bin.part").exists() and not (tmp_path / "c.bin").exists()
    wrong_size = Download(url=f"{server.url}/c.bin", filename="c2.bin", size=5, extract=False)
    with pytest.raises(DownloadError, match="more bytes than the declared 5"):
        download(wrong_size, tmp_path, retries=1, progress=False)
    missing = Download(
        url=f"{server.url}/nope.zip", filename="nope.zip", mirrors=(f"{server.url}/c.bin",), extract=False
    )
    assert (
        download(missing, tmp_path, retries=1, progress=False).read_bytes() == b"hello world"
    )  # mirror used


def test_github_archive_extracts_to_declared_folder_and_source_reads_it(server, tmp_path):
    archive = _images_zip("DogFaceNet-Dataset-3456b2b")
    server.files["dogs.zip"] = archive
    spec = Download(
        url=f"{server.url}/dogs.zip",
        filename="dogs.zip",
        size=len(archive),
        sha256=hashlib.sha256(archive).hexdigest(),
        extract_to="DogFaceNet-Dataset",
    )
    folder = fetch_and_extract(spec, tmp_path, progress=False)
    assert folder == tmp_path / "DogFaceNet-Dataset"
    # the DogFaceNet declaration reads `DogFaceNet/after_4_bis` under the data root
    (folder / "DogFaceNet").rename(tmp_path / "DogFaceNet")
    recs = list(get_source("dogfacenet").records(tmp_path))
    assert len(recs) == 6 and {r.identity for r in recs} == {f"dogfacenet:dog:{i}" for i in range(3)}


def test_tar_gz_extraction_and_unsafe_members_refused(tmp_path):
    good = tmp_path / "set.coco.tar.gz"
    with tarfile.open(good, "w:gz") as tf:
        data = b'{"images": [], "annotations": []}'
        info = tarfile.TarInfo("set.coco/annotations/instances_train.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    out = extract(good, tmp_path / "root")
    assert (out / "annotations" / "instances_train.json").exists()
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DownloadError, match="outside"):
        extract(evil, tmp_path / "root2")
    assert not (tmp_path / "escape.txt").exists()


def test_public_sources_declare_downloads():
    for name in ("whaleshark", "gzgc", "leopard", "hyena", "beluga"):
        src = get_source(name)
        assert src.info.downloads and src.info.downloads[0].url.endswith(f"{name}.coco.tar.gz")
        assert src.info.license.startswith("CDLA") and "@" in src.info.citation
    for name in ("liondata", "nyaladata", "holstein2025", "dogfacenet"):
        (d,) = get_source(name).info.downloads
        assert d.url.startswith("https://github.com/") and d.extract_to
