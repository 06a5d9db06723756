"""What the subcommands share: model flags, loading, messages."""

import os
import sys


def log(message: str) -> None:
    """A progress or log line on stderr."""
    print(f"keras-sam: {message}", file=sys.stderr, flush=True)


def add_model_arguments(group) -> None:
    """`--checkpoint` and `--preset` in an argument group."""
    from keras_sam.models.presets import PRESETS

    group.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="official .pth or .safetensors (architecture read from it)",
    )
    group.add_argument(
        "--preset",
        metavar="NAME",
        help=f"one of {', '.join(sorted(PRESETS))}; downloads the official "
        "weights unless --checkpoint is given",
    )


def check_model_arguments(parser, args) -> None:
    """Usage errors of the model flags, before anything is loaded."""
    from keras_sam.models.presets import PRESETS

    if args.preset is None and args.checkpoint is None:
        parser.error("give --checkpoint PATH or --preset NAME")
    if args.preset is not None and args.preset not in PRESETS:
        parser.error(
            f"--preset: unknown preset {args.preset!r}; available: "
            f"{', '.join(sorted(PRESETS))}"
        )
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        parser.error(f"--checkpoint: no such file: {args.checkpoint}")


def load_model(parser, args):
    """The model the flags name (a usage error if they name none)."""
    from keras_sam.models.sam import SAM

    check_model_arguments(parser, args)
    log(f"loading model ({args.checkpoint or args.preset})")
    if args.preset is not None:
        return SAM.from_preset(args.preset, weights=args.checkpoint or True)
    return SAM.from_checkpoint(args.checkpoint)


def parse_numbers(parser, flag: str, text: str, counts: tuple[int, ...]):
    """`text`'s comma-separated finite numbers, as many as one of `counts`
    (a usage error otherwise)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not all(
        v == v and abs(v) != float("inf") for v in values
    ):
        shapes = " or ".join(str(c) for c in counts)
        parser.error(
            f"{flag} takes {shapes} comma-separated numbers. Received: "
            f"{flag} {text}"
        )
    return values
