"""`keras_sam.convert.download`: cached, resumable, sha256-checked downloads.

A local `ThreadingHTTPServer` on 127.0.0.1 serves the files; its handler
supports `Range: bytes=N-` and can misbehave on purpose (truncate, corrupt,
stall, ignore ranges).
"""

import hashlib
import http.server
import re
import socket
import threading

import numpy as np
import pytest

from keras_sam.convert import download as dl

TIMEOUT_S = 10.0
DATA = np.random.default_rng(0).bytes(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


class ServerState:
    def __init__(self):
        self.files = {"/weights/sam_tiny.pth": DATA}
        self.requests = []  # (path, Range header or None)
        self.mode = "normal"  # normal | truncate | corrupt | stall
        self.support_range = True
        self.release = threading.Event()  # ends a stall


def make_handler(state: ServerState):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            range_header = self.headers.get("Range")
            state.requests.append((self.path, range_header))
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if match and state.support_range:
                start = int(match.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header(
                    "Content-Range",
                    f"bytes {start}-{len(data) - 1}/{len(data)}",
                )
            else:
                self.send_response(200)
            body = data[start:]
            if state.mode == "corrupt":
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                if state.mode == "truncate":
                    # Promise the whole body, send half, close.
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                if state.mode == "stall":
                    self.wfile.write(body[:1000])
                    self.wfile.flush()
                    state.release.wait(TIMEOUT_S)
                    return
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


@pytest.fixture
def server(monkeypatch):
    # Never route the local requests through a proxy from the environment.
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "*")
    state = ServerState()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), make_handler(state)
    )
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}
    )
    thread.start()
    host, port = httpd.server_address[:2]
    state.url = f"http://{host}:{port}/weights/sam_tiny.pth"
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(TIMEOUT_S)


def fetch(state, tmp_path, sha=SHA, **kwargs):
    kwargs.setdefault("progress", False)
    return dl.download(
        state.url, sha, cache_dir=tmp_path, timeout=TIMEOUT_S, **kwargs
    )


