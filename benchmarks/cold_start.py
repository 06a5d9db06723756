"""The first run: one-shot `keras-sam segment --checkpoint` against an
official script, each as a whole process, time and peak memory.

The case of a user with a photo and an official checkpoint: one process
that loads the model from the `.pth`, encodes one 1800x1200 photo, decodes
one click with three masks and writes them as PNGs. Both sides get the
same files, made in a temporary folder: a ViT-B checkpoint of the official
layout with random weights (`segment_anything`'s `sam_model_registry`,
seed 0) and a photo-like JPEG (smooth blobs plus noise). The official side
is a script written there at run time: `sam_model_registry["vit_b"](
checkpoint=...)`, `SamPredictor.set_image` (resizing with PIL, as
torchvision does, which has no CPU build here), `predict`, three PNGs.

Ours runs in two states of its cache folder (`$KERAS_SAM_CACHE`, a folder
of the temporary one): empty (the very first run: the checkpoint is read
with PyTorch and stored, programs are compiled and stored) and warm (the
runs after it). The systems run interleaved (ours empty, official, ours
warm, then again), so that other load on the machine affects each alike;
the load average is printed with the results. Peak memory is the maximum
resident set size of the process (`wait4`, as `/usr/bin/time -v` reports).

`--laps` instead times the steps inside one process, for `--backend`:
import, loading the checkpoint, the first and second `set_image`, the
first and second `predict` (ours with an empty and with a warm cache, and
the official script).

Run from the repository root:
    python benchmarks/cold_start.py --threads 2 --num-iters 3
    python benchmarks/cold_start.py --laps --backend jax --threads 2
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common  # noqa: E402

HEIGHT, WIDTH = 1200, 1800
POINT = (600, 500)
CHECKPOINT = "sam_vit_b.pth"
PHOTO = "photo.jpg"

# The official side, written to the temporary folder at run time.
OFFICIAL_SCRIPT = '''\
"""The official SAM, one click, three masks as PNGs (written by
benchmarks/cold_start.py).

