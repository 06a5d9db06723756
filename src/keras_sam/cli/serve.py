"""`keras-sam serve`: the interactive page and its HTTP API."""

import socket
import threading

from keras_sam.cli.common import add_model_arguments
from keras_sam.cli.common import check_model_arguments
from keras_sam.cli.common import load_model
from keras_sam.cli.common import log
from keras_sam.cli.common import number

SERVE_EXTRA = 'pip install "keras-sam[serve]"'
# "Segment everything" defaults for the small bundled model: a coarser grid
# and lower thresholds than the official ones (as in the README).
BUNDLED_EVERYTHING = {
    "points_per_side": 16,
    "pred_iou_thresh": 0.6,
    "stability_score_thresh": 0.7,
}


def add_parser(sub) -> None:
    serve = sub.add_parser(
        "serve",
        help="a web page to click on pictures, and its HTTP API",
        description=(
            "Start a web app: a page where you upload a picture (or pick a "
            "bundled example) and click on it to see masks, and the HTTP "
            "API it uses (docs/serve.md; OpenAPI at /openapi.json). It "
            "listens on 127.0.0.1 unless --host says otherwise, and prints "
            "the address to open on stdout. Ctrl-C stops it."
        ),
    )
    model = serve.add_argument_group("model")
    add_model_arguments(model)
    net = serve.add_argument_group("server")
    net.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; "
        "0.0.0.0 lets every machine that reaches this one in)",
    )
    net.add_argument(
        "--port",
        type=number(int, 0, 65535),
        default=8000,
        help="port (default 8000; 0 picks a free one)",
    )
    limits = serve.add_argument_group("limits")
    limits.add_argument(
        "--max-upload-mb",
        type=number(float, 0.001),
        default=32.0,
        help="largest upload accepted, in MiB (default 32)",
    )
    limits.add_argument(
        "--max-pixels",
        type=number(int, 1),
        default=50_000_000,
        help="largest picture decoded, width x height (default 50 million)",
    )
    limits.add_argument(
        "--max-images",
        type=number(int, 1),
        default=16,
        help="encoded pictures kept in memory, least recently used "
        "evicted (default 16)",
    )


def run(parser, args) -> int:
    check_model_arguments(parser, args)
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise ImportError(
            f"keras-sam serve needs {e.name}; install it with {SERVE_EXTRA}"
        ) from e
    # Bound before the model loads, so that a taken port fails at once.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        sock.close()
        parser.error(
            f"--host/--port: cannot listen on {args.host}:{args.port} "
            f"({e.strerror or e})"
        )
    with sock:
        model = load_model(parser, args)
        from keras_sam.serve.app import create_app

        app = create_app(
            model,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            max_pixels=args.max_pixels,
            max_images=args.max_images,
            everything_options=(
                BUNDLED_EVERYTHING if args.preset == "sam_shapes" else None
            ),
        )
        # Requests wait for it (the model's lock); the address is usable
        # at once.
        warm_up = threading.Thread(
            target=app.state.segmenter.warm_up, daemon=True
        )
        warm_up.start()
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"http://{shown}:{port}/", flush=True)
        log(f"serving on http://{shown}:{port}/ (Ctrl-C stops)")
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:
            # uvicorn shuts down on Ctrl-C, then raises it again: for a
            # server that is the normal way to stop
            pass
        # A backend still tracing in a thread while Python exits aborts
        # the process: let the warm-up finish first.
        warm_up.join()
    log("stopped")
    return 0
