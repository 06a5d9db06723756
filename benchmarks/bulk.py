"""Bulk runs on Ray against the single-machine command: pictures per second
of `keras-sam auto` and of `keras-sam auto --ray` with 1 and 2 actors, on
the same generated pictures (`keras_sam.datasets.make_scene`) with the
bundled model, each command end to end in its own process (start-up and
model loading included), and the Ray job alone (the summary's figure,
without starting the cluster). Checks that every run wrote the same JSON.

    python benchmarks/bulk.py --backend tensorflow --num-pictures 8
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _common

TITLE = "Bulk runs on Ray (keras-sam auto --ray), sam_shapes"
SCRIPT = str(Path(sys.executable).with_name("keras-sam"))


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--num-pictures", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--points-per-side", type=int, default=8)
    p.add_argument("--actors", default="1,2", help="actor counts to run")
    args = p.parse_args()
    _common.setup_env_only(args)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from PIL import Image

    from keras_sam.training.datasets import make_scene

    work = Path(tempfile.mkdtemp(prefix="bulk-bench-"))
    try:
        photos = work / "photos"
        photos.mkdir()
        for i in range(args.num_pictures):
            image, _ = make_scene(i, image_size=(args.size, args.size))
            Image.fromarray(image).save(photos / f"p{i:03d}.png")
        flags = [
            "--preset", "sam_shapes", "--points-per-side",
            str(args.points_per_side),
        ]  # fmt: skip
        rows, outputs = [], {}
        cases = [("auto (one process)", [])] + [
            (f"auto --ray, {n} actor(s)", ["--ray", "--num-actors", n])
            for n in args.actors.split(",")
        ]
        single = None
        for name, extra in cases:
            out = work / f"out{len(outputs)}"
            start = time.perf_counter()
            result = subprocess.run(
                [SCRIPT, "auto", str(photos), "-o", str(out), *flags, *extra],
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
            )
            wall = time.perf_counter() - start
            if result.returncode != 0:
                sys.exit(f"{name} failed:\n{result.stderr[-3000:]}")
            outputs[name] = {f.name: f.read_bytes() for f in out.glob("*.json")}
            job = re.search(r"([\d.]+) s, ([\d.]+) pictures/s", result.stderr)
            rate = args.num_pictures / wall
            print(f"{name}: {wall:.1f} s", file=sys.stderr, flush=True)
            single = single or rate
            rows.append(
                (
                    name,
                    f"{wall:.1f}",
                    f"{rate:.3f}",
                    f"{rate / single:.2f}x",
                    f"{job.group(1)} s, {job.group(2)}" if job else "-",
                )
            )
        first = next(iter(outputs.values()))
        same = all(o == first for o in outputs.values())
        if not same:
            sys.exit("the runs wrote different JSON files")
        text = _common.table(
            rows,
            (
                "command",
                "wall s",
                "pictures/s",
                "vs one process",
                "Ray job alone (s, pictures/s)",
            ),
        )
        text += (
            f"\n\n{args.num_pictures} pictures {args.size}x{args.size}, "
            f"--points-per-side {args.points_per_side}; every run wrote the "
            "same JSON files."
        )
        _common.report(TITLE, text, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
