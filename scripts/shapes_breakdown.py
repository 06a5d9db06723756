"""Where a shapes model's errors are: held-out mean IoU by object area and
by visible pieces, as the README's tables.

Usage (from the repository root, test extras installed):

    python scripts/shapes_breakdown.py --num-images 100
    python scripts/shapes_breakdown.py --weights runs/x/sam_shapes.safetensors

Runs `keras_sam.training.evaluation.shapes_objects` on the first `--num-images`
held-out pictures (the bundled `sam_shapes` weights unless `--weights`
names a `scripts/train_shapes.py` export) and prints two Markdown tables:
mean IoU from a click (the best-scored of three masks), of the best of the
three masks, and from a box, per object-area bin (pixels of the picture);
and click / box per number of visible pieces (an object cut by others is
several 4-connected pieces; needs scipy).

`--correction-click` measures a second round instead, as a user correcting
a click: for each object, the first click's best-scored mask, then a second
click at the most interior pixel of that mask's error region (label 1 on a
missed pixel, 0 on a false one; `correction_click`), decoded with both
clicks, single-mask output, with and without the first mask's low-res
logits as `mask_input`.
"""

import argparse
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

from keras_sam.training.datasets.shapes import make_scene  # noqa: E402
from keras_sam.training.evaluation import EVALUATION_SEED  # noqa: E402
from keras_sam.training.evaluation import interior_point  # noqa: E402
from keras_sam.training.evaluation import mask_iou  # noqa: E402
from keras_sam.training.evaluation import shapes_objects  # noqa: E402

AREA_BINS = [0, 500, 1000, 2000, 4000, 8000, None]
PIECE_BINS = [(1, 1), (2, 2), (3, None)]


def visible_pieces(mask) -> int:
    """Number of 4-connected pieces of a bool `(H, W)` mask."""
    from scipy import ndimage

    return int(ndimage.label(mask)[1])


def _bin_label(lo, hi, unit="") -> str:
    if hi is None:
        return f">= {lo:,}{unit}"
    return f"< {hi:,}{unit}" if lo == 0 else f"{lo:,}-{hi:,}{unit}"


def tables(objects: list[dict]) -> str:
    """The two Markdown tables for per-object dicts with `"area"`,
    `"pieces"`, `"point_iou"`, `"point_best_iou"`, `"box_iou"`."""

    def row(label, group, keys):
        means = [f"{np.mean([o[k] for o in group]):.3f}" for k in keys]
        return f"| {label} | {len(group)} | " + " | ".join(means) + " |"

    lines = [
        "| object area | objects | click | best of the 3 masks | box |",
        "|---|---|---|---|---|",
    ]
    keys = ("point_iou", "point_best_iou", "box_iou")
    for lo, hi in zip(AREA_BINS[:-1], AREA_BINS[1:], strict=True):
        group = [
            o
            for o in objects
            if o["area"] >= lo and (hi is None or o["area"] < hi)
        ]
        if group:
            lines.append(row(_bin_label(lo, hi), group, keys))
    lines += [
        "",
        "| visible pieces | objects | click | box |",
        "|---|---|---|---|",
    ]
    for lo, hi in PIECE_BINS:
        group = [
            o
            for o in objects
            if o["pieces"] >= lo and (hi is None or o["pieces"] <= hi)
        ]
        if group:
            label = str(lo) if hi == lo else f"{lo} or more"
            lines.append(row(label, group, ("point_iou", "box_iou")))
    lines.append("")
    lines.append(
        "all: {} objects, click {:.3f}, best of 3 {:.3f}, box {:.3f}".format(
            len(objects), *(np.mean([o[k] for o in objects]) for k in keys)
        )
    )
    return "\n".join(lines)


def correction_click(predicted, truth):
    """`(point (2,), label)` of the correction for a bool `(H, W)`
    prediction: the most interior pixel of the error region, labelled by
    the truth there; None when the prediction is exact."""
    wrong = np.asarray(predicted, bool) != np.asarray(truth, bool)
    if not wrong.any():
        return None
    point = interior_point(wrong)
    return point, int(truth[int(point[1]), int(point[0])])


def correction_round(model, num_images: int) -> dict:
    """Mean IoU of the first click and of the two-click second round, with
    and without the first mask fed back (see the module docstring)."""
    from keras_sam.inference.predictor import SAMPredictor

    predictor = SAMPredictor(model)
    first, again, again_with_mask = [], [], []
    for i in range(num_images):
        image, masks = make_scene((EVALUATION_SEED, i, 0, 1), (256, 256))
        predictor.set_image(image)
        for truth in masks:
            click = interior_point(truth)[None]
            out, scores, low = predictor.predict(
                point_coords=click, point_labels=np.array([1])
            )
            best = int(np.argmax(scores))
            first.append(mask_iou(out[best], truth))
            correction = correction_click(out[best], truth)
            if correction is None:
                again.append(first[-1])
                again_with_mask.append(first[-1])
                continue
            points = np.stack([click[0], correction[0]])
            labels = np.array([1, correction[1]])
            for mask_input, results in (
                (None, again),
                (low[best : best + 1], again_with_mask),
            ):
                out2, _, _ = predictor.predict(
                    point_coords=points,
                    point_labels=labels,
                    mask_input=mask_input,
                    multimask_output=False,
                )
                results.append(mask_iou(out2[0], truth))
    return {
        "objects": len(first),
        "first_click": float(np.mean(first)),
        "two_clicks": float(np.mean(again)),
        "two_clicks_and_mask": float(np.mean(again_with_mask)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("--correction-click", action="store_true")
    parser.add_argument(
        "--weights",
        default=None,
        help="a train_shapes.py sam_shapes.safetensors (default: bundled)",
    )
    args = parser.parse_args(argv)
    if args.weights is None:
        from keras_sam import SAM

        model = SAM.from_preset("sam_shapes", weights=True)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from train_shapes import load_model

        model = load_model(args.weights)
    if args.correction_click:
        print(f"$ {shlex.join(['python', *sys.argv])}")
        print(correction_round(model, args.num_images))
        return 0
    objects = list(shapes_objects(model, num_images=args.num_images))
    for o in objects:
        _, masks = make_scene((EVALUATION_SEED, o["image"], 0, 1), (256, 256))
        o["pieces"] = visible_pieces(masks[o["object"]])
    print(f"$ {shlex.join(['python', *sys.argv])}")
    print(tables(objects))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
