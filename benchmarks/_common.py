"""Shared benchmark plumbing: arguments, threads, timing, BENCHMARKS.md."""

import argparse
import datetime
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--backend", choices=("jax", "torch", "tensorflow"))
    p.add_argument("--num-warmup", type=int, default=3)
    p.add_argument("--num-iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="where ours and the references run",
    )
    p.add_argument(
        "--no-write",
        action="store_true",
        help="print the table only; do not write it to BENCHMARKS.md",
    )
    return p


def setup_env_only(args) -> None:
    """Record the backend in the environment without importing anything."""
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend


def setup(args) -> None:
    """Apply backend and thread count before any framework is imported."""
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("KERAS_BACKEND", "jax")
    n = str(args.threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = n
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ["JAX_PLATFORMS"] = "cpu"
    import torch

    # keras_sam before TensorFlow: it sets what a user's process gets at
    # TensorFlow's import (the oneDNN switch).
    import keras_sam  # noqa: F401

    torch.set_num_threads(args.threads)
    if os.environ["KERAS_BACKEND"] == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def sync(x):
    """Wait for a result on any framework (device sync), return it."""
    import keras
    import numpy as np

    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "block_until_ready"):
        x.block_until_ready()
    elif hasattr(x, "cpu") and hasattr(x, "detach"):
        x.detach().cpu()
    elif isinstance(x, dict):
        for v in x.values():
            sync(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            sync(v)
    elif keras.ops.is_tensor(x):
        keras.ops.convert_to_numpy(x)
    return x


def time_fn(fn, num_warmup: int, num_iters: int) -> float:
    """Median wall time of `fn()` in milliseconds, after warm-up."""
    for _ in range(num_warmup):
        sync(fn())
    times = []
    for _ in range(num_iters):
        start = time.perf_counter()
        sync(fn())
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def run_children(script: str, systems, args, extra=()) -> dict:
    """Run `script --system NAME` once per system in a fresh process, with
    the timing arguments of `args` and `extra`; each child prints its
    result as JSON on its last stdout line. Returns `{system: result}`."""
    import json
    import subprocess

    results = {}
    for system in systems:
        command = [
            sys.executable,
            os.path.abspath(script),
            "--system",
            system,
            "--threads",
            str(args.threads),
            "--num-warmup",
            str(args.num_warmup),
            "--num-iters",
            str(args.num_iters),
            "--device",
            args.device,
            *extra,
        ]
        if args.backend:
            command += ["--backend", args.backend]
        print(f"running {system} ...", file=sys.stderr)
        out = subprocess.run(
            command, check=True, capture_output=True, text=True
        )
        results[system] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


def table(rows: list[tuple], headers: tuple) -> str:
    widths = [
        max(len(str(h)), *(len(str(r[i])) for r in rows))
        for i, h in enumerate(headers)
    ]
    line = "| " + " | ".join(
        str(h).ljust(w) for h, w in zip(headers, widths, strict=True)
    )
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| "
        + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))
        + " |"
        for r in rows
    ]
    return "\n".join([line + " |", sep, *body])


HISTORY = "<!-- history -->"


def _insert(text: str, at: str, new: str) -> str:
    """`new` before the marker `at` if `text` has it, else at the end."""
    if at in text:
        k = text.index(at)
        return text[:k] + new + "\n" + text[k:]
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + new


def write_run(path: Path, title: str, slot: str, block: str) -> None:
    """Make `block` the latest run of case `title` on `slot` in `path`.

    A case is a `## title` section between `<!-- latest:CASE -->` and
    `<!-- /latest:CASE -->`; each of its runs starts with `<!-- run:SLOT -->`
    (SLOT: backend/device), one per slot. The run `block` replaces moves, as
    it was, to the end of the case's history section (oldest first) under
    the `<!-- history -->` marker that ends the latest sections. Missing
    sections are created; hand-written text around the runs is kept.
    """
    text = path.read_text() if path.exists() else ""
    case = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    marker = f"<!-- run:{slot} -->"
    run = f"{marker}\n{block.strip()}\n\n"
    start, end = f"<!-- latest:{case} -->", f"<!-- /latest:{case} -->"
    if start not in text:
        section = f"{start}\n## {title}\n\n{run}{end}\n"
        path.write_text(_insert(text, HISTORY, section))
        return
    i = text.index(start) + len(start)
    j = text.index(end, i)
    preamble, *runs = re.split(r"(?m)^(?=<!-- run:)", text[i:j])
    slots = [r.split("\n", 1)[0] for r in runs]
    old = None
    if marker in slots:
        old = runs[slots.index(marker)]
        runs[slots.index(marker)] = run
    else:
        runs.append(run)
    runs = [r.rstrip("\n") + "\n\n" for r in runs]
    text = text[:i] + preamble + "".join(runs) + text[j:]
    if old is not None:
        h_start, h_end = f"<!-- history:{case} -->", f"<!-- /history:{case} -->"
        if HISTORY not in text:
            text = text.rstrip("\n") + f"\n\n{HISTORY}\n# History\n"
        if h_start not in text:
            text = text.rstrip("\n") + (
                f"\n\n{h_start}\n## History: {title}\n\n{h_end}\n"
            )
        k = text.index(h_end)
        text = text[:k] + old.rstrip("\n") + "\n\n" + text[k:]
    path.write_text(text)


def parity_bound(args, precision: str = "float32") -> float:
    """The largest max-abs error over max-abs official output accepted
    before timing. float32 on a CPU: 1e-4. On a GPU, JAX multiplies float32
    matrices in TF32 (10 bits of mantissa) by default, and PyTorch's cuDNN
    convolutions do too, which is what users get there: 1e-2. bfloat16
    keeps 8 bits of mantissa: 0.1."""
    if precision != "float32":
        return 0.1
    return 1e-2 if args.device == "gpu" else 1e-4


def torch_device(args) -> str:
    """Where the PyTorch references run."""
    return "cuda" if args.device == "gpu" else "cpu"


def gpu_name() -> str:
    """The first CUDA device's name, as PyTorch reports it."""
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # no CUDA build or no device: name what was asked
        return "gpu"


def cpu_name() -> str:
    """The CPU's model name (Linux), else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def report(title: str, text: str, args) -> None:
    """Print `text` and write it, with the command, to BENCHMARKS.md as the
    latest run of `title` on this backend and device (see `write_run`)."""
    command = "python " + " ".join(
        [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]
    )
    stamp = datetime.date.today().isoformat()
    device = gpu_name() if args.device == "gpu" else args.device
    machine = f"{cpu_name()}, {os.cpu_count()} cores, {device}"
    # `setup` defaults to jax; a parent that only ran `setup_env_only`
    # passes the same environment to its children.
    backend = os.environ.get("KERAS_BACKEND") or "jax"
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    if backend == "tensorflow" and onednn is not None:
        backend_note = f", TF_ENABLE_ONEDNN_OPTS={onednn}"
    else:
        backend_note = ""
    block = (
        f"### {backend} ({args.device}), {stamp}\n\n{stamp}, {machine}, "
        f"KERAS_BACKEND={backend}{backend_note}, {args.threads} threads\n\n"
        f"```sh\n{command}\n```\n\n{text}\n"
    )
    print(f"\n## {title}\n\n{block}")
    if not args.no_write:
        slot = f"{backend}/{args.device}"
        write_run(ROOT / "BENCHMARKS.md", title, slot, block)
        print(
            f"BENCHMARKS.md: latest {title!r} on {slot} written; "
            "update its row in the summary table by hand."
        )
