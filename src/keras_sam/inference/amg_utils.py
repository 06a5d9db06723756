"""NumPy helpers of the automatic mask generator: point grids, crop boxes,
box operations, non-maximum suppression, stability scores, run-length
encoding and small-region removal.

Boxes are `x1, y1, x2, y2` (xyxy) unless a name says XYWH. A box around a
mask uses the first and last pixel indices (`x2 - x1` is one less than the
mask's width), as the official SAM code does, and is `[0, 0, 0, 0]` for an
empty mask. Run-length encodings (RLE) are COCO's uncompressed format: the
mask is flattened column by column (Fortran order) and `counts` alternate
runs of zeros and ones, starting with zeros (a leading 0 when the first
pixel is set).
"""

import math

import numpy as np

_HINTS = {
    "pycocotools": 'pip install pycocotools (or "keras-sam[amg]")',
    "scipy": 'pip install scipy (or "keras-sam[amg]")',
}


def build_point_grid(n_per_side: int) -> np.ndarray:
    """`(n * n, 2)` float64 x, y points evenly spaced in `[0, 1]^2`, at the
    centres of an `n x n` grid of cells, row by row (x varies fastest)."""
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1.0 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side)  # (n, n): x along columns
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """One point grid per crop layer `0..n_layers`; layer i has
    `int(n_per_side / scale_per_layer**i)` points per side."""
    return [
        build_point_grid(int(n_per_side / scale_per_layer**i))
        for i in range(n_layers + 1)
    ]


