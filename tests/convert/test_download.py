"""`keras_sam.convert.download`: cached, locked, verified downloads.

A local `ThreadingHTTPServer` on 127.0.0.1 (a free port) serves the files
and counts the requests; its handler supports `Range: bytes=N-` and can
misbehave on purpose (truncate, corrupt, stall, trickle, never end). Other
processes download with `download.py` loaded by path (standard library
only, no Keras import).
"""

import fcntl
import hashlib
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from keras_sam.convert import download as dl
from keras_sam.models.presets import PRESETS

TIMEOUT_S = 10.0
DATA = np.random.default_rng(0).bytes(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
HINT = "`--checkpoint PATH` or `SAM.from_checkpoint(PATH)`"

# Another process's `download` call; prints "started" first, the path last.
SCRIPT = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("dl", sys.argv[1])
dl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dl)
print("started", flush=True)
path = dl.download(
    sys.argv[2], sys.argv[3], cache_dir=sys.argv[4], progress=True,
    timeout=10, deadline=30,
)
print(path, flush=True)
"""


class ServerState:
    def __init__(self):
        self.files = {"/weights/sam_tiny.pth": DATA}
        self.requests = []  # (path, Range header or None)
        # normal | truncate | corrupt | stall | gate | slow | trickle |
        # endless | long
        self.mode = "normal"
        self.support_range = True
        self.release = threading.Event()  # ends stalls, gates, trickles


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
            if state.mode not in ("endless", "long"):
                # Otherwise the body ends when the connection closes.
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.send_body(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def send_body(self, body):
            mode = state.mode
            if mode == "truncate":  # promise the whole body, send half
                self.wfile.write(body[: len(body) // 2])
            elif mode == "stall":
                self.wfile.write(body[:1000])
                state.release.wait(TIMEOUT_S)
            elif mode == "gate":  # half, then the rest once released
                self.wfile.write(body[: len(body) // 2])
                state.release.wait(TIMEOUT_S)
                self.wfile.write(body[len(body) // 2 :])
            elif mode in ("slow", "trickle"):
                # trickle: 1 byte a second, and (to bound the test) only 8
                step, delay = (10_000, 0.05) if mode == "slow" else (1, 1.0)
                end = len(body) if mode == "slow" else 8
                for i in range(0, end, step):
                    self.wfile.write(body[i : i + step])
                    if state.release.wait(delay):
                        return
            elif mode == "endless":  # bounded at 640 MiB all the same
                for _ in range(10_000):
                    if state.release.is_set():
                        return
                    self.wfile.write(bytes(65_536))
            elif mode == "long":
                self.wfile.write(body + bytes(1000))
            else:
                self.wfile.write(body)

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
    kwargs.setdefault("timeout", TIMEOUT_S)
    return dl.download(state.url, sha, cache_dir=tmp_path, **kwargs)


def cache_listing(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def parts(tmp_path) -> list:
    return sorted(tmp_path.glob("*.part"))


def wait_for(condition, seconds=TIMEOUT_S):
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.01)


def start_process(state, tmp_path):
    args = [sys.executable, "-c", SCRIPT, dl.__file__, state.url, SHA]
    return subprocess.Popen(
        [*args, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(process, kill=False):
    """(returncode, stdout, stderr), the process ended and its pipes
    closed."""
    if kill and process.poll() is None:
        process.kill()
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out.decode(), err.decode()


CACHED = ["sam_tiny.pth", "sam_tiny.pth.lock", "sam_tiny.pth.sha256"]


def test_fresh_download_then_cache_hit(server, tmp_path):
    path = fetch(server, tmp_path, size=len(DATA))
    assert path == tmp_path / "sam_tiny.pth"
    assert path.read_bytes() == DATA
    assert dl.sha256_file(path) == SHA
    assert cache_listing(tmp_path) == CACHED
    assert server.requests == [("/weights/sam_tiny.pth", None)]

    assert fetch(server, tmp_path) == path
    assert len(server.requests) == 1  # no network on a verified cache hit


def test_marker_spares_hashing_a_cached_file(server, tmp_path, monkeypatch):
    calls = []
    original = dl.sha256_file
    monkeypatch.setattr(
        dl, "sha256_file", lambda p: calls.append(p) or original(p)
    )
    final = tmp_path / "sam_tiny.pth"
    final.write_bytes(DATA)  # e.g. copied in, or cached before markers
    assert fetch(server, tmp_path) == final
    assert calls == [final]  # hashed in full once
    marker = (tmp_path / "sam_tiny.pth.sha256").read_text()
    assert marker.startswith(f"{SHA} {len(DATA)} ")
    assert fetch(server, tmp_path, size=len(DATA)) == final
    assert calls == [final]  # then the marker answers
    assert server.requests == []

    # Same size, other content: the marker no longer fits; downloaded anew.
    final.write_bytes(bytes([DATA[0] ^ 1]) + DATA[1:])
    assert fetch(server, tmp_path).read_bytes() == DATA
    assert len(calls) == 3 and len(server.requests) == 1
    assert fetch(server, tmp_path) == final
    assert len(calls) == 3


def test_cached_file_of_wrong_size_is_not_hashed(server, tmp_path, monkeypatch):
    calls = []
    original = dl.sha256_file
    monkeypatch.setattr(
        dl, "sha256_file", lambda p: calls.append(p) or original(p)
    )
    (tmp_path / "sam_tiny.pth").write_bytes(b"stale")
    path = fetch(server, tmp_path, size=len(DATA))
    assert path.read_bytes() == DATA
    assert len(server.requests) == 1
    assert len(calls) == 1  # only the new download's verification


def test_cached_file_with_wrong_hash_is_replaced(server, tmp_path):
    (tmp_path / "sam_tiny.pth").write_bytes(b"stale")
    path = fetch(server, tmp_path)
    assert path.read_bytes() == DATA
    assert len(server.requests) == 1


def test_custom_filename_and_uppercase_sha(server, tmp_path):
    path = fetch(server, tmp_path, sha=SHA.upper(), filename="b.pth")
    assert path == tmp_path / "b.pth"
    assert path.read_bytes() == DATA


def test_wrong_full_digest_leaves_no_file(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(dl.DownloadError, match=f"expected {wrong}, got {SHA}"):
        fetch(server, tmp_path, sha=wrong)
    assert cache_listing(tmp_path) == ["sam_tiny.pth.lock"]


def test_corrupted_bytes_are_not_kept(server, tmp_path):
    server.mode = "corrupt"
    with pytest.raises(dl.DownloadError, match="sha256 mismatch"):
        fetch(server, tmp_path)
    assert cache_listing(tmp_path) == ["sam_tiny.pth.lock"]


def test_digest_is_of_the_file_on_disk(server, tmp_path, monkeypatch):
    original = dl._transfer

    def transfer_then_corrupt(url, part, **kwargs):
        resumed = original(url, part, **kwargs)
        with open(part, "r+b") as f:  # as a bad disk or a meddler would
            f.seek(1000)
            f.write(bytes([DATA[1000] ^ 1]))
        return resumed

    monkeypatch.setattr(dl, "_transfer", transfer_then_corrupt)
    with pytest.raises(dl.DownloadError, match=f"expected {SHA}"):
        fetch(server, tmp_path, size=len(DATA))
    assert cache_listing(tmp_path) == ["sam_tiny.pth.lock"]


def test_truncated_transfer_then_resume(server, tmp_path):
    server.mode = "truncate"
    with pytest.raises(dl.DownloadError, match=re.escape(server.url)):
        fetch(server, tmp_path)
    # Nothing that could pass for the full file; the partial is kept.
    (part,) = parts(tmp_path)
    assert re.fullmatch(rf"sam_tiny\.pth\.{os.getpid()}\.\w+\.part", part.name)
    assert part.stat().st_size == len(DATA) // 2

    server.mode = "normal"
    path = fetch(server, tmp_path)
    assert server.requests[-1] == (
        "/weights/sam_tiny.pth",
        f"bytes={len(DATA) // 2}-",
    )
    assert path.read_bytes() == DATA
    assert cache_listing(tmp_path) == CACHED


def test_leftover_parts_largest_resumed_others_removed(server, tmp_path):
    (tmp_path / "sam_tiny.pth.4242.abcd1234.part").write_bytes(DATA[:1000])
    (tmp_path / "sam_tiny.pth.4343.x_y9.part").write_bytes(DATA[:123_456])
    (tmp_path / "sam_tiny.pth.part").write_bytes(DATA[:5])  # older versions
    other = tmp_path / "other.pth.4242.abcd1234.part"
    other.write_bytes(b"another file's")
    path = fetch(server, tmp_path)
    assert server.requests == [("/weights/sam_tiny.pth", "bytes=123456-")]
    assert path.read_bytes() == DATA
    assert cache_listing(tmp_path) == sorted([*CACHED, other.name])


def test_without_flock_only_old_parts_are_leftovers(
    server, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "fcntl", None)  # as on Windows
    young = tmp_path / "sam_tiny.pth.4242.abcd1234.part"
    young.write_bytes(DATA[:2000])  # another process may be writing it
    old = tmp_path / "sam_tiny.pth.4343.abcd1234.part"
    old.write_bytes(DATA[:1000])
    past = time.time() - 120
    os.utime(old, (past, past))
    path = fetch(server, tmp_path, deadline=60)
    assert server.requests == [("/weights/sam_tiny.pth", "bytes=1000-")]
    assert path.read_bytes() == DATA
    assert cache_listing(tmp_path) == sorted(
        ["sam_tiny.pth", "sam_tiny.pth.sha256", young.name]
    )


def test_complete_leftover_is_verified_without_network(server, tmp_path):
    (tmp_path / "sam_tiny.pth.1.a.part").write_bytes(DATA)
    path = fetch(server, tmp_path, size=len(DATA))
    assert server.requests == []
    assert path.read_bytes() == DATA
    assert cache_listing(tmp_path) == CACHED


def test_complete_but_bad_leftover_is_downloaded_anew(server, tmp_path):
    (tmp_path / "sam_tiny.pth.1.a.part").write_bytes(bytes(len(DATA)))
    path = fetch(server, tmp_path, size=len(DATA))
    assert server.requests == [("/weights/sam_tiny.pth", None)]
    assert path.read_bytes() == DATA
    assert cache_listing(tmp_path) == CACHED


def test_resume_ignored_by_server_restarts(server, tmp_path):
    server.support_range = False  # answers 200 with the whole file
    (tmp_path / "sam_tiny.pth.1.a.part").write_bytes(DATA[:1000])
    path = fetch(server, tmp_path)
    assert server.requests == [("/weights/sam_tiny.pth", "bytes=1000-")]
    assert path.read_bytes() == DATA


def test_bad_part_is_discarded_and_download_retried(server, tmp_path):
    (tmp_path / "sam_tiny.pth.1.a.part").write_bytes(b"\0" * 1000)
    path = fetch(server, tmp_path)
    assert server.requests == [
        ("/weights/sam_tiny.pth", "bytes=1000-"),
        ("/weights/sam_tiny.pth", None),
    ]
    assert path.read_bytes() == DATA
    assert parts(tmp_path) == []


def test_part_longer_than_file_restarts(server, tmp_path):
    (tmp_path / "sam_tiny.pth.1.a.part").write_bytes(DATA + b"extra")
    path = fetch(server, tmp_path)
    assert [r for _, r in server.requests] == [f"bytes={len(DATA) + 5}-", None]
    assert path.read_bytes() == DATA


def test_part_longer_than_size_is_dropped(server, tmp_path):
    (tmp_path / "sam_tiny.pth.1.a.part").write_bytes(DATA + b"extra")
    path = fetch(server, tmp_path, size=len(DATA))
    assert server.requests == [("/weights/sam_tiny.pth", None)]
    assert path.read_bytes() == DATA


@pytest.mark.parametrize("num_processes", [2, 4])
def test_concurrent_processes_download_once(server, tmp_path, num_processes):
    server.mode = "gate"  # the first download pauses halfway
    processes = [start_process(server, tmp_path) for _ in range(num_processes)]
    try:
        for process in processes:
            assert process.stdout.readline() == b"started\n"
        wait_for(lambda: server.requests)
        time.sleep(0.5)  # the others reach the lock meanwhile
        server.release.set()
        results = [finish(process) for process in processes]
    finally:
        for process in processes:
            finish(process, kill=True)
    for returncode, _, err in results:
        assert returncode == 0, err
    final = tmp_path / "sam_tiny.pth"
    assert {out.split()[-1] for _, out, _ in results} == {str(final)}
    assert final.read_bytes() == DATA
    assert server.requests == [("/weights/sam_tiny.pth", None)]
    waited = sum("Waiting for another process" in err for *_, err in results)
    assert waited >= 1
    assert cache_listing(tmp_path) == CACHED


def test_killed_download_is_resumed_by_the_next_run(server, tmp_path):
    server.mode = "slow"  # 10 kB every 50 ms
    process = start_process(server, tmp_path)
    try:
        wait_for(lambda: any(p.stat().st_size for p in parts(tmp_path)))
        os.kill(process.pid, signal.SIGKILL)
        returncode, _, _ = finish(process)
    finally:
        finish(process, kill=True)
    assert returncode == -signal.SIGKILL
    (part,) = parts(tmp_path)
    assert f".{process.pid}." in part.name
    done = part.stat().st_size
    assert 0 < done < len(DATA)

    server.mode = "normal"
    path = fetch(server, tmp_path, size=len(DATA))
    assert server.requests[-1] == ("/weights/sam_tiny.pth", f"bytes={done}-")
    assert path.read_bytes() == DATA
    assert cache_listing(tmp_path) == CACHED


def test_trickling_server_meets_the_deadline(server, tmp_path):
    server.mode = "trickle"  # 1 byte per second
    start = time.monotonic()
    with pytest.raises(dl.DownloadError) as info:
        fetch(server, tmp_path, deadline=2, timeout=5)
    assert time.monotonic() - start < 4
    message = str(info.value)
    assert "within the deadline of 2 s" in message
    assert server.url in message and HINT in message
    assert "\n" not in message
    assert not (tmp_path / "sam_tiny.pth").exists()


def test_endless_body_stops_at_the_cap(server, tmp_path):
    server.mode = "endless"  # no Content-Length, never ends
    with pytest.raises(dl.DownloadError, match=r"more than 1048576 bytes"):
        fetch(server, tmp_path, max_bytes=1 << 20)
    assert cache_listing(tmp_path) == ["sam_tiny.pth.lock"]


def test_body_longer_than_size_is_refused(server, tmp_path):
    server.mode = "long"  # no Content-Length, 1000 bytes too many
    with pytest.raises(dl.DownloadError, match="the expected size"):
        fetch(server, tmp_path, size=len(DATA))
    assert cache_listing(tmp_path) == ["sam_tiny.pth.lock"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(size=len(DATA) - 1), f"announces {len(DATA)} bytes, expected"),
        (dict(max_bytes=len(DATA) - 1), "more than the cap"),
    ],
)
def test_announced_length_over_the_limit(server, tmp_path, kwargs, match):
    with pytest.raises(dl.DownloadError, match=match):
        fetch(server, tmp_path, **kwargs)
    assert cache_listing(tmp_path) == ["sam_tiny.pth.lock"]


def test_lock_held_elsewhere_bounds_the_wait(server, tmp_path):
    fd = os.open(tmp_path / "sam_tiny.pth.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(dl.DownloadError, match="another process"):
            fetch(server, tmp_path, deadline=0.3)
    finally:
        os.close(fd)
    assert server.requests == []


def test_http_404(server, tmp_path):
    server.url = server.url.replace("sam_tiny", "missing")
    with pytest.raises(dl.DownloadError, match="HTTP 404") as info:
        fetch(server, tmp_path)
    assert server.url in str(info.value) and HINT in str(info.value)
    assert cache_listing(tmp_path) == ["missing.pth.lock"]


def test_offline_one_sentence_with_a_local_file_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/sam.pth"
    with pytest.raises(ValueError) as info:
        dl.download(url, SHA, cache_dir=tmp_path, timeout=TIMEOUT_S)
    message = str(info.value)
    assert isinstance(info.value, dl.DownloadError)
    assert message == (
        f"Could not download {url} (Connection refused); download the file "
        f"yourself and pass it with {HINT}."
    )
    assert cache_listing(tmp_path) == ["sam.pth.lock"]


def test_stalled_transfer_times_out(server, tmp_path):
    server.mode = "stall"
    with pytest.raises(dl.DownloadError, match="broke off after 1000 bytes"):
        fetch(server, tmp_path, timeout=0.3)
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
        (dict(sha256=SHA[:6]), "sha256"),  # the 6 digits of official names
        (dict(sha256=SHA + "0"), "sha256"),
        (dict(url="ftp://127.0.0.1/sam.pth"), "url"),
        (dict(url="http://127.0.0.1:9/"), "filename"),
        (dict(filename="../escape.pth"), "filename"),
        (dict(filename=".."), "filename"),
        (dict(filename="sam.pth.part"), "filename"),
        (dict(filename="sam.pth.sha256"), "filename"),
        (dict(size=0), "size"),
        (dict(timeout=0), "timeout"),
        (dict(deadline=-1), "deadline"),
        (dict(max_bytes=0), "max_bytes"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = dict(url="http://127.0.0.1:9/sam.pth", sha256=SHA)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        dl.download(
            args.pop("url"), args.pop("sha256"), cache_dir=tmp_path, **args
        )
    assert cache_listing(tmp_path) == []


def test_presets_carry_full_digests():
    official = {k: v for k, v in PRESETS.items() if "url" in v}
    assert official
    for preset in official.values():
        assert re.fullmatch(r"[0-9a-f]{64}", preset["sha256"])
        assert preset["size"] is None or preset["size"] > 0
        assert "sha256_prefix" not in preset


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


def test_unwritable_cache_folder(server, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(dl.DownloadError, match="KERAS_SAM_CACHE"):
        fetch(server, blocker / "cache")


def test_sha256_file(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(DATA)
    assert dl.sha256_file(path) == SHA
