"""What the subcommands share: model flags, loading, output folders,
messages."""

import argparse
import math
import os
import sys

# The HDF5 attribute of a `.weights.h5` file written by `keras-sam convert`
# that holds the architecture (JSON of the three config dicts), so that
# `--checkpoint` can build the model before loading the weights.
H5_CONFIG_ATTRIBUTE = "keras_sam_config"

CHECKPOINT_HELP = (
    "an official .pth or .safetensors (architecture read from its tensor "
    "shapes), a keras-sam .safetensors, or a .weights.h5 written by "
    "`keras-sam convert` (architecture stored in it; another .weights.h5 "
    "needs --preset for its architecture)"
)


def log(message: str) -> None:
    """A progress or log line on stderr."""
    print(f"keras-sam: {message}", file=sys.stderr, flush=True)


def describe(error: BaseException) -> str:
    """`error` as one line for a user: the message of an error the user
    can act on (bad file, bad value, a missing extra), else its type and
    message."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error)
    text = " ".join(text.split()) or type(error).__name__
    if len(text) > 1000:
        text = text[:1000] + " ..."
    if not isinstance(error, (ValueError, OSError, ImportError)):
        text = f"{type(error).__name__}: {text}"
    return text


def add_model_arguments(group, *, precision: bool = True) -> None:
    """`--checkpoint`, `--preset` and (unless `precision` is False)
    `--precision` in an argument group."""
    from keras_sam.models.presets import PRESETS

    group.add_argument("--checkpoint", metavar="PATH", help=CHECKPOINT_HELP)
    group.add_argument(
        "--preset",
        metavar="NAME",
        help=f"one of {', '.join(sorted(PRESETS))}; downloads the official "
        "weights (cached) unless --checkpoint is given; sam_shapes is "
        "bundled",
    )
    if not precision:
        return
    group.add_argument(
        "--precision",
        choices=("float32", "bf16"),
        default="float32",
        help="bf16: the image encoder and the decoder compute in bfloat16 "
        "(faster only on hardware with bfloat16 matrix instructions; "
        "docs/precision.md); default float32",
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
    if args.checkpoint is not None:
        check_checkpoint_path(parser, "--checkpoint", args.checkpoint)


def check_input_file(parser, flag: str, path: str) -> None:
    """A usage error unless `path` is an existing file."""
    if os.path.isdir(path):
        parser.error(f"{flag}: {path} is a folder, not a file")
    if not os.path.exists(path):
        parser.error(f"{flag}: no such file: {path}")
    if not os.path.isfile(path):
        parser.error(f"{flag}: {path} is not a regular file")
    if not os.access(path, os.R_OK):
        parser.error(f"{flag}: cannot read {path} (permission denied)")


def check_checkpoint_path(parser, flag: str, path: str) -> None:
    """A usage error unless `path` is an existing file, or a folder with a
    config.json (a Hugging Face or KerasHub checkpoint)."""
    if os.path.isdir(path) and not os.path.isfile(
        os.path.join(path, "config.json")
    ):
        parser.error(
            f"{flag}: {path} is a folder, but no Hugging Face or KerasHub "
            "checkpoint (it has no config.json)"
        )
    if not os.path.isdir(path):
        check_input_file(parser, flag, path)


def check_output_folder(parser, flag: str, path: str) -> None:
    """A usage error unless `path` is a folder that can be written, or can
    be created. Nothing is created."""
    if os.path.exists(path) and not os.path.isdir(path):
        parser.error(f"{flag}: {path} is a file, not a folder")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        parser.error(f"{flag}: cannot create {path}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        parser.error(
            f"{flag}: cannot write in {existing} (permission denied or a "
            "read-only disk)"
        )


def load_model(parser, args):
    """The model the flags name (a usage error if they name none).

    An official preset's weights are downloaded before anything is built,
    so that a failed download fails at once.
    """
    from keras_sam.models.presets import PRESETS

    check_model_arguments(parser, args)
    weights = args.checkpoint
    preset = PRESETS.get(args.preset) if args.preset else None
    if weights is None and "bundled" not in preset:
        weights = _download(preset)
    config = None
    if weights is not None and str(weights).endswith(".weights.h5"):
        config = _keras_weights_config(args, weights)
    precision = getattr(args, "precision", "float32")
    log(f"loading model ({args.checkpoint or args.preset}, {precision})")
    from keras_sam.models.sam import SAM

    if config is not None:
        model = SAM.from_config_dicts(
            config["image_encoder"],
            config["prompt_encoder"],
            config["mask_decoder"],
            precision=precision,
            name=args.preset or "sam",
        )
        model.build()
        model.load_weights(weights)
        return model
    if args.preset is not None:
        return SAM.from_preset(
            args.preset, weights=weights or True, precision=precision
        )
    return SAM.from_checkpoint(weights, precision=precision)


def _download(preset: dict):
    from keras_sam.convert.download import download

    try:
        return download(
            preset["url"], sha256=preset["sha256"], size=preset.get("size")
        )
    except (ValueError, OSError) as e:
        message = describe(e)
        if "--checkpoint" not in message:
            message += (
                " (offline? download the file elsewhere and give it as "
                "--checkpoint PATH)"
            )
        raise ValueError(message) from e


def _keras_weights_config(args, path: str) -> dict:
    """The architecture for a `.weights.h5`: `--preset`'s, else the one
    `keras-sam convert` stored in the file (read without Keras)."""
    import json

    import h5py

    from keras_sam.models.presets import PRESETS

    try:
        with h5py.File(path, "r") as f:
            stored = f.attrs.get(H5_CONFIG_ATTRIBUTE)
    except OSError as e:
        raise ValueError(
            f"--checkpoint: cannot read {path} as a Keras .weights.h5 file "
            f"({describe(e)})"
        ) from e
    if args.preset is not None:
        return PRESETS[args.preset]
    if stored is None:
        raise ValueError(
            f"--checkpoint: {path} holds Keras weights without their "
            "architecture (not written by `keras-sam convert`); give "
            "--preset NAME for it"
        )
    try:
        config = json.loads(stored)
        return {part: dict(config[part]) for part in _PARTS}
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(
            f"--checkpoint: the architecture stored in {path} is damaged "
            f"({describe(e)})"
        ) from e


_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


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


def number(
    kind=float,
    low: float = -math.inf,
    high: float = math.inf,
    high_open: bool = False,
):
    """An argparse `type`: a finite `kind` (int or float) in `[low, high]`
    (`[low, high)` with `high_open`)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        bad_high = value is not None and (
            value >= high if high_open else value > high
        )
        if value is None or not math.isfinite(value) or value < low or bad_high:
            what = "an integer" if kind is int else "a number"
            if math.isinf(low) and math.isinf(high):
                where = ""
            elif math.isinf(high):
                where = f" >= {low:g}"
            else:
                bracket = ")" if high_open else "]"
                where = f" in [{low:g}, {high:g}{bracket}"
            raise argparse.ArgumentTypeError(
                f"must be {what}{where}. Received: {text}"
            )
        return value

    parse.__name__ = "int" if kind is int else "number"
    return parse


