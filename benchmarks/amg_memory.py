"""Automatic mask generation of one image: peak memory and time, ours vs
the official `SamAutomaticMaskGenerator`, each in a fresh subprocess.

Default case: a 1500x2250 image, the default 32x32 point grid and thresholds,
ViT-B prompt encoder and decoder with random seeded weights (converted from
the official modules), and a tiny image encoder with the ViT-B input and
output sizes (the encoder's cost is not what this measures). Peak memory is
the process's resident set size sampled every 2 ms during `generate`, minus
its value before the first `generate` (ours runs one small warm-up call to
compile first, and what that leaves allocated counts); both processes load
all frameworks the same way.

Run from the repository root:
    python benchmarks/amg_memory.py --backend jax --threads 2
"""

import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common  # noqa: E402
from benchmarks.predictor import DECODER  # noqa: E402
from benchmarks.predictor import PROMPT  # noqa: E402
from benchmarks.predictor import TINY_ENCODER  # noqa: E402


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure(fn, base=None):
    """`(result, seconds, peak RSS - base)`; `base` defaults to the RSS just
    before `fn` runs."""
    peak = [_rss_bytes()]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    if base is None:
        base = _rss_bytes()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    return result, seconds, max(peak[0], _rss_bytes()) - base


def _child(system: str, height: int, width: int, settings: dict) -> dict:
    import numpy as np

    import keras_sam
    from support.fixtures import smooth_image as _image
    from support.reference import official

    image = _image((height, width, 3), seed=0)
    ref_model = official.make_sam(
        TINY_ENCODER, prompt_dim=256, decoder_mlp_dim=2048, decoder_heads=8
    )
    official.structure_weights_(ref_model)  # blob-like masks, not speckle
    if system == "ours":
        model = keras_sam.SAM.from_config_dicts(TINY_ENCODER, PROMPT, DECODER)
        keras_sam.load_official_weights(model, ref_model.state_dict())
        generator = keras_sam.SAMAutomaticMaskGenerator(model, **settings)
        # Compile outside the timing, but count what it leaves allocated
        # (compiled programs, allocator pools): memory from before it.
        base = _rss_bytes()
        generator.generate(image[:256, :256])
        records, seconds, peak = _measure(
            lambda: generator.generate(image), base
        )
    else:
        generator = official.make_generator(ref_model, **settings)
        records, seconds, peak = _measure(lambda: generator.generate(image))
    areas = sorted(int(r["area"]) for r in records)
    return {
        "records": len(records),
        "seconds": seconds,
        "peak_mb": peak / 2**20,
        "areas": areas[:5],
        "numpy": np.__version__,
    }


def main(argv=None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=1500)
    p.add_argument("--width", type=int, default=2250)
    p.add_argument("--child", choices=("ours", "official"))
    p.add_argument("--pred-iou-thresh", type=float, default=0.88)
    p.add_argument("--stability-score-thresh", type=float, default=0.95)
    args = p.parse_args(argv)
    settings = dict(
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
    )
    if args.child:
        _common.setup(args)
        result = _child(args.child, args.height, args.width, settings)
        print(json.dumps(result))
        return 0
    _common.setup_env_only(args)
    results = {}
    for system in ("ours", "official"):
        cmd = [sys.executable, __file__, "--child", system]
        cmd += ["--height", str(args.height), "--width", str(args.width)]
        cmd += ["--threads", str(args.threads)]
        cmd += ["--pred-iou-thresh", str(args.pred_iou_thresh)]
        cmd += ["--stability-score-thresh", str(args.stability_score_thresh)]
        if args.backend:
            cmd += ["--backend", args.backend]
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        out = subprocess.run(
            cmd, capture_output=True, text=True, env=env, check=False
        )
        if out.returncode:
            raise SystemExit(f"{system} failed:\n{out.stderr[-3000:]}")
        results[system] = json.loads(out.stdout.strip().splitlines()[-1])
    rows = [
        (
            name,
            r["records"],
            f"{r['seconds']:.1f} s",
            f"{r['peak_mb']:.0f} MB",
        )
        for name, r in (
            ("ours (SAMAutomaticMaskGenerator)", results["ours"]),
            ("official SamAutomaticMaskGenerator", results["official"]),
        )
    ]
    ratio = results["official"]["seconds"] / results["ours"]["seconds"]
    mem = results["official"]["peak_mb"] / max(results["ours"]["peak_mb"], 1)
    text = _common.table(rows, ("system", "records", "time", "peak memory"))
    text += (
        f"\n\nOfficial / ours: time {ratio:.2f}x, peak memory {mem:.1f}x. "
        "Same weights, image and settings; records are compared by the "
        "parity tests, not here."
    )
    title = (
        f"Automatic mask generation, {args.height}x{args.width}, 32x32 points"
    )
    _common.report(title, text, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
