"""`keras-sam embed`: encode pictures once, keep their image embeddings."""

import os

from keras_sam.cli import bulk
from keras_sam.cli.common import add_model_arguments
from keras_sam.cli.common import check_model_arguments
from keras_sam.cli.common import check_output_folder
from keras_sam.cli.common import failure_status
from keras_sam.cli.common import for_each_picture
from keras_sam.cli.common import load_model
from keras_sam.cli.common import pending
from keras_sam.cli.common import plan_outputs


def add_parser(sub) -> None:
    from keras_sam.inference.embeddings import SUFFIX

    embed = sub.add_parser(
        "embed",
        help="encode images once and keep their embeddings",
        description=(
            "Run the image encoder over images or folders of images and "
            "keep each picture's image embedding in OUT_DIR, for `keras-sam "
            "segment --embeddings OUT_DIR` and `keras-sam auto --embeddings "
            "OUT_DIR`, which then skip the encoder. Each picture's file goes "
            "below OUT_DIR under its path relative to the folder holding all "
            f"inputs, with its extension kept, plus {SUFFIX} (as `auto` "
            f"names its results: `embed photos -o emb` writes emb/a.jpg"
            f"{SUFFIX}). The file is a NumPy .npz archive (loaded without "
            "pickle): the float32 embedding, the picture's size and the "
            "model's input size, the model's fingerprint (SHA-256 of its "
            "architecture and weights) and the picture's digest (SHA-256 of "
            "its decoded RGB pixels, EXIF orientation applied, and their "
            "shape). OUT_DIR may not be an input folder and no file may land "
            "among the inputs. Pictures whose file exists are skipped "
            "unless --overwrite (an existing file is not checked: after "
            "changing the model, use --overwrite). A picture that cannot be "
            "read is reported and the others go on (exit status 1 at the "
            "end)."
        ),
    )
    embed.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help="pictures, or folders of pictures (by suffix: png, jpg, "
        "jpeg, bmp, gif, tif, tiff, webp; hidden files skipped)",
    )
    embed.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="also the pictures in the folders' subfolders",
    )
    model = embed.add_argument_group("model")
    add_model_arguments(model)
    embed.add_argument(
        "-o", "--output", required=True, metavar="OUT_DIR", help="output folder"
    )
    embed.add_argument(
        "--overwrite", action="store_true", help="redo images already done"
    )
    bulk.add_arguments(embed)


def run(parser, args) -> int:
    from keras_sam import io
    from keras_sam.inference.embeddings import SUFFIX

    if bulk.wanted(args):
        return bulk.run(parser, args, "embed")
    check_model_arguments(parser, args)
    check_output_folder(parser, "-o/--output", args.output)
    jobs = [
        (path, target)
        for path, (target,) in plan_outputs(parser, args, (SUFFIX,))
    ]
    todo = pending(args, jobs)
    if not todo:
        return 0
    model = load_model(parser, args)
    from keras_sam.inference.embeddings import model_fingerprint
    from keras_sam.inference.embeddings import save_embedding
    from keras_sam.inference.predictor import SAMPredictor

    predictor = SAMPredictor(model)
    fingerprint = model_fingerprint(model)

    def compute(path, target):
        image = io.read_image(path)
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        # ValueError: a picture the model cannot take (too elongated)
        save_embedding(target, predictor, image, fingerprint=fingerprint)

    def write(job, _):
        print(job[1], flush=True)

    failed = for_each_picture(todo, compute, write)
    return failure_status(failed, len(todo))
