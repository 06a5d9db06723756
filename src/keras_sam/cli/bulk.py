"""`--ray` on `keras-sam auto` and `embed`: the same command over many
pictures on a Ray cluster (`keras_sam.bulk`)."""

import functools
import importlib.util
import os

from keras_sam.cli.common import check_model_arguments
from keras_sam.cli.common import check_output_folder
from keras_sam.cli.common import load_model
from keras_sam.cli.common import log
from keras_sam.cli.common import number
from keras_sam.cli.common import plan_outputs

INSTALL = 'pip install "keras-sam[ray]"'


def add_arguments(parser) -> None:
    """The Ray flags of a subcommand, in their own group."""
    group = parser.add_argument_group(
        "Ray (bulk runs; see docs/bulk.md)",
        "With --ray the pictures are read in Ray tasks and run through the "
        "model in a pool of Ray actors, each holding the model; inputs and "
        "OUT_DIR may also be URIs pyarrow opens (s3://bucket/prefix). The "
        "results are the same files, pictures already done are skipped, "
        "and OUT_DIR/keras-sam-bulk.jsonl gets one line per picture "
        "finished or failed.",
    )
    group.add_argument(
        "--ray",
        action="store_true",
        help="run on Ray: a local cluster, or the one at --ray-address",
    )
    group.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="join this Ray cluster (auto, HOST:PORT, ray://HOST:PORT; "
        "implies --ray; default: $RAY_ADDRESS, else a new local cluster)",
    )
    for flag, kind, default, text in _NUMBERS:
        group.add_argument(
            flag,
            type=number(kind, 0.0 if kind is float else 1),
            default=default,
            help=text,
        )


# flag, type, default, help
_NUMBERS = (
    ("--num-actors", int, 1, "actors holding a model (default 1)"),
    (
        "--actor-cpus",
        float,
        0.5,
        "CPUs reserved per actor (default 0.5: actors must leave CPUs free "
        "for the read tasks, or the job waits forever)",
    ),
    (
        "--actor-gpus",
        float,
        0.0,
        "GPUs per actor (default 0; 0.5 puts two actors on a GPU)",
    ),
)


def wanted(args) -> bool:
    """Whether the command runs on Ray."""
    return bool(args.ray or args.ray_address)


def run(parser, args, task: str, generator_args: dict | None = None) -> int:
    """Run `task` ("auto" or "embed") over the inputs on Ray; the exit
    status (1 if any picture failed)."""
    from keras_sam.bulk import listing

    missing = [
        m for m in ("ray", "pyarrow") if importlib.util.find_spec(m) is None
    ]
    if missing:
        parser.error(f"--ray needs Ray Data; install it with {INSTALL}")
    check_model_arguments(parser, args)
    if getattr(args, "embeddings", None) is not None:
        parser.error("--embeddings cannot be combined with --ray")
    from keras_sam.bulk import pipeline

    suffixes = pipeline.suffixes(task)
    remote = [i for i in args.inputs if listing.is_uri(i)]
    if listing.is_uri(args.output):
        output = args.output
    else:
        check_output_folder(parser, "-o/--output", args.output)
        output = os.path.abspath(args.output)
    if remote:
        if len(remote) < len(args.inputs):
            parser.error("IMAGE_OR_DIR: give either URIs or local paths")
        try:
            pictures = listing.list_pictures(
                args.inputs, recursive=args.recursive
            )
        except ValueError as e:
            parser.error(f"IMAGE_OR_DIR: {e}")
    else:
        pictures = [
            (path, _name(targets[-1], args.output, suffixes[-1]))
            for path, targets in plan_outputs(parser, args, suffixes)
        ]
    if args.checkpoint is not None:
        args.checkpoint = os.path.abspath(args.checkpoint)
    options = {}
    if args.ray_address is None and not os.environ.get("RAY_ADDRESS"):
        options["include_dashboard"] = False
    log(f"connecting to Ray ({args.ray_address or 'a local cluster'})")
    owner = pipeline.connect(args.ray_address, **options)
    try:
        summary = pipeline.run_bulk(
            pictures,
            output,
            task=task,
            make_model=functools.partial(load_model, None, args),
            generator_args=generator_args,
            num_actors=args.num_actors,
            actor_cpus=args.actor_cpus,
            actor_gpus=args.actor_gpus,
            overwrite=args.overwrite,
            log=log,
            on_record=_print_done,
        )
    finally:
        if owner:
            pipeline.disconnect()
    for picture, error in summary.failed[:3]:
        log(f"error: {error if picture in error else f'{picture}: {error}'}")
    log(summary.line())
    return 1 if summary.failed else 0


def _print_done(record: dict) -> None:
    """A finished picture's marker file on stdout, as without --ray."""
    if record["status"] == "done":
        print(record["path"], flush=True)


def _name(target: str, output: str, suffix: str) -> str:
    """The mirrored name of a picture from its planned marker file."""
    relative = os.path.relpath(target, output)
    return relative[: -len(suffix)].replace(os.sep, "/")