def generate_crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (xyxy ints) of every crop layer, and each box's layer.

    Layer 0 is the whole image; layer i >= 1 tiles the image with
    `2**i x 2**i` overlapping crops, the overlap being `overlap_ratio` of
    the short side scaled by `2 / 2**i` (the official formula, including
    its integer truncations). Crops are listed column by column (x outer).

    Args:
        image_size: `(H, W)` of the image.
        n_layers: number of crop layers beyond the whole image.
        overlap_ratio: overlap of neighbouring crops in layer 1, as a
            fraction of the image's short side.

    Returns:
        `(boxes, layer_indices)`.
    """
    h, w = (int(v) for v in image_size)
    boxes, layers = [[0, 0, w, h]], [0]
    short_side = min(h, w)
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / n))
        # Crop length such that n crops overlapping by `overlap` cover it.
        crop_w = int(math.ceil((overlap * (n - 1) + w) / n))
        crop_h = int(math.ceil((overlap * (n - 1) + h) / n))
        for i in range(n):
            x0 = int((crop_w - overlap) * i)
            for j in range(n):
                y0 = int((crop_h - overlap) * j)
                boxes.append([x0, y0, min(x0 + crop_w, w), min(y0 + crop_h, h)])
                layers.append(layer)
    return boxes, layers


def box_xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """`(..., 4)` xyxy boxes to x, y, width, height."""
    boxes = np.array(boxes, copy=True)
    boxes[..., 2:] = boxes[..., 2:] - boxes[..., :2]
    return boxes


def box_area(boxes: np.ndarray) -> np.ndarray:
    """`(..., 4)` xyxy boxes -> `(...)` areas `(x2 - x1) * (y2 - y1)`."""
    boxes = np.asarray(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """`(..., H, W)` bool masks -> `(..., 4)` int64 xyxy boxes around them
    (inclusive last pixel indices); `[0, 0, 0, 0]` for an empty mask."""
    masks = np.asarray(masks, bool)
    h, w = masks.shape[-2:]
    rows = masks.any(axis=-1)  # (..., H)
    cols = masks.any(axis=-2)  # (..., W)
    top = np.argmax(rows, axis=-1)
    bottom = h - 1 - np.argmax(rows[..., ::-1], axis=-1)
    left = np.argmax(cols, axis=-1)
    right = w - 1 - np.argmax(cols[..., ::-1], axis=-1)
    boxes = np.stack([left, top, right, bottom], axis=-1).astype(np.int64)
    return np.where(rows.any(axis=-1)[..., None], boxes, 0)


def boxes_near_crop_edge(
    boxes: np.ndarray,
    crop_box,
    image_box,
    atol: float = 20.0,
) -> np.ndarray:
    """Whether each box has a side within `atol` pixels of an edge of
    `crop_box` that is not also (within `atol`) an edge of `image_box`.

    Args:
        boxes: `(N, 4)` xyxy boxes in image coordinates.
        crop_box: `(4,)` xyxy crop in image coordinates.
        image_box: `(4,)` xyxy box of the whole image, `[0, 0, W, H]`.
        atol: distance in pixels.

    Returns:
        `(N,)` bool.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    crop = np.asarray(crop_box, np.float32)[None]
    image = np.asarray(image_box, np.float32)[None]
    near_crop = np.abs(boxes - crop) <= atol
    near_image = np.abs(boxes - image) <= atol
    return np.any(near_crop & ~near_image, axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float):
    """Greedy non-maximum suppression of xyxy boxes.

    Boxes are visited by descending score (ties keep their input order);
    each box not yet suppressed is kept and suppresses every later box whose
    IoU with it exceeds `iou_threshold`. IoU is computed in float32 with
    torchvision's formula (areas `(x2 - x1) * (y2 - y1)`; two zero-area
    boxes never suppress each other) and compared in float64, as
    torchvision's CPU kernel does, so that `torchvision.ops.nms` of the same
    float32 boxes keeps the same boxes in the same order.

    Args:
        boxes: `(N, 4)` xyxy boxes.
        scores: `(N,)` scores.
        iou_threshold: boxes with IoU above it are suppressed.

    Returns:
        `(K,)` int64 indices of the kept boxes, by descending score.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(
            "`boxes` and `scores` must have the same length. Received: "
            f"{len(boxes)} boxes and {len(scores)} scores"
        )
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[order].T  # each (N,), by descending score
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(order), bool)
    keep = []
    zero = np.float32(0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(len(order)):
            if suppressed[i]:
                continue
            keep.append(i)
            rest = slice(i + 1, None)
            w = np.maximum(
                zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
            )
            h = np.maximum(
                zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
            )
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)
            suppressed[rest] |= iou.astype(np.float64) > iou_threshold
    return order[np.asarray(keep, np.int64)]


def stability_score(
    logits: np.ndarray, threshold: float, offset: float, empty: float = 0.0
) -> np.ndarray:
    """Stability of masks under a shift of the binarisation threshold.

    `count(logits > threshold + offset) / count(logits > threshold -
    offset)` over the last two axes, in float32 as the official generator
    computes it. A mask with nothing above `threshold - offset` gets
    `empty`: 0.0 by default (the official 0/0 is NaN, which fails every
    positive stability threshold); SAM 2's single-mask fallback, in
    `keras_sam.SAMPredictor`, counts such a mask as stable (1.0).

    Args:
        logits: `(..., H, W)` float32 mask logits.
        threshold: the mask threshold (0.0 for SAM).
        offset: the shift, in logits.
        empty: the score of a mask with nothing above `threshold - offset`.

    Returns:
        `(...)` float32 scores in `[0, 1]`.
    """
    logits = np.asarray(logits, np.float32)
    high = np.count_nonzero(
        logits > np.float32(threshold + offset), axis=(-2, -1)
    )
    low = np.count_nonzero(
        logits > np.float32(threshold - offset), axis=(-2, -1)
    )
    high = np.asarray(high, np.float32)
    low = np.asarray(low, np.float32)
    return np.where(
        low > 0, high / np.maximum(low, np.float32(1)), np.float32(empty)
    ).astype(np.float32)


def masks_to_rle(
    masks: np.ndarray,
    crop_box=None,
    image_size: tuple[int, int] | None = None,
) -> list[dict]:
    """Uncompressed RLE of masks, optionally placed in a larger image.

    A mask of a crop is encoded as the mask of the whole image that is zero
    outside the crop, without materialising that image: each crop column is
    flattened with one zero above and below it where the crop does not reach
    the image's top or bottom, each element is mapped to the image position
    where the run it stands for starts, and run boundaries come from
    `np.diff` on the flattened masks.

    Args:
        masks: `(N, h, w)` bool masks.
        crop_box: xyxy position of the masks in the image, `(x1 - x0,
            y1 - y0) == (w, h)`; default the whole image.
        image_size: `(H, W)` of the image; default `(h, w)`.

    Returns:
        One `{"size": [H, W], "counts": int64 array}` per mask (COCO's
        uncompressed RLE, with `counts` as an array; `.tolist()` it for
        JSON).
    """
    masks = np.asarray(masks, bool)
    if masks.ndim != 3:
        raise ValueError(
            f"`masks` must have shape (N, h, w). Received: masks.shape="
            f"{masks.shape}"
        )
    n, h, w = masks.shape
    if image_size is None:
        image_size = (h, w)
    img_h, img_w = (int(v) for v in image_size)
    if crop_box is None:
        crop_box = (0, 0, img_w, img_h)
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    if (x1 - x0, y1 - y0) != (w, h) or x0 < 0 or y0 < 0:
        raise ValueError(
            f"`crop_box` must be a box of the masks' size {(w, h)} (width, "
            f"height) inside the image. Received: crop_box={crop_box}"
        )
    if x1 > img_w or y1 > img_h:
        raise ValueError(
            f"`crop_box` must lie inside the image of size {(img_h, img_w)}. "
            f"Received: crop_box={crop_box}"
        )
    if n == 0:
        return []
    pad_top, pad_bottom = int(y0 > 0), int(y1 < img_h)
    columns = np.pad(
        masks.transpose(0, 2, 1), ((0, 0), (0, 0), (pad_top, pad_bottom))
    )  # (N, w, h + pads)
    # Image position (Fortran order) where the run of each element starts:
    # a top pad stands for rows 0..y0-1, a bottom pad for rows y1..H-1.
    row_starts = np.arange(y0 - pad_top, y1 + pad_bottom)
    row_starts[0] = 0 if pad_top else row_starts[0]
    col_starts = (x0 + np.arange(w)) * img_h
    starts = (col_starts[:, None] + row_starts[None, :]).reshape(-1)
    parts = [np.zeros((n, 1), bool), columns.reshape(n, -1)]
    if x1 < img_w and not pad_bottom:
        # Zeros after the last crop column start at the next column.
        parts.append(np.zeros((n, 1), bool))
        starts = np.append(starts, x1 * img_h)
    flat = np.concatenate(parts, axis=1)  # leading zero: the state before
    mask_idx, pos = np.nonzero(np.diff(flat, axis=1))
    boundaries = np.split(
        starts[pos], np.cumsum(np.bincount(mask_idx, minlength=n))[:-1]
    )
    total = np.array([img_h * img_w], np.int64)
    zero = np.zeros(1, np.int64)
    return [
        {
            "size": [img_h, img_w],
            "counts": np.diff(np.concatenate([zero, b, total])),
        }
        for b in boundaries
    ]


def rle_to_mask(rle: dict) -> np.ndarray:
    """Decode an uncompressed RLE to a bool `(H, W)` mask."""
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], np.int64)
    values = np.arange(len(counts)) % 2 == 1  # runs alternate 0, 1, 0, ...
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(
            f"`rle` counts must sum to H * W = {h * w}. Received: counts "
            f"summing to {flat.size}"
        )
    return np.ascontiguousarray(flat.reshape(w, h).T)


def rle_area(rle: dict) -> int:
    """Number of set pixels of an uncompressed RLE."""
    return int(np.sum(np.asarray(rle["counts"], np.int64)[1::2]))


def coco_encode_rle(rle: dict) -> dict:
    """Uncompressed RLE -> COCO compressed RLE (`counts` a str), with
    pycocotools."""
    mask_utils = import_optional("pycocotools.mask", "pycocotools")
    h, w = (int(v) for v in rle["size"])
    counts = [int(c) for c in rle["counts"]]
    encoded = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    encoded["counts"] = encoded["counts"].decode("utf-8")  # JSON-friendly
    return encoded


def coco_document(
    records: list[dict], *, file_name: str, height: int, width: int
) -> dict:
    """COCO-style annotations of one picture's generator records.

    One image (`id` 0), one category (`id` 1, "object"), and one
    annotation per record: the record's keys (`segmentation`, `bbox`,
    `area`, `predicted_iou`, ...) plus `id`, `image_id` and
    `category_id`. What `keras-sam auto` writes and the server returns.
    """
    return {
        "images": [
            {"id": 0, "file_name": file_name, "height": height, "width": width}
        ],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": [
            {"id": i, "image_id": 0, "category_id": 1, **record}
            for i, record in enumerate(records)
        ],
    }


def import_optional(module: str, package: str):
    """Import `module` of an optional dependency, or raise an ImportError
    with the `pip install` command that provides `package`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"This feature needs {package}: {_HINTS.get(package, package)}"
        ) from e


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a bool `(H, W)` mask, with SciPy if it is
    installed, else OpenCV.

    Returns:
        `(labels, sizes)`: int `(H, W)` labels, 0 outside the mask and
        1..K in raster order of each component's first pixel; `(K,)` pixel
        counts of components 1..K.

    Raises:
        ImportError: neither SciPy nor OpenCV is installed.
    """
    mask = np.asarray(mask, bool)
    try:
        from scipy import ndimage
    except ImportError:
        ndimage = None
    if ndimage is not None:
        labels, k = ndimage.label(mask, structure=np.ones((3, 3), int))
    else:
        try:
            import cv2
        except ImportError as e:
            raise ImportError(
                "Removing small mask regions (`min_mask_region_area` > 0) "
                f"needs SciPy or OpenCV: {_HINTS['scipy']}"
            ) from e
        k, labels = cv2.connectedComponents(mask.astype(np.uint8), 8)
        k -= 1  # cv2 counts the background as label 0
    sizes = np.bincount(labels.reshape(-1), minlength=k + 1)[1:]
    return labels, sizes


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """Fill small holes of a mask, or drop its small islands.

    `mode="holes"`: 8-connected regions of the mask's complement smaller
    than `area_thresh` pixels are filled (as in the official code, this
    includes small background regions at the image border). `mode=
    "islands"`: 8-connected regions of the mask smaller than `area_thresh`
    are removed, but if all are small the largest one stays.

    Args:
        mask: bool `(H, W)`.
        area_thresh: regions with fewer pixels are small.
        mode: `"holes"` or `"islands"`.

    Returns:
        `(mask, changed)`.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(
            f"`mode` must be 'holes' or 'islands'. Received: mode={mode!r}"
        )
    mask = np.asarray(mask, bool)
    holes = mode == "holes"
    labels, sizes = connected_components(mask ^ holes)
    small = sizes < area_thresh  # (K,), for labels 1..K
    if not np.any(small):
        return mask, False
    if holes:
        return mask | np.concatenate([[False], small])[labels], True
    keep = ~small
    if not np.any(keep):
        keep[np.argmax(sizes)] = True  # all small: keep the largest
    return np.concatenate([[False], keep])[labels], True
