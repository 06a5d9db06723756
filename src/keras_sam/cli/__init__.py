"""The `keras-sam` command line.

Subcommands:
    segment  masks for clicks and boxes on an image (PNGs, overlay, JSON)
    auto     segment everything in images or folders (COCO RLE JSON, overlay)
    embed    encode images once and keep their embeddings (for segment and
             auto --embeddings)
    convert  an official checkpoint to safetensors or Keras .weights.h5
    info     the architecture and size of a checkpoint
    export   the model as ONNX, LiteRT or SavedModel files
    demo     segment a held-out shapes picture with the bundled model
    serve    a web page to click on pictures, and its HTTP API

`--backend` is applied before Keras is imported. Results go to stdout,
progress and logs to stderr. Each subcommand is a module of this package
with `add_parser(subparsers)` and `run(parser, args) -> exit status`.

Failures are one line on stderr, "keras-sam: error: ..." (usage errors:
"keras-sam <command>: error: ..."), never a traceback unless `--verbose` or
`$KERAS_SAM_DEBUG=1`. Exit status: 0 done, 1 failed (also: some pictures of
`auto` failed), 2 usage error (checked before the model loads where it
can be), 130 interrupted (Ctrl-C; only complete output files are left).
"""

import argparse
import importlib.util
import os
import sys
import traceback

from keras_sam.cli import auto
from keras_sam.cli import convert
from keras_sam.cli import demo
from keras_sam.cli import embed
from keras_sam.cli import export
from keras_sam.cli import info
from keras_sam.cli import segment
from keras_sam.cli import serve
from keras_sam.cli.common import describe
from keras_sam.cli.common import log
from keras_sam.cli.native_log import NativeLogFilter

BACKENDS = ("jax", "torch", "tensorflow")
# Without --backend or $KERAS_BACKEND: the first installed of these, fastest
# first on a CPU for the image encoder and the decoder (BENCHMARKS.md).
BACKEND_PREFERENCE = ("tensorflow", "jax", "torch")
# Keras backend -> the module it needs (Keras' other backends included).
BACKEND_MODULES = {
    "jax": "jax",
    "torch": "torch",
    "tensorflow": "tensorflow",
    "numpy": "numpy",
    "openvino": "openvino",
}
INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


def default_backend() -> str:
    """The fastest installed Keras backend (see `BACKEND_PREFERENCE`)."""
    for name in BACKEND_PREFERENCE:
        if importlib.util.find_spec(name) is not None:
            return name
    return "tensorflow"  # Keras' own default; it will say what is missing


# subcommand -> its module, in the order `--help` lists them
SUBCOMMANDS = {
    "demo": demo,
    "segment": segment,
    "auto": auto,
    "embed": embed,
    "convert": convert,
    "info": info,
    "export": export,
    "serve": serve,
}

VERBOSE_HELP = "show the traceback of a failure (also: $KERAS_SAM_DEBUG=1)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, "keras-sam <command>:
    error: <message>", exit status 2 (`--help` shows the usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The `keras-sam` argument parser with every subcommand."""
    parser = ArgumentParser(
        prog="keras-sam",
        description="Segment Anything (SAM) for Keras 3.",
        epilog="Exit status: 0 done, 1 failed, 2 usage error, 130 "
        "interrupted. Errors are one line; --verbose shows the traceback.",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Keras backend (default: $KERAS_BACKEND, else the fastest "
        "installed on a CPU: tensorflow, then jax, then torch).",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help=VERBOSE_HELP
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in SUBCOMMANDS.items():
        module.add_parser(sub)
        # also after the command: `keras-sam auto ... --verbose`
        sub.choices[name].add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help=VERBOSE_HELP,
        )
    return parser


def check_backend(parser, name: str, source: str) -> None:
    """A usage error unless backend `name` (from `source`, the flag or the
    variable) is known and installed; checked before Keras is imported."""
    module = BACKEND_MODULES.get(name)
    if module is None:
        parser.error(
            f"{source}: unknown Keras backend {name!r}; choose one of "
            f"{', '.join(BACKENDS)}"
        )
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        extra = f"keras-sam[{name}]" if name in BACKENDS else module
        parser.error(
            f"{source}: the {name} backend is not installed; install it "
            f'with pip install "{extra}", or choose another with --backend'
        )


# Commands whose work is done when `run` returns: nothing of theirs needs
# the interpreter's shutdown (servers and Ray clusters stop in atexit
# handlers, so `serve` and `--ray` are not among them).
_DONE_ON_RETURN = ("segment", "auto", "embed", "demo", "info", "convert")


def console_main() -> int:
    """The `keras-sam` program: `main`, then, for a command whose outputs
    are all written and closed, an immediate exit.

    Tearing down TensorFlow, JAX or PyTorch at interpreter exit (module
    teardown, the final garbage collection over a model's objects) takes a
    noticeable part of a one-shot command's time after its work is done;
    `os._exit` after flushing skips it. In-process callers of `main`
    (tests, scripts) return normally. The same commands keep the native
    libraries' log lines off stderr (`native_log`; all of it shows with
    `--verbose`).
    """
    parser = build_parser()
    args = parser.parse_args()
    one_shot = args.command in _DONE_ON_RETURN and not getattr(
        args, "ray", False
    )
    native_log = NativeLogFilter()
    if one_shot and not _verbose(args):
        native_log.start()
    try:
        status = _run(parser, args)
    finally:
        native_log.stop()
    if one_shot:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed early, as `| head -1`
                pass
        os._exit(status)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return _run(parser, parser.parse_args(argv))


def _verbose(args) -> bool:
    return args.verbose or os.environ.get("KERAS_SAM_DEBUG", "") not in (
        "",
        "0",
    )


def _run(parser, args) -> int:
    verbose = _verbose(args)
    if args.backend:
        if "keras" in sys.modules:
            parser.error(
                "--backend must be set before Keras is imported; "
                "use $KERAS_BACKEND instead"
            )
        check_backend(parser, args.backend, "--backend")
        os.environ["KERAS_BACKEND"] = args.backend
    elif os.environ.get("KERAS_BACKEND"):
        if "keras" not in sys.modules:
            check_backend(parser, os.environ["KERAS_BACKEND"], "$KERAS_BACKEND")
    else:
        os.environ["KERAS_BACKEND"] = default_backend()
        check_backend(parser, os.environ["KERAS_BACKEND"], "--backend")
    # torch's OpenMP threads otherwise spin while NumPy works, taking the
    # cores that the automatic mask generator's NumPy steps need.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # TensorFlow's C++ info/warning lines (XLA cluster compilation, Grappler
    # cost estimates) are not for a command's user; errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return SUBCOMMANDS[args.command].run(parser, args)
    except KeyboardInterrupt:
        if verbose:
            traceback.print_exc()
        log("interrupted")
        return INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (`keras-sam auto ... | head -1`)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as e:
        if verbose:
            traceback.print_exc()
        hint = ""
        if not isinstance(e, (ValueError, OSError, ImportError)):
            hint = " (run again with --verbose to see the traceback)"
        log(f"error: {describe(e)}{hint}")
        return 1


if __name__ == "__main__":
    sys.exit(console_main())
