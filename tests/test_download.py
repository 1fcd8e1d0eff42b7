"""Downloads against a local HTTP server whose misbehaviour each test controls."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import ssl
import subprocess
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vididi.data import download as download_module
from vididi.data.download import DatasetFile, DatasetSpec, download, fetch_dataset, load_registry, read_lock_entry
from vididi.utils import VididiError

BODY = random.Random(0).randbytes(100_000)
FAST = {"backoff": 0.0, "timeout": 5.0, "chunk": 4096}  # no sleeping between retries in tests


@dataclass
class Route:
    body: bytes
    content_type: str = "application/octet-stream"
    cut_first_after: int | None = None  # first request: close the connection after this many bytes
    cut_every_after: int | None = None  # every request: send at most this many bytes, then close
    ignore_range: bool = False  # answer 200 with the whole body even when a Range is asked for
    fail_first: int = 0  # answer 500 this many times first
    status: int = 200
    hits: int = 0


@dataclass
class ServerState:
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class Handler(BaseHTTPRequestHandler):
    state: ServerState

    def do_GET(self):  # noqa: N802 (http.server naming)
        state = self.server.state
        state.requests.append((self.path, self.headers.get("Range")))
        route = state.routes.get(self.path)
        if route is None:
            return self._simple(404, b"not found")
        route.hits += 1
        if route.hits <= route.fail_first:
            return self._simple(500, b"try later")
        if route.status != 200:
            return self._simple(route.status, route.body, route.content_type)
        start = 0
        asked = self.headers.get("Range")
        if asked and not route.ignore_range:
            start = int(asked.removeprefix("bytes=").split("-")[0])
            if start >= len(route.body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(route.body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        payload = route.body[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(len(payload)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(route.body) - 1}/{len(route.body)}")
        self.end_headers()
        limit = route.cut_every_after
        if route.cut_first_after is not None and route.hits == route.fail_first + 1:
            limit = route.cut_first_after
        # returning after a short write closes the connection (HTTP/1.0): the client sees a truncated body
        self.wfile.write(payload if limit is None else payload[:limit])

    def _simple(self, status: int, body: bytes, content_type: str = "text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield base, httpd.state
    httpd.shutdown()
    httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# download()


def test_full_download_verifies_and_leaves_no_part(server, tmp_path):
    base, state = server
    state.routes["/UCF101.rar"] = Route(BODY)
    dest = download(f"{base}/UCF101.rar", tmp_path / "dl" / "UCF101.rar", sha256=sha(BODY), size=len(BODY), **FAST)
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "dl" / "UCF101.rar.part").exists()
    assert state.requests == [("/UCF101.rar", None)]


def test_cut_connection_resumes_with_range(server, tmp_path):
    base, state = server
    state.routes["/a.zip"] = Route(BODY, cut_first_after=30_000)
    dest = download(f"{base}/a.zip", tmp_path / "a.zip", sha256=sha(BODY), **FAST)
    assert dest.read_bytes() == BODY
    assert state.requests == [("/a.zip", None), ("/a.zip", "bytes=30000-")]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    base, state = server
    state.routes["/a.zip"] = Route(BODY, cut_first_after=30_000, ignore_range=True)
    dest = download(f"{base}/a.zip", tmp_path / "a.zip", sha256=sha(BODY), **FAST)
    assert dest.read_bytes() == BODY  # not the first 30 kB followed by the whole body again
    assert state.requests == [("/a.zip", None), ("/a.zip", "bytes=30000-")]


def test_progress_resets_the_retry_budget(server, tmp_path):
    base, state = server
    state.routes["/big.tar"] = Route(BODY, cut_every_after=15_000)  # 7 requests, each a cut
    dest = download(f"{base}/big.tar", tmp_path / "big.tar", size=len(BODY), retries=1, **FAST)
    assert dest.read_bytes() == BODY
    assert [r for _, r in state.requests] == [None] + [f"bytes={k * 15_000}-" for k in range(1, 7)]


def test_checksum_mismatch_removes_only_the_part(server, tmp_path):
    base, state = server
    state.routes["/a.zip"] = Route(BODY)
    url = f"{base}/a.zip"
    with pytest.raises(VididiError) as err:
        download(url, tmp_path / "a.zip", sha256="0" * 64, **FAST)
    message = str(err.value)
    assert url in message and "sha256 mismatch" in message and sha(BODY) in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(VididiError, match="size mismatch|server reports 100000 bytes, expected 99999"):
        download(url, tmp_path / "a.zip", size=len(BODY) - 1, **FAST)
    assert not (tmp_path / "a.zip").exists()


def test_5xx_is_retried_then_succeeds(server, tmp_path):
    base, state = server
    state.routes["/a.zip"] = Route(BODY, fail_first=2)
    dest = download(f"{base}/a.zip", tmp_path / "a.zip", sha256=sha(BODY), **FAST)
    assert dest.read_bytes() == BODY
    assert len(state.requests) == 3


def test_persistent_5xx_gives_up_after_the_retries(server, tmp_path):
    base, state = server
    state.routes["/a.zip"] = Route(BODY, fail_first=100)
    with pytest.raises(VididiError, match=r"a.zip failed: HTTP 500.*3 attempts"):
        download(f"{base}/a.zip", tmp_path / "a.zip", retries=2, **FAST)
    assert len(state.requests) == 3


def test_404_fails_at_once(server, tmp_path):
    base, state = server
    url = f"{base}/gone.rar"
    with pytest.raises(VididiError, match=f"{url} failed: HTTP 404"):
        download(url, tmp_path / "gone.rar", **FAST)
    assert len(state.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_is_retried_then_reported(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(VididiError, match=r"127.0.0.1:\d+/x.zip failed: .*2 attempts"):
        download(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", retries=1, **FAST)


def test_html_page_instead_of_archive(server, tmp_path):
    base, state = server
    page = b"<!DOCTYPE html><html><body>Please log in</body></html>"
    state.routes["/typed.rar"] = Route(page, content_type="text/html; charset=utf-8")
    state.routes["/untyped.rar"] = Route(b"\n  " + page, content_type="application/octet-stream")
    for name in ("typed.rar", "untyped.rar"):
        with pytest.raises(VididiError, match=f"{base}/{name} failed: the server sent an HTML page"):
            download(f"{base}/{name}", tmp_path / name, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_verified_file_is_not_downloaded_again(server, tmp_path):
    base, state = server
    state.routes["/a.zip"] = Route(BODY)
    dest = tmp_path / "a.zip"
    download(f"{base}/a.zip", dest, sha256=sha(BODY), **FAST)
    download(f"{base}/a.zip", dest, sha256=sha(BODY), **FAST)
    assert len(state.requests) == 1
    dest.write_bytes(BODY[:-1] + b"!")  # damaged copy: fetched again
    download(f"{base}/a.zip", dest, sha256=sha(BODY), **FAST)
    assert dest.read_bytes() == BODY and len(state.requests) == 2


def test_complete_part_from_an_earlier_run_is_verified_without_a_body(server, tmp_path):
    base, state = server
    state.routes["/a.zip"] = Route(BODY)
    (tmp_path / "a.zip.part").write_bytes(BODY)
    dest = download(f"{base}/a.zip", tmp_path / "a.zip", sha256=sha(BODY), **FAST)
    assert dest.read_bytes() == BODY
    assert state.requests == [("/a.zip", f"bytes={len(BODY)}-")]  # answered 416 */100000: already complete


def test_lock_file_records_then_enforces(server, tmp_path):
    base, state = server
    url = f"{base}/hmdb51_org.rar"
    state.routes["/hmdb51_org.rar"] = Route(BODY)
    lock = tmp_path / "downloads.lock.json"
    first = download(url, tmp_path / "one" / "hmdb51_org.rar", lock_file=lock, **FAST)
    recorded = json.loads(lock.read_text())["files"][url]
    assert recorded == {"sha256": hashlib.sha256(BODY).hexdigest(), "size": 100_000, "file": "hmdb51_org.rar"}
    assert read_lock_entry(lock, url) == recorded

    state.routes["/hmdb51_org.rar"] = Route(BODY[::-1])  # upstream silently changed the file
    with pytest.raises(VididiError, match=f"{url} failed: sha256 mismatch"):
        download(url, tmp_path / "two" / "hmdb51_org.rar", lock_file=lock, **FAST)
    assert not (tmp_path / "two" / "hmdb51_org.rar").exists()
    assert first.read_bytes() == BODY  # the verified copy is untouched
    assert json.loads(lock.read_text())["files"][url] == recorded  # the record is not overwritten
    requests_before = len(state.requests)
    download(url, first, lock_file=lock, **FAST)  # verifies against the record, no network
    assert len(state.requests) == requests_before


# ---------------------------------------------------------------------------------------------------------
# registry and whole-dataset fetch


def test_shipped_registry_loads_and_names_every_dataset():
    registry = load_registry()
    assert set(registry) == {"ucf101", "hmdb51", "kinetics400", "thumos14"}
    ucf = registry["ucf101"]
    assert [f.name for f in ucf.files] == ["UCF101.rar", "UCF101TrainTestSplits-RecognitionTask.zip"]
    assert ucf.files[0].archive == "rar" and ucf.files[0].sha256 is None
    assert registry["hmdb51"].files[0].inner_archives == "*.rar"
    assert registry["thumos14"].files[-1].password_protected
    for spec in registry.values():
        for file in spec.files:
            assert all(url.startswith(("http://", "https://")) for url in file.urls)


def test_bad_registry_is_reported(tmp_path):
    bad = tmp_path / "registry.yaml"
    bad.write_text("datasets:\n  x:\n    homepage: h\n    layout: folder\n    root: .\n"
                   "    files:\n      - {name: a.zip, urls: [http://h/a.zip], sha256: ABC}\n")  # fmt: skip
    with pytest.raises(VididiError, match="sha256 must be 64 lowercase hex digits"):
        load_registry(bad)


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar_gz_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_fetch_dataset_with_mirrors_url_lists_and_plain_files(server, tmp_path):
    base, state = server
    splits = _zip_bytes({"ucfTrainTestlist/classInd.txt": b"1 Archery\n"})
    state.routes["/mirror/splits.zip"] = Route(splits)
    state.routes["/part_0.tar.gz"] = Route(_tar_gz_bytes({"a_000001_000011.mp4": b"clip a"}))
    state.routes["/part_1.tar.gz"] = Route(_tar_gz_bytes({"b_000002_000012.mp4": b"clip b"}))
    state.routes["/k400_train_path.txt"] = Route(f"{base}/part_0.tar.gz\n{base}/part_1.tar.gz\n".encode())
    state.routes["/train.csv"] = Route(b"label,youtube_id,time_start,time_end,split\n")
    registry = {
        "toy": DatasetSpec(
            name="toy", homepage="http://example", layout="folder", root="data",
            files=(
                DatasetFile("splits.zip", (f"{base}/gone/splits.zip", f"{base}/mirror/splits.zip"),
                            len(splits), sha(splits), "zip", "data"),
                DatasetFile("k400_train_path.txt", (f"{base}/k400_train_path.txt",), None, None, "tar",
                            "data/train", url_list=True),
                DatasetFile("train.csv", (f"{base}/train.csv",), None, None, None, "data/annotations"),
                DatasetFile("extra.zip", (f"{base}/never",), None, None, "zip", "data", optional=True),
            ),
        )
    }  # fmt: skip
    lock = tmp_path / "lock.json"
    root = fetch_dataset("toy", tmp_path / "downloads", tmp_path / "raw", lock_file=lock, registry=registry, **FAST)
    assert root == tmp_path / "raw" / "data"
    assert (root / "ucfTrainTestlist/classInd.txt").read_bytes() == b"1 Archery\n"
    assert (root / "train/a_000001_000011.mp4").read_bytes() == b"clip a"
    assert (root / "train/b_000002_000012.mp4").read_bytes() == b"clip b"
    assert (root / "annotations/train.csv").read_bytes().startswith(b"label,")
    assert (tmp_path / "downloads/k400_train_path/part_1.tar.gz").is_file()
    assert ("/never", None) not in state.requests  # optional files are skipped
    recorded = json.loads(lock.read_text())["files"]
    assert set(recorded) == {"toy/k400_train_path.txt", "toy/k400_train_path/part_0.tar.gz",
                             "toy/k400_train_path/part_1.tar.gz", "toy/train.csv"}  # fmt: skip
    # a second run neither downloads (files verify) nor extracts (markers) anything
    count = len(state.requests)
    fetch_dataset("toy", tmp_path / "downloads", tmp_path / "raw", lock_file=lock, registry=registry, **FAST)
    assert len(state.requests) == count


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI needed to make a self-signed certificate")
def test_untrusted_tls_certificate_stops_without_retrying(tmp_path, monkeypatch):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = ServerState(routes={"/a.zip": Route(BODY)})
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{httpd.server_address[1]}/a.zip"
        sleeps: list[float] = []
        monkeypatch.setattr(download_module.time, "sleep", sleeps.append)  # every retry sleeps first
        with pytest.raises(VididiError, match=f"{url} failed: TLS certificate not trusted"):
            download(url, tmp_path / "a.zip", **FAST)
        assert sleeps == []
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not (tmp_path / "a.zip").exists()
