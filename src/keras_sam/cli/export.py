"""`keras-sam export`: the model as ONNX, LiteRT or SavedModel files."""

import importlib.util
import os

from keras_sam.cli.common import add_model_arguments
from keras_sam.cli.common import check_model_arguments
from keras_sam.cli.common import check_output_folder
from keras_sam.cli.common import load_model
from keras_sam.cli.common import log

FORMATS = ("onnx", "litert", "saved_model")
# format -> the modules it needs beyond TensorFlow (the `export` extra)
NEEDS = {"onnx": ("onnx", "tf2onnx"), "litert": (), "saved_model": ()}
EXTRA_HINT = 'pip install "keras-sam[export]"'


def add_parser(sub) -> None:
    export = sub.add_parser(
        "export",
        help="export the model as ONNX, LiteRT or SavedModel files",
        description=(
            "Write the model's decoder (prompt encoder + mask decoder + "
            "upscaling to the picture's size, with the official SAM ONNX "
            "decoder's inputs and outputs) and image encoder (the picture "
            "resized to the model's input size in, its embedding out) "
            "into a folder: decoder.onnx and image_encoder.onnx (ONNX, "
            "needs the export extra: onnx, tf2onnx), decoder.tflite and "
            "image_encoder.tflite (LiteRT), or the folders "
            "decoder_saved_model and image_encoder_saved_model "
            "(TensorFlow SavedModel). Every format is made on the "
            "TensorFlow backend (the default when installed; another "
            "--backend is refused). The files appear together or not at "
            "all. Run them with keras_sam.export.OnnxPredictor, ONNX "
            "Runtime (also onnxruntime-web) or LiteRT; see docs/export.md."
        ),
    )
    model = export.add_argument_group("model")
    # Exports are float32 graphs: no --precision.
    add_model_arguments(model, precision=False)
    out = export.add_argument_group("output")
    out.add_argument(
        "--format",
        choices=FORMATS,
        default="onnx",
        help="onnx (default), litert or saved_model",
    )
    out.add_argument(
        "--decoder-only",
        action="store_true",
        help="skip the image encoder",
    )
    out.add_argument(
        "--single-mask",
        action="store_true",
        help="one mask per prompt, chosen as the official ONNX export "
        "does (the single-mask output for more than two points, else the "
        "best of the three); default: all four masks",
    )
    out.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="output folder"
    )
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files of an earlier export in DIR",
    )


def run(parser, args) -> int:
    from keras_sam.export.bundle import planned_outputs

    check_model_arguments(parser, args)
    check_output_folder(parser, "-o/--output", args.output)
    backend = os.environ.get("KERAS_BACKEND")
    if backend != "tensorflow":
        parser.error(
            f"--format {args.format} is made on the TensorFlow backend; "
            f"run with --backend tensorflow (received: {backend})"
        )
    missing = [m for m in NEEDS[args.format] if not _installed(m)]
    if missing:
        raise ImportError(
            f"--format {args.format} needs {', '.join(missing)}: {EXTRA_HINT}"
        )
    names = planned_outputs(args.format, args.decoder_only)
    existing = [
        n for n in names if os.path.lexists(os.path.join(args.output, n))
    ]
    if existing and not args.overwrite:
        parser.error(
            f"-o/--output: {os.path.join(args.output, existing[0])} exists; "
            "pass --overwrite to replace it"
        )
    model = load_model(parser, args)
    from keras_sam.export.bundle import export_model

    log(f"exporting ({args.format})")
    written = export_model(
        model,
        args.output,
        format=args.format,
        decoder_only=args.decoder_only,
        single_mask=args.single_mask,
        overwrite=args.overwrite,
    )
    for path in written:
        print(path)
    return 0


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