def cache_listing(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def test_fresh_download_then_cache_hit(server, tmp_path):
    path = fetch(server, tmp_path)
    assert path == tmp_path / "sam_tiny.pth"
    assert path.read_bytes() == DATA
    assert dl.sha256_file(path) == SHA
    assert cache_listing(tmp_path) == ["sam_tiny.pth"]
    assert server.requests == [("/weights/sam_tiny.pth", None)]

    assert fetch(server, tmp_path) == path
    assert len(server.requests) == 1  # no network on a verified cache hit


def test_cached_file_with_wrong_hash_is_replaced(server, tmp_path):
    (tmp_path / "sam_tiny.pth").write_bytes(b"stale")
    path = fetch(server, tmp_path)
    assert path.read_bytes() == DATA
    assert len(server.requests) == 1


def test_custom_filename_and_uppercase_sha(server, tmp_path):
    path = fetch(server, tmp_path, sha=SHA.upper(), filename="b.pth")
    assert path == tmp_path / "b.pth"
    assert path.read_bytes() == DATA


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(ValueError, match=f"expected {wrong}, got {SHA}"):
        fetch(server, tmp_path, sha=wrong)
    assert cache_listing(tmp_path) == []


def test_corrupted_bytes_are_not_kept(server, tmp_path):
    server.mode = "corrupt"
    with pytest.raises(ValueError, match="sha256 mismatch"):
        fetch(server, tmp_path)
    assert cache_listing(tmp_path) == []


def test_truncated_transfer_then_resume(server, tmp_path):
    server.mode = "truncate"
    with pytest.raises(ConnectionError, match=re.escape(server.url)):
        fetch(server, tmp_path)
    # Nothing that could pass for the full file; the partial is kept.
    assert cache_listing(tmp_path) == ["sam_tiny.pth.part"]
    part_size = (tmp_path / "sam_tiny.pth.part").stat().st_size
    assert part_size == len(DATA) // 2

    server.mode = "normal"
    path = fetch(server, tmp_path)
    assert server.requests[-1] == (
        "/weights/sam_tiny.pth",
        f"bytes={part_size}-",
    )
    assert path.read_bytes() == DATA
    assert cache_listing(tmp_path) == ["sam_tiny.pth"]


def test_resume_from_existing_part(server, tmp_path):
    (tmp_path / "sam_tiny.pth.part").write_bytes(DATA[:123_456])
    path = fetch(server, tmp_path)
    assert server.requests == [("/weights/sam_tiny.pth", "bytes=123456-")]
    assert path.read_bytes() == DATA
    assert cache_listing(tmp_path) == ["sam_tiny.pth"]


def test_resume_ignored_by_server_restarts(server, tmp_path):
    server.support_range = False  # answers 200 with the whole file
    (tmp_path / "sam_tiny.pth.part").write_bytes(DATA[:1000])
    path = fetch(server, tmp_path)
    assert server.requests == [("/weights/sam_tiny.pth", "bytes=1000-")]
    assert path.read_bytes() == DATA


def test_bad_part_is_discarded_and_download_retried(server, tmp_path):
    (tmp_path / "sam_tiny.pth.part").write_bytes(b"\0" * 1000)
    path = fetch(server, tmp_path)
    assert server.requests == [
        ("/weights/sam_tiny.pth", "bytes=1000-"),
        ("/weights/sam_tiny.pth", None),
    ]
    assert path.read_bytes() == DATA


def test_part_longer_than_file_restarts(server, tmp_path):
    (tmp_path / "sam_tiny.pth.part").write_bytes(DATA + b"extra")
    path = fetch(server, tmp_path)
    assert [r for _, r in server.requests] == [f"bytes={len(DATA) + 5}-", None]
    assert path.read_bytes() == DATA


def test_http_404(server, tmp_path):
    server.url = server.url.replace("sam_tiny", "missing")
    with pytest.raises(OSError, match="404") as info:
        fetch(server, tmp_path)
    assert server.url in str(info.value)
    assert not isinstance(info.value, ConnectionError)
    assert cache_listing(tmp_path) == []


def test_connection_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/sam.pth"
    with pytest.raises(ConnectionError, match=re.escape(url)):
        dl.download(url, SHA, cache_dir=tmp_path, timeout=TIMEOUT_S)


def test_stalled_transfer_times_out(server, tmp_path):
    server.mode = "stall"
    with pytest.raises(ConnectionError, match="broke off"):
        dl.download(
            server.url, SHA, cache_dir=tmp_path, progress=False, timeout=0.3
        )
    assert not (tmp_path / "sam_tiny.pth").exists()


def test_progress_bar(server, tmp_path, capsys):
    fetch(server, tmp_path, filename="a.pth", progress=True)
    err = capsys.readouterr().err
    assert err.startswith("\r[")
    assert err.rstrip().endswith("100%")
    assert "293.0 KiB / 293.0 KiB" in err
    fetch(server, tmp_path, filename="b.pth", progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sha256="abc"), "sha256"),
        (dict(url="ftp://127.0.0.1/sam.pth"), "url"),
        (dict(url="http://127.0.0.1:9/"), "filename"),
        (dict(filename="../escape.pth"), "filename"),
        (dict(filename=".."), "filename"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = dict(url="http://127.0.0.1:9/sam.pth", sha256=SHA)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        dl.download(
            args.pop("url"),
            args.pop("sha256"),
            cache_dir=tmp_path,
            timeout=TIMEOUT_S,
            **args,
        )


def test_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_SAM_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dl.default_cache_dir() == tmp_path / "home/.cache/keras-sam"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dl.default_cache_dir() == tmp_path / "xdg/keras-sam"
    monkeypatch.setenv("KERAS_SAM_CACHE", str(tmp_path / "explicit"))
    assert dl.default_cache_dir() == tmp_path / "explicit"


def test_download_uses_default_cache_dir(server, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_SAM_CACHE", str(tmp_path / "cache"))
    path = dl.download(server.url, SHA, progress=False, timeout=TIMEOUT_S)
    assert path == tmp_path / "cache" / "sam_tiny.pth"
    assert path.read_bytes() == DATA


def test_sha256_file(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(DATA)
    assert dl.sha256_file(path) == SHA


def test_sha256_prefix_as_in_official_file_names(server, tmp_path):
    path = fetch(server, tmp_path, sha=SHA[:6])
    assert dl.sha256_file(path) == SHA
    wrong = ("0" if SHA[0] != "0" else "1") + SHA[1:6]
    (tmp_path / "sam_tiny.pth").unlink()
    with pytest.raises(ValueError, match="sha256 mismatch"):
        fetch(server, tmp_path, sha=wrong)
    assert cache_listing(tmp_path) == []
