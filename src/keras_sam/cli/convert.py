"""`keras-sam convert`: a checkpoint to safetensors or Keras weights."""

import os

from keras_sam.cli.common import H5_CONFIG_ATTRIBUTE
from keras_sam.cli.common import check_checkpoint_path
from keras_sam.cli.common import check_output_folder
from keras_sam.cli.common import log

SUFFIXES = (".safetensors", ".weights.h5")


def add_parser(sub) -> None:
    convert = sub.add_parser(
        "convert",
        help="convert a checkpoint to the official layout or Keras weights",
        description=(
            "Read a SAM checkpoint (an official .pth or .safetensors, a "
            "Hugging Face SamModel folder or weights file, or a KerasHub "
            "SAM preset folder, all loaded without running any code from "
            "them) and write it as .safetensors (the official tensor names "
            "and layouts) or as Keras weights (.weights.h5, with the "
            "architecture stored in the file's attribute "
            f"{H5_CONFIG_ATTRIBUTE!r}). Both load back with --checkpoint; "
            "Keras code can load the .weights.h5 with model.load_weights "
            "into a model of the same architecture. The file appears "
            "complete or not at all."
        ),
    )
    convert.add_argument(
        "checkpoint",
        help="official .pth or .safetensors, Hugging Face SamModel folder "
        "or file, or KerasHub preset folder",
    )
    convert.add_argument(
        "-o",
        "--output",
        required=True,
        help="*.safetensors or *.weights.h5, in an existing folder",
    )


def run(parser, args) -> int:
    from keras_sam import io

    check_checkpoint_path(parser, "CHECKPOINT", args.checkpoint)
    source_is_folder = os.path.isdir(args.checkpoint)
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
    if source_is_folder and os.path.realpath(folder) == os.path.realpath(
        args.checkpoint
    ):
        parser.error(
            f"-o/--output: {out} is inside the input CHECKPOINT folder; "
            "give another folder"
        )
    from keras_sam.convert.checkpoint import OFFICIAL_MASK_DECODER_NUM_HEADS
    from keras_sam.convert.formats import KERAS_HUB
    from keras_sam.convert.formats import read_checkpoint

    # Official names and layouts whatever the format (else a ValueError
    # naming the path): what loads back with --checkpoint.
    file_format, state, config, _ = read_checkpoint(args.checkpoint)
    if file_format == KERAS_HUB:
        from keras_sam.models.sam import SAM

        # Its architecture comes from config.json, not from the shapes:
        # load it once so that weights that do not fit are refused here.
        log("checking the weights against config.json")
        SAM.from_checkpoint(args.checkpoint)
    heads = config["mask_decoder"]["num_heads"]
    if heads != OFFICIAL_MASK_DECODER_NUM_HEADS and out.endswith(
        ".safetensors"
    ):
        # The official layout has no place for it.
        log(
            f"warning: the mask decoder has {heads} heads, which official "
            "safetensors do not record: load the file with "
            f"mask_decoder_num_heads={heads}"
        )
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
