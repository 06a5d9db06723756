"""`keras-sam convert`: a checkpoint to safetensors or Keras weights."""

import os

from keras_sam.cli.common import H5_CONFIG_ATTRIBUTE
from keras_sam.cli.common import check_input_file
from keras_sam.cli.common import check_output_folder
from keras_sam.cli.common import log

SUFFIXES = (".safetensors", ".weights.h5")


def add_parser(sub) -> None:
    convert = sub.add_parser(
        "convert",
        help="convert an official checkpoint",
        description=(
            "Read an official SAM checkpoint (.pth, loaded without running "
            "any code from it) and write it as .safetensors (the official "
            "tensor names) or as Keras weights (.weights.h5, with the "
            "architecture stored in the file's attribute "
            f"{H5_CONFIG_ATTRIBUTE!r}). Both load back with --checkpoint; "
            "Keras code can load the .weights.h5 with model.load_weights "
            "into a model of the same architecture. The file appears "
            "complete or not at all."
        ),
    )
    convert.add_argument("checkpoint", help="official .pth or .safetensors")
    convert.add_argument(
        "-o",
        "--output",
        required=True,
        help="*.safetensors or *.weights.h5, in an existing folder",
    )


def run(parser, args) -> int:
    from keras_sam import io

    check_input_file(parser, "CHECKPOINT", args.checkpoint)
    out = args.output
    if not out.endswith(SUFFIXES):
        parser.error(
            "-o/--output must end in .safetensors or .weights.h5. "
            f"Received: {out}"
        )
    if os.path.isdir(out):
        parser.error(f"-o/--output: {out} is a folder")
    folder = os.path.dirname(out) or "."
    if not os.path.isdir(folder):
        parser.error(f"-o/--output: no such folder: {folder}")
    check_output_folder(parser, "-o/--output", folder)
    if os.path.realpath(out) == os.path.realpath(args.checkpoint):
        parser.error(
            f"-o/--output: {out} is the input CHECKPOINT; give another name"
        )
    from keras_sam.convert.checkpoint import detect_checkpoint_architecture
    from keras_sam.convert.checkpoint import read_state_dict

    state = read_state_dict(args.checkpoint)
    # An official layout (else a ValueError naming the file): what loads
    # back with --checkpoint.
    config = detect_checkpoint_architecture(args.checkpoint, state)
    io.remove_leftovers(folder)
    if out.endswith(".safetensors"):
        from keras_sam.convert.checkpoint import write_safetensors

        write_safetensors(state, out)  # atomic, with the umask's mode
    else:
        import json

        import h5py

        from keras_sam.models.sam import SAM

        log("building the model")
        model = SAM.from_config_dicts(**config)
        model.build()
        model.load_state_dict(state)
        with io.output_group() as group, group.path(out, ".weights.h5") as tmp:
            model.save_weights(tmp)
            with h5py.File(tmp, "a") as f:
                f.attrs[H5_CONFIG_ATTRIBUTE] = json.dumps(config, default=list)
    print(out)
    return 0