SKIP_TEXT = {
    "not a picture": "not a picture",
    "hidden": "hidden",
    "subfolder": "subfolder without --recursive",
    "link to a folder": "link to a folder, not followed",
    "excluded": "the output folder",
    "given twice": "given twice",
    "cannot be listed": "folder that cannot be listed",
}


def skipped_line(skipped: list[tuple[str, str]]) -> str:
    """One line saying what `scan_images` passed over and why."""
    groups: dict[str, list[str]] = {}
    for path, reason in skipped:
        groups.setdefault(reason, []).append(path)
    parts = []
    for reason, paths in groups.items():
        shown = ", ".join(paths[:3])
        if len(paths) > 3:
            shown += f" and {len(paths) - 3} more"
        parts.append(f"{SKIP_TEXT.get(reason, reason)}: {shown}")
    return f"skipped {len(skipped)}: " + "; ".join(parts)


def plan_outputs(
    parser, args, suffixes: tuple[str, ...]
) -> list[tuple[str, list[str]]]:
    """`(picture, [output path per suffix])` of every picture that
    `args.inputs` name (`--recursive`: `args.recursive`), each output below
    `args.output` under the picture's mirrored name
    (`keras_sam.io.mirrored_names`) plus the suffix; usage errors for
    outputs that could touch an input."""
    from keras_sam import io

    out = args.output
    out_real = os.path.realpath(out)
    for item in args.inputs:
        if os.path.isdir(item) and os.path.realpath(item) == out_real:
            parser.error(
                f"-o/--output: {out} is the input folder {item}; the "
                "results would mix with its pictures. Give another folder"
            )
    try:
        images, skipped = io.scan_images(
            args.inputs, recursive=args.recursive, exclude=(out,)
        )
    except ValueError as e:
        parser.error(f"IMAGE_OR_DIR: {e}")
    if skipped:
        log(skipped_line(skipped))
    if not images:
        parser.error(
            f"IMAGE_OR_DIR: no pictures found in {' '.join(args.inputs)}"
        )
    try:
        names = io.mirrored_names(images, args.inputs)
    except ValueError as e:  # inputs on different drives (Windows)
        parser.error(f"IMAGE_OR_DIR: {e}")
    inputs = {os.path.realpath(p) for p in images}
    folders = [os.path.realpath(i) for i in args.inputs if os.path.isdir(i)]
    jobs = []
    for path, name in zip(images, names, strict=True):
        targets = [os.path.join(out, name + suffix) for suffix in suffixes]
        for target in targets:
            real = os.path.realpath(target)
            if real in inputs:
                parser.error(
                    f"-o/--output: the result {target} would replace an "
                    "input picture. Give an output folder outside the inputs"
                )
            for folder in folders:
                # A result a later run would take for a picture: one in an
                # input folder, or below it with --recursive (unless OUT,
                # skipped by the walk, is in between).
                if os.path.dirname(real) == folder or (
                    args.recursive
                    and io.is_within(real, folder)
                    and not io.is_within(out_real, folder)
                ):
                    parser.error(
                        f"-o/--output: the result {target} would be written "
                        f"into the input folder {folder}. Give an output "
                        "folder outside the inputs"
                    )
            if os.path.isdir(target):
                parser.error(
                    f"-o/--output: {target} is a folder; the result for "
                    f"{path} is written under that name"
                )
        jobs.append((path, targets))
    return jobs


