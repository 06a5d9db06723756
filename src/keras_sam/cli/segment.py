"""`keras-sam segment`: masks for clicks and boxes on one picture."""

import os

from keras_sam.cli.common import add_embeddings_argument
from keras_sam.cli.common import add_model_arguments
from keras_sam.cli.common import check_embeddings_folder
from keras_sam.cli.common import check_model_arguments
from keras_sam.cli.common import check_output_folder
from keras_sam.cli.common import load_model
from keras_sam.cli.common import log
from keras_sam.cli.common import parse_numbers
from keras_sam.cli.common import stored_embedding

# the predictor's argument names in `check_prompts`' messages -> flags
FLAGS = {"point_coords": "--point", "point_labels": "--point", "box": "--box"}
# at most three masks: mask_0.png .. mask_2.png
MAX_MASKS = 3


def add_parser(sub) -> None:
    segment = sub.add_parser(
        "segment",
        help="segment the object at clicks and/or a box",
        description=(
            "Write mask_<i>.png, overlay.png and result.json (scores, "
            "prompts, sizes) to OUT: all of them or, if anything fails, "
            "none (mask files of an earlier run beyond the new ones are "
            "removed). Coordinates are pixels of IMAGE. One click gives "
            "the best-scored of SAM's three masks for it (SAM's own "
            "single-mask output is often worse for one click); other "
            "prompts (several clicks, a box) give SAM's single mask."
        ),
    )
    segment.add_argument("image", help="image file (PNG, JPEG, ...)")
    prompts = segment.add_argument_group("prompts")
    prompts.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="X,Y[,LABEL]",
        help="a click; LABEL 1 foreground (default) or 0 background; "
        "repeatable",
    )
    prompts.add_argument(
        "--box", metavar="X1,Y1,X2,Y2", help="a box around the object"
    )
    model = segment.add_argument_group("model")
    add_model_arguments(model)
    add_embeddings_argument(model)
    masks = segment.add_argument_group(
        "masks (default: the best of three for one click, else one)"
    )
    choice = masks.add_mutually_exclusive_group()
    choice.add_argument(
        "--multimask",
        action="store_true",
        help="write all three masks SAM gives for an ambiguous prompt",
    )
    choice.add_argument(
        "--single-mask-output",
        action="store_true",
        help="write SAM's single-mask output, also for one click",
    )
    segment.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="output folder"
    )


def output_names(count: int) -> list[str]:
    """The files `segment` writes into OUT for `count` masks."""
    return [f"mask_{i}.png" for i in range(count)] + [
        "overlay.png",
        "result.json",
    ]


def run(parser, args) -> int:
    import json

    from keras_sam import io

    # Files and flags first: none of these needs Keras.
    if os.path.isdir(args.image):
        parser.error(
            f"IMAGE: {args.image} is a folder, not a picture (for the "
            "pictures in a folder, use `keras-sam auto`)"
        )
    if not os.path.exists(args.image):
        parser.error(f"IMAGE: no such file: {args.image}")
    points, labels = [], []
    for text in args.point:
        values = parse_numbers(parser, "--point", text, (2, 3))
        label = values[2] if len(values) == 3 else 1.0
        if label not in (0.0, 1.0):
            parser.error(
                f"--point LABEL must be 1 (foreground) or 0 (background). "
                f"Received: --point {text}"
            )
        points.append(values[:2])
        labels.append(int(label))
    box = None
    if args.box is not None:
        box = parse_numbers(parser, "--box", args.box, (4,))
    if not points and box is None:
        parser.error("give at least one --point or a --box")
    check_model_arguments(parser, args)
    check_embeddings_folder(parser, args)
    check_output_folder(parser, "-o/--output", args.output)
    image_real = os.path.realpath(args.image)
    for name in output_names(MAX_MASKS):
        target = os.path.join(args.output, name)
        if os.path.realpath(target) == image_real:
            parser.error(
                f"-o/--output: {target} would replace the input IMAGE; "
                "give another output folder"
            )
        if os.path.isdir(target):
            parser.error(
                f"-o/--output: {target} is a folder; segment writes "
                f"{', '.join(output_names(1)[1:])} and mask_<i>.png in OUT"
            )
    try:
        image = io.read_image(args.image)
    except ValueError as e:
        parser.error(f"IMAGE: {e}")
    h, w = image.shape[:2]

    import numpy as np

    from keras_sam.inference.user_prompts import check_prompts

    try:
        check_prompts(points or None, labels or None, box, image_size=(h, w))
    except ValueError as e:
        message = str(e)
        for name, flag in FLAGS.items():
            message = message.replace(f"`{name}`", flag)
        parser.error(message)

    one_click = len(points) == 1 and box is None
    if args.multimask:
        choice = "all three"
    elif args.single_mask_output or not one_click:
        choice = "single"
    else:
        choice = "best of three"
    model = load_model(parser, args)
    from keras_sam import visualize  # noqa: I001
    from keras_sam.inference.predictor import SAMPredictor

    predictor = SAMPredictor(model)
    stored = None
    if args.embeddings is not None:
        from keras_sam.inference.embeddings import model_fingerprint

        fingerprint = model_fingerprint(model)
        stored = stored_embedding(args, args.image, image, fingerprint)
    if stored is not None:
        log(f"using the stored embedding {stored.path}")
        predictor.set_image_embedding(stored.embedding, stored.original_size)
    else:
        log(f"encoding {args.image} ({w}x{h})")
        predictor.set_image(image)
    masks, scores, _ = predictor.predict(
        point_coords=np.array(points) if points else None,
        point_labels=np.array(labels) if points else None,
        box=np.array(box) if box is not None else None,
        multimask_output=choice != "single",
    )
    if choice == "best of three":
        best = int(np.argmax(scores))
        masks, scores = masks[best : best + 1], scores[best : best + 1]
    picture = visualize.overlay(
        image,
        masks,
        scores=scores,
        points=points or None,
        point_labels=labels or None,
        boxes=[box] if box is not None else None,
    )
    names = output_names(len(masks))
    paths = [os.path.join(args.output, name) for name in names]
    result = {
        "image": os.path.abspath(args.image),
        "image_size": [h, w],
        "points": points,
        "point_labels": labels,
        "box": box,
        "multimask_output": choice != "single",
        "mask_choice": choice,
        "masks": [
            {
                "file": os.path.abspath(path),
                "score": float(s),
                "area": int(m.sum()),
            }
            for path, s, m in zip(paths, scores, masks, strict=False)
        ],
        "overlay": os.path.abspath(paths[-2]),
    }
    os.makedirs(args.output, exist_ok=True)
    io.remove_leftovers(args.output)
    with io.output_group() as group:
        for mask, path in zip(masks, paths, strict=False):
            io.write_png(mask.astype(np.uint8) * 255, path, group=group)
        io.write_png(picture, paths[-2], group=group)
        io.write_json(result, paths[-1], group=group)
    # an earlier run's masks beyond these would pass for this run's
    for i in range(len(masks), MAX_MASKS):
        stale = os.path.join(args.output, f"mask_{i}.png")
        if os.path.isfile(stale):
            os.unlink(stale)
    print(json.dumps(result, indent=2))
    return 0
