"""Image and coordinate transforms of SAM's predictor (NumPy).

The official pipeline resizes the longest image side to the model input size
(PIL bilinear, `int(x + 0.5)` rounding of the new size), normalises with the
ImageNet mean and std, and pads bottom/right with zeros. Mask logits go back
with two bilinear resizes (`align_corners=False`, no antialias): to the
padded input size, crop to the resized image, then to the original size.
Both resizes and the crop are linear maps along each axis, so here they are
composed into one sparse matrix per axis (at most a few non-zeros per output
row) and applied separably as gathers and weighted sums:
`masks = A_y @ logits @ A_x^T`, equal to the official result up to float32
rounding, and computed only for the masks that are returned.
"""

import functools

import numpy as np

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def preprocess_shape(
    old_size: tuple[int, int], long_side: int
) -> tuple[int, int]:
    """`(height, width)` after resizing the longest side to `long_side`."""
    h, w = old_size
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def check_preprocess_shape(
    old_size: tuple[int, int], long_side: int, received: str
) -> tuple[int, int]:
    """`preprocess_shape`, or a ValueError when the short side would round
    to 0 pixels: an aspect ratio beyond about `2 * long_side : 1`.

    Args:
        old_size: `(H, W)` of the picture, both >= 1.
        long_side: the model's input size.
        received: the argument as the message shows it, e.g.
            `"image.shape=(1, 600, 3)"`.
    """
    new_size = preprocess_shape(old_size, long_side)
    if min(new_size) < 1:
        name = received.split("=")[0].split(".")[0]
        raise ValueError(
            f"`{name}` is too elongated for the model: resizing its long "
            f"side to {long_side} pixels rounds its short side to 0 "
            f"(aspect ratios up to about {2 * long_side}:1 fit). "
            f"Received: {received}"
        )
    return new_size


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 `(H, W, 3)` image to `size = (h, w)`, PIL bilinear.

    PIL's bilinear filter (antialiased when shrinking, 8-bit fixed point) is
    what the official predictor uses, through torchvision.
    """
    from PIL import Image

    if tuple(image.shape[:2]) == tuple(size):
        return image
    resized = Image.fromarray(image).resize(
        (size[1], size[0]), resample=Image.Resampling.BILINEAR
    )
    return np.asarray(resized)


def normalize_and_pad(image: np.ndarray, input_size: int) -> np.ndarray:
    """`(h, w, 3)` uint8 -> `(input_size, input_size, 3)` float32, normalised
    then zero-padded bottom/right."""
    mean = np.asarray(PIXEL_MEAN, np.float32)
    std = np.asarray(PIXEL_STD, np.float32)
    x = (image.astype(np.float32) - mean) / std
    h, w = x.shape[:2]
    return np.pad(x, ((0, input_size - h), (0, input_size - w), (0, 0)))


def apply_coords(
    coords: np.ndarray, old_size: tuple[int, int], new_size: tuple[int, int]
) -> np.ndarray:
    """Scale `(..., 2)` x, y pixel coordinates from `old_size` to
    `new_size` (both `(h, w)`)."""
    coords = np.array(coords, dtype=np.float64, copy=True)
    coords[..., 0] = coords[..., 0] * (new_size[1] / old_size[1])
    coords[..., 1] = coords[..., 1] * (new_size[0] / old_size[0])
    return coords


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """`(out_size, in_size)` matrix of a 1-D bilinear resize with
    `align_corners=False` and no antialias (PyTorch `F.interpolate`)."""
    scale = in_size / out_size
    src = (np.arange(out_size) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)  # PyTorch clamps negative positions to 0
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


@functools.lru_cache(maxsize=16)
def sparse_resize_map(
    low_res: int, padded: int, kept: int, original: int
) -> tuple[np.ndarray, np.ndarray]:
    """The composed resize-crop-resize map of one axis in sparse form:
    `(index, weight)`, both `(original, K)`, with
    `out[i] = sum_k weight[i, k] * in[index[i, k]]`."""
    up = bilinear_matrix(low_res, padded)[:kept]  # resize, then crop
    dense = bilinear_matrix(kept, original) @ up  # (original, low_res)
    k = max(1, int(np.max(np.count_nonzero(dense, axis=1))))
    index = np.argsort(-np.abs(dense), axis=1, kind="stable")[:, :k]
    weight = np.take_along_axis(dense, index, axis=1)
    return index, weight.astype(np.float32)


def resize_maps(low_res_size, input_size, original_size, padded_size):
    """The `(index, weight)` maps of the rows and of the columns that take
    low-res logits of `low_res_size` `(h, w)` to `original_size`."""
    return tuple(
        sparse_resize_map(low_res, padded, kept, original)
        for low_res, padded, kept, original in zip(
            low_res_size, padded_size, input_size, original_size, strict=True
        )
    )


def _apply_axis(x: np.ndarray, index, weight, axis: int) -> np.ndarray:
    """Apply a sparse `(index, weight)` map along `axis` of `x` (in place
    accumulation: the outputs are large)."""
    shape = [1] * x.ndim
    shape[axis] = -1
    out = np.take(x, index[:, 0], axis=axis)
    out *= weight[:, 0].reshape(shape)
    term = np.empty_like(out)
    for k in range(1, index.shape[1]):
        np.take(x, index[:, k], axis=axis, out=term)
        term *= weight[:, k].reshape(shape)
        out += term
    return out


# Output rows per block: each block's intermediate stays in cache, and the
# blocks are shared out among threads (NumPy releases the GIL in take/mul/add).
_ROWS_PER_BLOCK = 64


@functools.cache
def _thread_pool():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=_num_threads())


def _num_threads() -> int:
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def postprocess_masks(
    low_res_logits: np.ndarray,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    padded_size: tuple[int, int],
    threshold: float | None = None,
) -> np.ndarray:
    """Low-resolution logits `(..., h, w)` to the original image size.

    The output is computed in blocks of rows, on as many threads as this
    process may use; every block does exactly the same arithmetic, so the
    result does not depend on the thread count.

    Args:
        low_res_logits: `(..., h, w)` decoder logits (256x256 for SAM).
        input_size: `(h, w)` of the resized image inside the padded input.
        original_size: `(H, W)` of the image given to the predictor.
        padded_size: `(h, w)` of the padded model input (1024, 1024).
        threshold: None to return the logits; a number to return the bool
            masks `logits > threshold` (without the float32 intermediate).

    Returns:
        `(..., H, W)` float32 logits, or bool masks with `threshold`.
    """
    (y_index, y_weight), x_map = resize_maps(
        low_res_logits.shape[-2:], input_size, original_size, padded_size
    )
    logits = np.asarray(low_res_logits, np.float32)
    height, width = original_size
    dtype = np.float32 if threshold is None else bool
    out = np.empty(logits.shape[:-2] + (height, width), dtype)

    # Columns first, on the h low-res rows: the pass over the large output
    # then gathers whole contiguous rows (three per output row for SAM).
    columns = _apply_axis(logits, *x_map, axis=-1)  # (..., h, W)

    def block(start: int) -> None:
        stop = min(start + _ROWS_PER_BLOCK, height)
        values = _apply_axis(
            columns, y_index[start:stop], y_weight[start:stop], axis=-2
        )  # (..., rows, W)
        if threshold is None:
            out[..., start:stop, :] = values
        else:
            np.greater(values, threshold, out=out[..., start:stop, :])

    starts = range(0, height, _ROWS_PER_BLOCK)
    if _num_threads() == 1 or out.size < (1 << 20):
        for start in starts:
            block(start)
    else:
        # list() re-raises the first exception of any block.
        list(_thread_pool().map(block, starts))
    return out
