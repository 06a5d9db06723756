"""`keras-sam serve` in a subprocess: it prints the address, serves the
page and the API on 127.0.0.1, stops on Ctrl-C; usage errors are one
line."""

import json
import select
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.cli.helpers import environment
from tests.cli.helpers import preexec

pytestmark = pytest.mark.integration

MAIN = "import sys; from keras_sam.cli import main; sys.exit(main())"


def serve(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", MAIN, "serve", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=environment({"KERAS_BACKEND": "tensorflow"}),
        preexec_fn=preexec(),
    )


def first_line(process, timeout: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"no address on stdout in {timeout} s: {err[-2000:]}")
    return process.stdout.readline().strip()


def test_serves_on_localhost_and_stops_on_ctrl_c():
    process = serve("--preset", "sam_shapes", "--port", 0)
    try:
        url = first_line(process, 120)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        with httpx.Client(base_url=url, timeout=60) as c:
            assert "keras-sam" in c.get("/").text
            png = c.get("/api/examples/shapes-1.png").content
            r = c.post("/api/images", files={"file": ("x.png", png)})
            assert r.status_code == 200, r.text
            image_id = r.json()["image_id"]
            r = c.post(
                f"/api/images/{image_id}/predict",
                json={"points": [[128, 128]], "labels": [1]},
            )
            assert r.status_code == 200 and len(r.json()["masks"]) == 3
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
    assert process.returncode == 0, err


def test_a_taken_port_is_a_usage_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        process = serve("--preset", "sam_shapes", "--port", port)
        _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("keras-sam: error: --host/--port"), err
    assert str(port) in lines[-1] and "Traceback" not in err
    # refused before the model loads
    assert "loading model" not in err, json.dumps(time.monotonic() - start)


def test_model_flags_are_required():
    process = serve("--port", "0")
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "--checkpoint PATH or --preset NAME" in err
