"""The `keras-sam` command line.

Subcommands:
    segment  masks for clicks and boxes on an image (PNGs, overlay, JSON)
    auto     segment everything in images or folders (COCO RLE JSON, overlay)
    convert  an official checkpoint to safetensors or Keras .weights.h5
    info     the architecture and size of a checkpoint
    demo     segment a held-out shapes picture with the bundled model

`--backend` is applied before Keras is imported. Results go to stdout,
progress and logs to stderr. Each subcommand is a module of this package
with `add_parser(subparsers)` and `run(parser, args) -> exit status`.
"""

import argparse
import os
import sys

from keras_sam.cli import auto
from keras_sam.cli import convert
from keras_sam.cli import demo
from keras_sam.cli import info
from keras_sam.cli import segment
from keras_sam.cli.common import log

BACKENDS = ("jax", "torch", "tensorflow")
# Without --backend or $KERAS_BACKEND: the first installed of these, fastest
# first on a CPU for the image encoder and the decoder (BENCHMARKS.md).
BACKEND_PREFERENCE = ("tensorflow", "jax", "torch")


def default_backend() -> str:
    """The fastest installed Keras backend (see `BACKEND_PREFERENCE`)."""
    import importlib.util

    for name in BACKEND_PREFERENCE:
        if importlib.util.find_spec(name) is not None:
            return name
    return "tensorflow"  # Keras' own default; it will say what is missing


# subcommand -> its module, in the order `--help` lists them
SUBCOMMANDS = {
    "demo": demo,
    "segment": segment,
    "auto": auto,
    "convert": convert,
    "info": info,
}


def build_parser() -> argparse.ArgumentParser:
    """The `keras-sam` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="keras-sam",
        description="Segment Anything (SAM) for Keras 3.",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Keras backend (default: $KERAS_BACKEND, else the fastest "
        "installed on a CPU: tensorflow, then jax, then torch).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in SUBCOMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend:
        if "keras" in sys.modules:
            parser.error(
                "--backend must be set before Keras is imported; "
                "use $KERAS_BACKEND instead"
            )
        os.environ["KERAS_BACKEND"] = args.backend
    if not os.environ.get("KERAS_BACKEND"):
        os.environ["KERAS_BACKEND"] = default_backend()
    # torch's OpenMP threads otherwise spin while NumPy works, taking the
    # cores that the automatic mask generator's NumPy steps need.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # TensorFlow's C++ info/warning lines (XLA cluster compilation, Grappler
    # cost estimates) are not for a command's user; errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return SUBCOMMANDS[args.command].run(parser, args)
    except ValueError as e:  # bad checkpoint, bad prompt: a clear message
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
