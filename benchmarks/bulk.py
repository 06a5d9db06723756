"""Bulk runs on Ray against the single-machine command: pictures per second
of `keras-sam auto` and of `keras-sam auto --ray` with 1 and 2 actors, on
the same generated pictures (`keras_sam.datasets.make_scene`) with the
bundled model. All in one process: the commands through
`keras_sam.cli.main`, the Ray cluster started once (not timed), so each
Ray figure includes its actors' start-up and model loading, as a real run
does. Checks that every run wrote the same JSON.

    python benchmarks/bulk.py --backend tensorflow --num-pictures 8
"""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common  # noqa: E402

TITLE = "Bulk runs on Ray (keras-sam auto --ray), sam_shapes"


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--num-pictures", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--points-per-side", type=int, default=8)
    p.add_argument("--pred-iou-thresh", type=float, default=0.6)
    p.add_argument("--stability-score-thresh", type=float, default=0.7)
    p.add_argument(
        "--actors",
        default="1,2",
        help="actor counts to run (comma-separated; '' for none)",
    )
    args = p.parse_args()
    _common.setup(args)
    from PIL import Image

    from keras_sam import bulk
    from keras_sam import cli
    from keras_sam.training.datasets import make_scene

    work = Path(tempfile.mkdtemp(prefix="bulk-bench-"))
    try:
        photos = work / "photos"
        photos.mkdir()
        for i in range(args.num_pictures):
            image, _ = make_scene(i, image_size=(args.size, args.size))
            Image.fromarray(image).save(photos / f"p{i:03d}.png")
        flags = [
            "--preset", "sam_shapes",
            "--points-per-side", str(args.points_per_side),
            "--pred-iou-thresh", str(args.pred_iou_thresh),
            "--stability-score-thresh", str(args.stability_score_thresh),
        ]  # fmt: skip
        cases = [("auto (one process)", [])] + [
            (f"auto --ray, {n} actor(s)", ["--ray", "--num-actors", n])
            for n in args.actors.split(",")
            if n
        ]
        ray_temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        bulk.connect(
            num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=ray_temp
        )
        rows, outputs, single = [], [], None
        for name, extra in cases:
            out = work / f"out{len(outputs)}"
            argv = ["auto", str(photos), "-o", str(out), *flags, *extra]
            start = time.perf_counter()
            if cli.main(argv) != 0:
                sys.exit(f"{name} failed")
            wall = time.perf_counter() - start
            print(f"{name}: {wall:.1f} s", file=sys.stderr, flush=True)
            outputs.append({f.name: f.read_bytes() for f in out.glob("*.json")})
            rate = args.num_pictures / wall
            single = single or rate
            rows.append(
                (name, f"{wall:.1f}", f"{rate:.3f}", f"{rate / single:.2f}x")
            )
        bulk.disconnect()
        shutil.rmtree(ray_temp, ignore_errors=True)
        if any(o != outputs[0] for o in outputs):
            sys.exit("the runs wrote different JSON files")
        text = _common.table(
            rows, ("command", "wall s", "pictures/s", "vs one process")
        )
        text += (
            f"\n\n{args.num_pictures} pictures {args.size}x{args.size}, "
            f"--points-per-side {args.points_per_side}, --pred-iou-thresh "
            f"{args.pred_iou_thresh:g}, --stability-score-thresh "
            f"{args.stability_score_thresh:g}; a local Ray cluster "
            f"of {os.cpu_count()} CPUs started beforehand (not timed); the "
            "Ray times include starting the actors and loading the model in "
            "each. Every run wrote the same JSON files."
        )
        _common.report(TITLE, text, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
