"""Prompts as users give them, in pixels of their picture: the one check.

Every front end (`SAMPredictor`, `OnnxPredictor`, the command line, the
server) checks a user's prompts with `check_prompts`, once, before anything
is decoded; the layers then only check the static shapes of the tensors
they get. NumPy alone (no Keras), so that `OnnxPredictor` runs without it.
"""

import numpy as np

POINT_LABELS = (-1, 0, 1, 2, 3)


def _as_array(name: str, value, dtype, shape_doc: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"`{name}` must be an array {shape_doc}. Received: {name}={value!r}"
        ) from e
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError(
            f"`{name}` must be finite. Received: {name} containing NaN or "
            "infinity"
        )
    return array


def _batch_shape_doc(batch_shape: tuple, shape: str) -> str:
    return f"({', '.join(batch_shape)}, {shape[1:]}" if batch_shape else shape


def _check_inside(name: str, coords: np.ndarray, image_size) -> None:
    h, w = image_size
    x, y = coords[..., 0], coords[..., 1]
    if np.any(x < 0) or np.any(x > w) or np.any(y < 0) or np.any(y > h):
        raise ValueError(
            f"`{name}` must lie inside the image (0 <= x <= {w}, "
            f"0 <= y <= {h}). Received: {name} with x in "
            f"[{x.min()}, {x.max()}], y in [{y.min()}, {y.max()}]"
        )


def check_prompts(
    point_coords=None,
    point_labels=None,
    box=None,
    mask_input=None,
    *,
    image_size: tuple[int, int],
    mask_input_size: tuple[int, int] = (256, 256),
    batch_shape: tuple = (),
) -> dict:
    """Check a user's prompts on a picture of `image_size` `(H, W)`.

    The arguments are those of `SAMPredictor.predict` (`batch_shape=()`)
    or `predict_batch` (`batch_shape=("B",)`): `point_coords` `(N, 2)`
    x, y pixels with `point_labels` `(N,)` in -1, 0, 1, 2, 3; `box` `(4,)`
    x1, y1, x2, y2 pixels; `mask_input` `(1, h, w)` low-res logits. Every
    number must be finite, every point inside the picture, and a batch's
    prompts must agree on `B`.

    Returns:
        dict of the given prompts as NumPy arrays (float64 coordinates and
        labels, float32 masks; `mask_input` `(B, 1, h, w)` in a batch),
        keyed by argument name.

    Raises:
        ValueError: naming the argument and what is wrong with it.
    """
    checked = {}
    batch = None
    if point_coords is not None or point_labels is not None:
        if point_coords is None or point_labels is None:
            missing = (
                "point_labels" if point_coords is not None else ("point_coords")
            )
            raise ValueError(
                "`point_coords` and `point_labels` go together. Received: "
                f"{missing}=None"
            )
        coords = _as_array("point_coords", point_coords, np.float64, "(N, 2)")
        labels = _as_array("point_labels", point_labels, np.float64, "(N,)")
        if coords.ndim != len(batch_shape) + 2 or coords.shape[-1] != 2:
            raise ValueError(
                "`point_coords` must have shape "
                f"{_batch_shape_doc(batch_shape, '(N, 2)')}. Received: "
                f"point_coords.shape={coords.shape}"
            )
        if labels.shape != coords.shape[:-1]:
            raise ValueError(
                "`point_labels` must have one label per point, shape "
                f"{coords.shape[:-1]}. Received: point_labels.shape="
                f"{labels.shape}"
            )
        if not np.all(np.isin(labels, POINT_LABELS)):
            raise ValueError(
                "`point_labels` must be 1 (foreground), 0 (background), "
                "2/3 (box corners) or -1 (ignored point). Received: "
                f"point_labels={labels.tolist()}"
            )
        _check_inside("point_coords", coords, image_size)
        batch = coords.shape[0] if batch_shape else None
        checked["point_coords"], checked["point_labels"] = coords, labels
    if box is not None:
        box = _as_array("box", box, np.float64, "(4,) x1, y1, x2, y2")
        if box.ndim != len(batch_shape) + 1 or box.shape[-1] != 4:
            raise ValueError(
                "`box` must have shape "
                f"{_batch_shape_doc(batch_shape, '(4,)')} as x1, y1, x2, "
                f"y2. Received: box.shape={box.shape}"
            )
        if np.any(box[..., 2] < box[..., 0]) or np.any(
            box[..., 3] < box[..., 1]
        ):
            raise ValueError(
                "`box` must be x1, y1, x2, y2 with x2 >= x1 and y2 >= y1. "
                f"Received: box={box.tolist()}"
            )
        _check_inside("box", box.reshape(box.shape[:-1] + (2, 2)), image_size)
        if batch is not None and box.shape[0] != batch:
            raise ValueError(
                "`boxes` must have one box per prompt of the batch. "
                f"Received: {box.shape[0]} boxes for {batch} point "
                "prompts"
            )
        batch = box.shape[0] if batch_shape else None
        checked["box"] = box
    if mask_input is not None:
        mask = _as_array("mask_input", mask_input, np.float32, "(1, h, w)")
        expected = (1,) + tuple(mask_input_size)
        if batch_shape:
            if mask.ndim == 3:
                mask = mask[:, None]
            expected = (mask.shape[0],) + expected
        if mask.shape != expected:
            raise ValueError(
                f"`mask_input` must have shape {expected}: low-resolution "
                "logits from an earlier prediction. Received: "
                f"mask_input.shape={mask.shape}"
            )
        if batch is not None and mask.shape[0] != batch:
            raise ValueError(
                "`mask_input` must have one mask per prompt of the batch. "
                f"Received: {mask.shape[0]} masks for {batch} prompts"
            )
        checked["mask_input"] = mask
    return checked
