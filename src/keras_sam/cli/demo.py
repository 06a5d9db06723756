"""`keras-sam demo`: the bundled model on a held-out shapes picture."""

import os
import time

from keras_sam.cli.common import check_output_folder
from keras_sam.cli.common import log


def add_parser(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="segment a held-out shapes picture with the bundled model",
        description=(
            "Make a synthetic shapes picture the bundled sam_shapes model "
            "never saw in training, segment one object from one click and "
            "another from a box, write an overlay PNG, and print the IoU of "
            "each mask against the true mask."
        ),
    )
    demo.add_argument(
        "--seed", type=int, default=7, help="which held-out picture"
    )
    demo.add_argument(
        "-o", "--output", default="demo_out", help="output folder"
    )


def run(parser, args) -> int:
    check_output_folder(parser, "-o/--output", args.output)
    import keras
    import numpy as np

    from keras_sam import io
    from keras_sam import visualize
    from keras_sam.inference.predictor import SAMPredictor
    from keras_sam.models.sam import SAM
    from keras_sam.training.datasets.shapes import make_scene
    from keras_sam.training.evaluation import EVALUATION_SEED
    from keras_sam.training.evaluation import interior_point
    from keras_sam.training.evaluation import mask_iou
    from keras_sam.training.evaluation import tight_box

    log(f"backend: {keras.backend.backend()}")
    start = time.perf_counter()
    model = SAM.from_preset("sam_shapes", weights=True)
    predictor = SAMPredictor(model)
    image, masks = make_scene((EVALUATION_SEED, int(args.seed), 0, 1))
    if len(masks) < 2:
        raise ValueError(f"scene {args.seed} has fewer than two objects")
    order = np.argsort([-m.sum() for m in masks])
    clicked, boxed = masks[order[0]], masks[order[1]]
    point = interior_point(clicked)
    box = tight_box(boxed)
    predictor.set_image(image)
    click_masks, click_scores, _ = predictor.predict(
        point_coords=point[None], point_labels=np.array([1])
    )
    best = int(np.argmax(click_scores))
    box_masks, box_scores, _ = predictor.predict(
        box=box, multimask_output=False
    )
    seconds = time.perf_counter() - start
    click_iou = mask_iou(click_masks[best], clicked)
    box_iou = mask_iou(box_masks[0], boxed)
    os.makedirs(args.output, exist_ok=True)
    picture = visualize.overlay(
        image,
        [click_masks[best], box_masks[0]],
        scores=[click_iou, box_iou],
        labels=["click, IoU", "box, IoU"],
        points=point[None],
        point_labels=[1],
        boxes=box[None],
    )
    overlay = os.path.join(args.output, "demo_overlay.png")
    with io.output_group() as group:
        io.write_png(picture, overlay, group=group)
        io.write_png(
            image, os.path.join(args.output, "demo_input.png"), group=group
        )
    print(
        f"held-out shapes picture {args.seed} ({image.shape[1]}x"
        f"{image.shape[0]}, {len(masks)} objects), bundled model sam_shapes"
    )
    print(
        f"one click at ({point[0]:.0f}, {point[1]:.0f}): IoU with the true "
        f"mask {click_iou:.3f} (predicted {click_scores[best]:.3f})"
    )
    print(
        f"box {box.astype(int).tolist()}: IoU with the true mask "
        f"{box_iou:.3f} (predicted {box_scores[0]:.3f})"
    )
    print(f"overlay: {overlay} ({seconds:.1f} s in all)")
    return 0