EMBEDDINGS_HELP = (
    "a folder written by `keras-sam embed`: a picture's embedding kept "
    "there for this model is used instead of encoding the picture (looked "
    "up by the picture's name and checked by its pixels' digest and the "
    "model's fingerprint: a file for another picture or model is an "
    "error); a picture without one is encoded, with a line on stderr"
)


def pending(args, jobs: list[tuple]) -> list[tuple]:
    """The jobs `(picture, marker output, ...)` still to do, once the
    temporary files an interrupted run left in their folders are removed:
    a job whose marker output exists is done, unless `--overwrite`. Says on
    stderr what was removed and skipped. Creates `args.output`."""
    from keras_sam import io

    os.makedirs(args.output, exist_ok=True)
    removed = []
    folders = {args.output} | {os.path.dirname(job[1]) for job in jobs}
    for folder in sorted(folders):
        removed += io.remove_leftovers(folder)
    if removed:
        log(
            f"removed {len(removed)} temporary file(s) an interrupted run "
            f"left in {args.output}"
        )
    todo = [job for job in jobs if args.overwrite or not os.path.isfile(job[1])]
    if len(todo) < len(jobs):
        log(
            f"skipped {len(jobs) - len(todo)} picture(s) already done in "
            f"{args.output} (--overwrite redoes them)"
        )
    return todo


def for_each_picture(todo: list[tuple], compute, write) -> list[str]:
    """Run the jobs `(picture, ...)` in order, a progress line each.

    `compute(*job)` reads and processes the picture: its `ValueError` or
    `OSError` (an unreadable picture, one the model cannot take) is one
    line on stderr and the next picture goes on. `write(job, result)` then
    writes the picture's outputs; its errors (a full disk) stop the run.

    Returns:
        The pictures that failed (`failure_status` reports them).
    """
    failed = []
    for index, job in enumerate(todo):
        path = job[0]
        log(f"[{index + 1}/{len(todo)}] {path}")
        try:
            result = compute(*job)
        except (ValueError, OSError) as e:
            message = describe(e)
            if path not in message:
                message = f"{path}: {message}"
            log(f"error: {message}")
            failed.append(path)
            continue
        write(job, result)
        del result  # not held while the next picture is processed
    return failed


def failure_status(failed: list[str], total: int) -> int:
    """The exit status of a run over `total` pictures: 0, or 1 with a line
    naming the first pictures that failed."""
    if not failed:
        return 0
    shown = ", ".join(failed[:3]) + (
        f" and {len(failed) - 3} more" if len(failed) > 3 else ""
    )
    log(f"{len(failed)} of {total} pictures failed: {shown}")
    return 1


def add_embeddings_argument(group, more: str = "") -> None:
    """`--embeddings DIR` in an argument group; `more` ends its help."""
    group.add_argument(
        "--embeddings", metavar="DIR", help=EMBEDDINGS_HELP + more
    )


def check_embeddings_folder(parser, args) -> None:
    """A usage error unless `--embeddings`, if given, is a folder."""
    folder = args.embeddings
    if folder is None:
        return
    if not os.path.exists(folder):
        parser.error(f"--embeddings: no such folder: {folder}")
    if not os.path.isdir(folder):
        parser.error(f"--embeddings: {folder} is a file, not a folder")


def stored_embedding(args, picture: str, image, fingerprint: str):
    """The checked `StoredEmbedding` of `picture` below `--embeddings`, or
    None (with a line on stderr) when there is none; a ValueError naming
    the file when the one there is for another picture or model."""
    from keras_sam.inference import embeddings

    try:
        stored = embeddings.find_embedding(
            args.embeddings, picture, image, model=fingerprint
        )
    except ValueError as e:
        raise ValueError(
            f"{e}; `keras-sam embed --overwrite` encodes it again"
        ) from e
    if stored is None:
        log(
            f"no stored embedding for {picture} in {args.embeddings}; "
            "encoding it"
        )
    return stored
