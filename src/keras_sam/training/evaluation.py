"""Held-out evaluation of a SAM on the synthetic shapes scenes.

Seeds: `ShapesDataset(..., seed=s)` draws its example `j` from
`make_scene((s, j, attempt, 1))` (`attempt` is almost always 0). The
evaluation draws image `i` from `make_scene((EVALUATION_SEED, i, 0, 1))`, so
its scenes never coincide with those of a training set whose seed differs
from `EVALUATION_SEED` (`scripts/train_shapes.py` only accepts seeds below
it). `np.random.default_rng` hashes the whole seed tuple, so equal first
elements are required for two scenes to share a seed.
"""

import numpy as np

from keras_sam.inference.predictor import SAMPredictor
from keras_sam.training.datasets.shapes import make_scene

EVALUATION_SEED = 10_000_000


def mask_iou(pred, true) -> float:
    """IoU of two boolean `(H, W)` masks; 0 when both are empty."""
    pred = np.asarray(pred, bool)
    true = np.asarray(true, bool)
    if pred.shape != true.shape:
        raise ValueError(
            "`pred` and `true` must have the same shape. Received: "
            f"pred.shape={pred.shape}, true.shape={true.shape}"
        )
    inter = np.count_nonzero(pred & true)
    union = np.count_nonzero(pred | true)
    return inter / union if union else 0.0


def interior_point(mask) -> np.ndarray:
    """The most interior pixel of a non-empty bool `(H, W)` mask.

    The argmax of the Euclidean distance to the nearest background pixel
    (pixels outside the image count as background), ties going to the
    pixel nearest the mask's centroid; without scipy, the mask pixel
    nearest the centroid.

    Returns:
        float32 `(2,)`: `(x, y)` pixel coordinates.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError("`mask` must not be empty.")
    try:
        from scipy import ndimage
    except ImportError:  # pragma: no cover - scipy ships with the test env
        rows, cols = np.nonzero(mask)
        d2 = (rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2
        i = int(np.argmin(d2))
        return np.array([cols[i], rows[i]], np.float32)
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    # Ties (a ridge, e.g. in a rectangle): the one nearest the centroid.
    rows, cols = np.nonzero(distance == distance.max())
    centre = np.mean(np.nonzero(mask), axis=1)
    i = int(np.argmin((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2))
    return np.array([cols[i], rows[i]], np.float32)


def tight_box(mask) -> np.ndarray:
    """float32 `(4,)` `[x1, y1, x2, y2]`: inclusive pixel indices of the
    extreme mask pixels (SAM's `batched_mask_to_box`)."""
    rows, cols = np.nonzero(np.asarray(mask, bool))
    if not len(rows):
        raise ValueError("`mask` must not be empty.")
    return np.array(
        [cols.min(), rows.min(), cols.max(), rows.max()], np.float32
    )


def shapes_objects(
    model,
    num_images: int = 200,
    seed: int = EVALUATION_SEED,
    image_size: tuple[int, int] = (256, 256),
    num_objects: tuple[int, int] = (2, 5),
):
    """Per-object results of the held-out evaluation (see
    `evaluate_shapes` for the prompts), one dict per object in scene
    order.

    Yields:
        dict with `"image"` (scene index), `"object"` (index in the scene),
        `"area"` (visible pixels), `"point_iou"` (the best-scored of the
        click's three masks), `"point_best_iou"` (the best of the three
        against the truth), `"point_scores"` (the three predicted IoUs) and
        `"box_iou"` (single mask), IoUs as floats.
    """
    if int(num_images) != num_images or num_images < 1:
        raise ValueError(
            f"`num_images` must be an int >= 1. Received: num_images="
            f"{num_images}"
        )
    predictor = SAMPredictor(model)
    for i in range(int(num_images)):
        image, masks = make_scene((int(seed), i, 0, 1), image_size, num_objects)
        if not len(masks):
            continue
        predictor.set_image(image)
        points = np.stack([interior_point(m) for m in masks])[:, None]
        labels = np.ones(points.shape[:2], np.int32)  # (K, 1)
        point_masks, scores, _ = predictor.predict_batch(
            point_coords=points, point_labels=labels, multimask_output=True
        )  # (K, 3, H, W), (K, 3)
        boxes = np.stack([tight_box(m) for m in masks])
        box_masks, _, _ = predictor.predict_batch(
            boxes=boxes, multimask_output=False
        )  # (K, 1, H, W)
        for k, mask in enumerate(masks):
            ious = [mask_iou(m, mask) for m in point_masks[k]]
            yield {
                "image": i,
                "object": k,
                "area": int(np.count_nonzero(mask)),
                "point_iou": ious[int(np.argmax(scores[k]))],
                "point_best_iou": max(ious),
                "point_scores": [float(v) for v in scores[k]],
                "box_iou": mask_iou(box_masks[k, 0], mask),
            }


def evaluate_shapes(
    model,
    num_images: int = 200,
    seed: int = EVALUATION_SEED,
    image_size: tuple[int, int] = (256, 256),
    num_objects: tuple[int, int] = (2, 5),
) -> dict:
    """Mean IoU of single-click and box prompts on held-out scenes.

    For each object of each scene `make_scene((seed, i, 0, 1), image_size,
    num_objects)`, `i < num_images`:

    - **point**: one foreground click at the object's most interior pixel
      (`interior_point`), `multimask_output=True`, keeping the mask with
      the highest predicted IoU (what an interactive user sees first);
    - **box**: the object's tight box (`tight_box`),
      `multimask_output=False`.

    The masks come from `SAMPredictor` at the scene's resolution and are
    compared with the true visible mask (`mask_iou`). All objects of an
    image are decoded as one batch. `shapes_objects` gives the same
    figures per object.

    Args:
        model: a `keras_sam.SAM`.
        num_images: number of scenes.
        seed: first element of the scene seeds; keep it apart from the
            training seeds (see the module docstring).
        image_size: `(H, W)` of the scenes.
        num_objects: `(min, max)` objects per scene.

    Returns:
        dict with `"point_miou"`, `"box_miou"` (float, mean over objects),
        `"num_objects"` and `"num_images"` (int).
    """
    objects = list(
        shapes_objects(model, num_images, seed, image_size, num_objects)
    )
    mean = lambda key: (  # noqa: E731
        float(np.mean([o[key] for o in objects])) if objects else 0.0
    )
    return {
        "point_miou": mean("point_iou"),
        "box_miou": mean("box_iou"),
        "num_objects": len(objects),
        "num_images": int(num_images),
    }
