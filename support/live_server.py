"""A real uvicorn server on 127.0.0.1 in a thread, for tests and
benchmarks."""

import contextlib
import socket
import threading
import time


@contextlib.contextmanager
def serve_in_thread(app, *, timeout: float = 30.0):
    """Serve ASGI `app` on a free port of 127.0.0.1; yields its base URL
    (`http://127.0.0.1:PORT`), stops the server on exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"the test server did not start in {timeout} s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
