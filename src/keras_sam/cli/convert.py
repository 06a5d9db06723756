"""`keras-sam convert`: a checkpoint to safetensors or Keras weights."""

import os


def add_parser(sub) -> None:
    convert = sub.add_parser(
        "convert",
        help="convert an official checkpoint",
        description=(
            "Read an official SAM checkpoint (.pth, loaded without running "
            "any code from it) and write it as .safetensors (same tensor "
            "names) or as Keras weights (.weights.h5)."
        ),
    )
    convert.add_argument("checkpoint", help="official .pth or .safetensors")
    convert.add_argument(
        "-o", "--output", required=True, help="*.safetensors or *.weights.h5"
    )


def run(parser, args) -> int:
    from keras_sam.convert.checkpoint import read_state_dict
    from keras_sam.convert.checkpoint import write_safetensors

    if not os.path.isfile(args.checkpoint):
        parser.error(f"CHECKPOINT: no such file: {args.checkpoint}")
    out = args.output
    if not (out.endswith(".safetensors") or out.endswith(".weights.h5")):
        parser.error(
            "-o/--output must end in .safetensors or .weights.h5. "
            f"Received: {out}"
        )
    state = read_state_dict(args.checkpoint)
    if out.endswith(".safetensors"):
        write_safetensors(state, out)
    else:
        from keras_sam.convert.checkpoint import detect_architecture
        from keras_sam.models.sam import SAM

        model = SAM.from_config_dicts(**detect_architecture(state))
        model.build()
        model.load_state_dict(state)
        tmp = out[: -len(".weights.h5")] + ".part.weights.h5"
        model.save_weights(tmp)
        os.replace(tmp, out)
    print(out)
    return 0
