"""Click-to-mask latency of `keras-sam serve`, measured in the browser.

A real uvicorn server on 127.0.0.1 (in this process) and Debian's Chromium
driven by Playwright: the picture is uploaded through the page, then each
timed click is a fresh single click (the page is cleared first) at a random
point inside the picture. The page records, for each click, the time from
the mouse button's release to the mask being painted (request, server-side
decoding and upscaling, RLE, JSON, decoding the RLE in JavaScript and
drawing it); the table gives the median over `--num-iters` clicks after
`--num-warmup` untimed ones (which trace the decoder). For comparison, the
same prompts straight through the HTTP API (no browser).

Presets: `sam_shapes` (the bundled model, its 256x256 held-out picture) or
`sam_vit_b` (random weights: the speed is the same as with the official
ones; a 768x1024 picture).

Run from the repository root:
    python benchmarks/serve.py --backend tensorflow --threads 2
"""

import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common  # noqa: E402

SIZES = {"sam_shapes": (256, 256), "sam_vit_b": (768, 1024)}


def _measure(args) -> dict:
    import io

    import httpx
    import numpy as np
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from keras_sam.models.sam import SAM
    from keras_sam.serve.app import create_app
    from keras_sam.training.datasets.shapes import make_scene
    from support.live_server import serve_in_thread

    h, w = SIZES[args.preset]
    model = SAM.from_preset(args.preset, weights=args.preset == "sam_shapes")
    image, _ = make_scene((10_000_000, 7, 0, 1), image_size=(h, w))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    folder = tempfile.mkdtemp(prefix="keras_sam_serve_bench_")
    picture = os.path.join(folder, f"{args.preset}.png")
    with open(picture, "wb") as f:
        f.write(buffer.getvalue())
    rng = np.random.default_rng(0)
    total = args.num_warmup + args.num_iters
    points = rng.uniform((0.05 * w, 0.05 * h), (0.95 * w, 0.95 * h), (total, 2))
    chromium = os.environ.get("KERAS_SAM_CHROMIUM") or shutil.which("chromium")
    launch_args = ["--no-sandbox"] if os.geteuid() == 0 else []
    try:
        with serve_in_thread(create_app(model)) as url, sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium, args=launch_args
            )
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(url + "/")
            page.wait_for_selector("#examples button")
            start = time.perf_counter()
            page.set_input_files("#file", picture)
            page.wait_for_function(
                "() => document.querySelector('#status').textContent"
                ".startsWith('Ready')",
                timeout=600_000,
            )
            encode_s = time.perf_counter() - start
            page.uncheck("#hover")
            box = page.locator("#prompt-layer").bounding_box()
            for x, y in points:
                if page.evaluate("() => kerasSam.state.actions.length"):
                    page.click("#clear")
                page.mouse.click(
                    box["x"] + (x + 0.5) / w * box["width"],
                    box["y"] + (y + 0.5) / h * box["height"],
                )
                page.wait_for_function(
                    "() => kerasSam.state.answered === kerasSam.state.seq"
                    " && kerasSam.state.candidates.length",
                    timeout=600_000,
                )
            timings = page.evaluate("() => kerasSam.timings")
            image_id = page.evaluate("() => kerasSam.state.imageId")
            browser.close()
            api = []
            with httpx.Client(base_url=url, timeout=600) as c:
                for x, y in points:
                    t = time.perf_counter()
                    r = c.post(
                        f"/api/images/{image_id}/predict",
                        json={"points": [[x, y]], "labels": [1]},
                    )
                    r.raise_for_status()
                    api.append(1000 * (time.perf_counter() - t))
    finally:
        shutil.rmtree(folder)
    timed = timings[args.num_warmup :]
    return {
        "clicks": len(timed),
        "median": statistics.median(timed),
        "p90": float(np.percentile(timed, 90)),
        "api": statistics.median(api[args.num_warmup :]),
        "encode_s": encode_s,
        "size": f"{w}x{h}",
    }


def main(argv=None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.set_defaults(num_iters=20, num_warmup=3)
    p.add_argument("--preset", choices=sorted(SIZES), default="sam_shapes")
    args = p.parse_args(argv)
    _common.setup(args)
    load = os.getloadavg()[0]  # the machine is shared: say how busy it was
    r = _measure(args)
    text = _common.table(
        [
            (
                args.preset,
                r["size"],
                str(r["clicks"]),
                f"{r['median']:.1f} ms",
                f"{r['p90']:.1f} ms",
                f"{r['api']:.1f} ms",
                f"{r['encode_s']:.1f} s",
                f"{load:.1f}",
            )
        ],
        (
            "model",
            "picture",
            "clicks",
            "click-to-mask median (browser)",
            "p90",
            "API round trip median",
            "upload + encode (first, with tracing)",
            "load average at start",
        ),
    )
    title = f"keras-sam serve: click-to-mask latency ({args.preset})"
    _common.report(title, text, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
