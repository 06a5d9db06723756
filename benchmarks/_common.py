"""Shared benchmark plumbing: arguments, threads, timing, BENCHMARKS.md."""

import argparse
import datetime
import os
import platform
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
        help="print the table only; do not append to BENCHMARKS.md",
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


def report(title: str, text: str, args) -> None:
    """Print `text` and append it to BENCHMARKS.md with the command."""
    command = "python " + " ".join(
        [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]
    )
    stamp = datetime.date.today().isoformat()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.device}"
    block = (
        f"\n## {title}\n\n{stamp}, {machine}, "
        f"KERAS_BACKEND={os.environ.get('KERAS_BACKEND')}, "
        f"{args.threads} threads\n\n```sh\n{command}\n```\n\n{text}\n"
    )
    print(block)
    if not args.no_write:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(block)
