"""`keras-sam segment`: masks for clicks and boxes on one picture."""

import os

from keras_sam.cli.common import add_model_arguments
from keras_sam.cli.common import load_model
from keras_sam.cli.common import log
from keras_sam.cli.common import parse_numbers

# the predictor's argument names in `check_prompts`' messages -> flags
FLAGS = {"point_coords": "--point", "point_labels": "--point", "box": "--box"}


def add_parser(sub) -> None:
    segment = sub.add_parser(
        "segment",
        help="segment the object at clicks and/or a box",
        description=(
            "Write mask_<i>.png, overlay.png and result.json (scores, "
            "prompts, sizes) to OUT. Coordinates are pixels of IMAGE."
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
    segment.add_argument(
        "--multimask",
        action="store_true",
        help="three masks for an ambiguous prompt instead of one",
    )
    segment.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="output folder"
    )


def run(parser, args) -> int:
    import json

    import numpy as np

    from keras_sam import io
    from keras_sam import visualize
    from keras_sam.prompts import check_prompts

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
    if not os.path.isfile(args.image):
        parser.error(f"IMAGE: no such file: {args.image}")
    try:
        image = io.read_image(args.image)
    except ValueError as e:
        parser.error(f"IMAGE: {e}")
    h, w = image.shape[:2]
    try:
        check_prompts(points or None, labels or None, box, image_size=(h, w))
    except ValueError as e:
        message = str(e)
        for name, flag in FLAGS.items():
            message = message.replace(f"`{name}`", flag)
        parser.error(message)
    model = load_model(parser, args)
    from keras_sam.inference.predictor import SAMPredictor  # noqa: I001

    predictor = SAMPredictor(model)
    log(f"encoding {args.image} ({w}x{h})")
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(
        point_coords=np.array(points) if points else None,
        point_labels=np.array(labels) if points else None,
        box=np.array(box) if box is not None else None,
        multimask_output=args.multimask,
    )
    os.makedirs(args.output, exist_ok=True)
    files = []
    for i, mask in enumerate(masks):
        path = os.path.join(args.output, f"mask_{i}.png")
        io.write_png(mask.astype(np.uint8) * 255, path)
        files.append(path)
    picture = visualize.overlay(
        image,
        masks,
        scores=scores,
        points=points or None,
        point_labels=labels or None,
        boxes=[box] if box is not None else None,
    )
    overlay_path = os.path.join(args.output, "overlay.png")
    io.write_png(picture, overlay_path)
    result = {
        "image": os.path.abspath(args.image),
        "image_size": [h, w],
        "points": points,
        "point_labels": labels,
        "box": box,
        "multimask_output": bool(args.multimask),
        "masks": [
            {
                "file": os.path.abspath(f),
                "score": float(s),
                "area": int(m.sum()),
            }
            for f, s, m in zip(files, scores, masks, strict=True)
        ],
        "overlay": os.path.abspath(overlay_path),
    }
    io.write_json(result, os.path.join(args.output, "result.json"))
    print(json.dumps(result, indent=2))
    return 0