Usage: official.py CHECKPOINT PHOTO OUT X Y [--laps]
"""
import time

start = time.perf_counter()
import json
import os
import sys
import types

import numpy as np
import torch
from PIL import Image


def _stub_torchvision():
    # No CPU build of torchvision here; segment_anything imports these names
    # at module level and the predictor's resize is done with PIL below.
    def missing(*args, **kwargs):
        raise RuntimeError("torchvision stub")

    names = {
        "torchvision": {},
        "torchvision.transforms": {},
        "torchvision.transforms.functional": {
            "resize": missing,
            "to_pil_image": missing,
        },
        "torchvision.ops": {},
        "torchvision.ops.boxes": {"batched_nms": missing, "box_area": missing},
    }
    for name, attrs in names.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


_stub_torchvision()
from segment_anything import SamPredictor  # noqa: E402
from segment_anything import sam_model_registry  # noqa: E402

laps = {"import": time.perf_counter() - start}
checkpoint, photo, out = sys.argv[1:4]
click = [[int(sys.argv[4]), int(sys.argv[5])]]


def lap(name, fn):
    t = time.perf_counter()
    result = fn()
    laps[name] = time.perf_counter() - t
    return result


sam = lap("load", lambda: sam_model_registry["vit_b"](checkpoint=checkpoint))
predictor = SamPredictor(sam)
image = np.array(Image.open(photo).convert("RGB"))


def set_image():
    # SamPredictor.set_image, with PIL's bilinear resize (what torchvision
    # does for a PIL image) instead of torchvision's.
    h, w = predictor.transform.get_preprocess_shape(
        image.shape[0], image.shape[1], predictor.transform.target_length
    )
    resized = Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR)
    tensor = torch.as_tensor(np.array(resized)).permute(2, 0, 1)
    predictor.set_torch_image(tensor.contiguous()[None], image.shape[:2])


def predict():
    return predictor.predict(
        point_coords=np.array(click),
        point_labels=np.array([1]),
        multimask_output=True,
    )


lap("set_image 1st", set_image)
if "--laps" in sys.argv:
    lap("set_image 2nd", set_image)
masks, scores, _ = lap("predict 1st", predict)
if "--laps" in sys.argv:
    lap("predict 2nd", predict)
os.makedirs(out, exist_ok=True)
for i, mask in enumerate(masks):
    Image.fromarray(mask.astype(np.uint8) * 255).save(
        os.path.join(out, f"mask_{i}.png")
    )
if "--laps" in sys.argv:
    print(json.dumps(laps))
'''


def make_files(folder: Path) -> None:
    """The checkpoint (official code, seed 0) and the photo in `folder`."""
    import torch
    from PIL import Image

    from support.fixtures import smooth_image
    from support.reference import official

    torch.manual_seed(0)
    model = official.sam_model_registry["vit_b"]()
    torch.save(model.state_dict(), folder / CHECKPOINT)
    photo = smooth_image((HEIGHT, WIDTH, 3), seed=0)
    Image.fromarray(photo).save(folder / PHOTO, quality=90)
    (folder / "official.py").write_text(OFFICIAL_SCRIPT)
    # keras-sam does not cache a checkpoint changed in the last 2 s (file
    # times advance in steps): wait, so that the first run may store it.
    time.sleep(3)


def _ours_command(folder: Path, out: Path, backend) -> list[str]:
    script = Path(sys.executable).with_name("keras-sam")
    command = (
        [str(script)]
        if script.exists()
        else [
            sys.executable,
            "-m",
            "keras_sam.cli",
        ]
    )
    if backend:
        command += ["--backend", backend]
    return command + [
        "segment",
        str(folder / PHOTO),
        "--point",
        f"{POINT[0]},{POINT[1]}",
        "--multimask",
        "--checkpoint",
        str(folder / CHECKPOINT),
        "-o",
        str(out),
    ]


def _official_command(folder: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        str(folder / "official.py"),
        str(folder / CHECKPOINT),
        str(folder / PHOTO),
        str(out),
        str(POINT[0]),
        str(POINT[1]),
    ]


def _environment(args, cache: Path) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env["KERAS_SAM_CACHE"] = str(cache)
    env.pop("KERAS_SAM_NO_CACHE", None)
    if not args.backend:
        env.pop("KERAS_BACKEND", None)  # the CLI's default
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(_common.ROOT), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    return env


def timed(command: list[str], env: dict) -> tuple[float, int, str]:
    """`(wall seconds, peak RSS bytes, stdout)` of one process; the peak
    from `wait4` (the kernel's maximum resident set size of that child)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode()
        stderr = err.read().decode(errors="replace")
    if process.returncode:
        raise SystemExit(
            f"{' '.join(command)} failed ({process.returncode}):\n"
            f"{stderr[-3000:]}"
        )
    return seconds, usage.ru_maxrss * 1024, stdout


def _summary(name: str, results: list[tuple[float, int]]) -> tuple:
    times = [t for t, _ in results]
    peak = max(m for _, m in results)
    return (
        name,
        len(times),
        f"{statistics.mean(times):.2f} s",
        f"{min(times):.2f} s",
        ", ".join(f"{t:.1f}" for t in times),
        f"{peak / 2**30:.2f} GiB",
    )


def compare(args, folder: Path) -> str:
    """Whole processes, interleaved; the table and ratios as Markdown."""
    backend = args.backend
    official = _official_command(folder, folder / "out_official")
    warm_cache = folder / "cache_warm"
    results = {"empty": [], "warm": [], "official": []}
    loads = [os.getloadavg()[0]]
    # Warm-up passes (not recorded): the OS file cache, and ours' cache.
    for _ in range(max(args.num_warmup, 1)):
        env = _environment(args, warm_cache)
        timed(_ours_command(folder, folder / "out_ours", backend), env)
        timed(official, env)
    for i in range(args.num_iters):
        empty_cache = folder / f"cache_empty_{i}"
        env = _environment(args, empty_cache)
        ours = _ours_command(folder, folder / "out_ours", backend)
        t, m, _ = timed(ours, env)
        results["empty"].append((t, m))
        shutil.rmtree(empty_cache, ignore_errors=True)
        loads.append(os.getloadavg()[0])
        t, m, _ = timed(official, _environment(args, warm_cache))
        results["official"].append((t, m))
        loads.append(os.getloadavg()[0])
        t, m, _ = timed(ours, _environment(args, warm_cache))
        results["warm"].append((t, m))
        loads.append(os.getloadavg()[0])
        print(
            f"run {i + 1}: ours (empty cache) {results['empty'][-1][0]:.1f} "
            f"s, official {results['official'][-1][0]:.1f} s, ours (warm "
            f"cache) {results['warm'][-1][0]:.1f} s",
            file=sys.stderr,
        )
    rows = [
        _summary("ours, cache empty (first run)", results["empty"]),
        _summary("ours, cache warm", results["warm"]),
        _summary("official script", results["official"]),
    ]
    mean = {k: statistics.mean(t for t, _ in v) for k, v in results.items()}
    peak = {k: max(m for _, m in v) for k, v in results.items()}
    text = _common.table(
        rows, ("system", "runs", "mean", "min", "each (s)", "peak RSS")
    )
    text += (
        "\n\nOfficial / ours, mean wall time: "
        f"{mean['official'] / mean['warm']:.2f}x with a warm cache, "
        f"{mean['official'] / mean['empty']:.2f}x with an empty one; "
        "peak memory (official / ours): "
        f"{peak['official'] / peak['warm']:.2f}x warm, "
        f"{peak['official'] / peak['empty']:.2f}x empty. "
        f"Backend: {backend or 'the CLI default (tensorflow)'}; "
        f"{HEIGHT}x{WIDTH} JPEG, one click, three masks; load average "
        f"(1 min) from {min(loads):.1f} to {max(loads):.1f} during the runs "
        f"on {os.cpu_count()} cores."
    )
    return text


# ---------------------------------------------------------------------------
# In-process laps


def ours_laps(folder: Path) -> dict:
    """Run in a child process: our laps, printed as JSON."""
    start = time.perf_counter()
    import importlib

    import keras_sam
    from keras_sam import io
    from keras_sam.inference.predictor import SAMPredictor

    # Keras after keras_sam, as in the command line: keras_sam sets
    # TensorFlow's oneDNN switch before TensorFlow is imported.
    keras = importlib.import_module("keras")
    keras.ops.convert_to_numpy(keras.ops.zeros((1,)))  # the backend loaded
    laps = {"import": time.perf_counter() - start}

    def lap(name, fn):
        t = time.perf_counter()
        result = fn()
        laps[name] = time.perf_counter() - t
        return result

    import numpy as np

    model = lap(
        "load", lambda: keras_sam.SAM.from_checkpoint(folder / CHECKPOINT)
    )
    image = io.read_image(folder / PHOTO)
    predictor = SAMPredictor(model)
    lap("set_image 1st", lambda: predictor.set_image(image))
    lap("set_image 2nd", lambda: predictor.set_image(image))

    def predict():
        return predictor.predict(
            point_coords=np.array([POINT]),
            point_labels=np.array([1]),
            multimask_output=True,
        )

    lap("predict 1st", predict)
    lap("predict 2nd", predict)
    return laps


def laps(args, folder: Path) -> str:
    backend = args.backend or "tensorflow"
    cache = folder / "cache_laps"
    env = dict(_environment(args, cache), KERAS_BACKEND=backend)
    child = [sys.executable, __file__, "--child-laps", str(folder)]
    columns = {}
    loads = [os.getloadavg()[0]]
    # Interleaved as the whole processes; the first of ours finds the cache
    # empty, the second finds what the first stored.
    for _ in range(args.num_iters):
        shutil.rmtree(cache, ignore_errors=True)
        for name, command in (
            ("ours, cache empty", child),
            (
                "official",
                _official_command(folder, folder / "out") + ["--laps"],
            ),
            ("ours, cache warm", child),
        ):
            _, _, stdout = timed(command, env)
            result = json.loads(stdout.strip().splitlines()[-1])
            for lap, seconds in result.items():
                columns.setdefault(name, {}).setdefault(lap, []).append(seconds)
            loads.append(os.getloadavg()[0])
    names = list(columns)
    steps = list(columns["official"])
    rows = [
        (step,)
        + tuple(
            f"{statistics.mean(columns[n][step]):.2f} s"
            if step in columns[n]
            else "-"
            for n in names
        )
        for step in steps
    ]
    totals = {
        n: sum(statistics.mean(v) for v in columns[n].values()) for n in names
    }
    rows.append(("sum", *(f"{totals[n]:.2f} s" for n in names)))
    text = _common.table(rows, ("step", *names))
    text += (
        f"\n\nMeans of {args.num_iters} runs of each, interleaved; ours on "
        f"{backend}. `load` is `SAM.from_checkpoint` for ours and "
        '`sam_model_registry["vit_b"](checkpoint=...)` for the official '
        "(whose `import` includes PyTorch; ours imports PyTorch inside "
        "`load` only when it reads the `.pth` itself, with an empty cache, "
        "on TensorFlow and JAX). Load average (1 min) from "
        f"{min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} cores."
    )
    return text


def main(argv=None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.set_defaults(num_iters=3, num_warmup=1)
    p.add_argument(
        "--laps",
        action="store_true",
        help="time the steps inside one process, for --backend",
    )
    p.add_argument("--child-laps", metavar="FOLDER", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_laps:
        print(json.dumps(ours_laps(Path(args.child_laps))))
        return 0
    _common.setup_env_only(args)
    with tempfile.TemporaryDirectory(prefix="keras_sam_cold_") as tmp:
        folder = Path(tmp)
        make_files(folder)
        if args.laps:
            text = laps(args, folder)
            title = "Cold start laps, ViT-B checkpoint, 1800x1200 photo"
        else:
            text = compare(args, folder)
            title = "Cold start: keras-sam segment vs an official script"
    if not args.backend:
        # The CLI's default, for the report's slot.
        os.environ["KERAS_BACKEND"] = "tensorflow"
    _common.report(title, text, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
