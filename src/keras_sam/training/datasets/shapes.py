"""A synthetic instance-segmentation dataset of textured shapes.

`make_scene` draws a picture from a seed: a gradient background with noise
and clutter, then 2-5 objects (ellipses, rectangles, convex polygons,
stars; rotated, log-uniform sizes) filled with a solid colour, stripes, a
checkerboard or a noisy gradient. Later objects occlude earlier ones; the
masks are the visible parts. `ShapesDataset` turns scenes into prompted
training batches for SAM in the model frame.

Everything is NumPy (`np.random.default_rng` only) and Pillow's `ImageDraw`,
so a seed gives the same arrays on every machine and backend.
"""

import math
from collections.abc import Sequence

import keras
import numpy as np
from PIL import Image
from PIL import ImageDraw

from keras_sam.checks import integer
from keras_sam.inference import transforms

SHAPE_KINDS = ("ellipse", "rectangle", "polygon", "star")
TEXTURE_KINDS = ("solid", "stripes", "checker", "gradient")
PROMPT_KINDS = ("point", "box", "mixed")

# Object size: the radius is log-uniform in this range, as a fraction of the
# image's shorter side.
_RADIUS_RANGE = (0.06, 0.3)
# Attempts to find a scene with an object that survives the downscaling to
# the decoder's low-res size (almost always the first).
_MAX_ATTEMPTS = 32


def _image_size(value) -> tuple[int, int]:
    try:
        size = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) < 16:
        raise ValueError(
            "`image_size` must be two ints (height, width), each >= 16. "
            f"Received: image_size={value}"
        )
    return size


def _num_objects(value) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in value)
    except (TypeError, ValueError):
        low, high = 0, -1
    if not 1 <= low <= high:
        raise ValueError(
            "`num_objects` must be two ints (min, max) with 1 <= min <= max. "
            f"Received: num_objects={value}"
        )
    return low, high


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _outline(rng: np.random.Generator, kind: str, radius: float):
    """`(P, 2)` polygon vertices (x, y) around the origin."""
    if kind == "ellipse":
        t = np.linspace(0.0, 2 * np.pi, 64, endpoint=False)
        b = radius * rng.uniform(0.4, 1.0)
        points = np.stack([radius * np.cos(t), b * np.sin(t)], axis=1)
    elif kind == "rectangle":
        half_w, half_h = radius, radius * rng.uniform(0.3, 1.0)
        points = np.array(
            [[-half_w, -half_h], [half_w, -half_h], [half_w, half_h]]
            + [[-half_w, half_h]]
        )
    elif kind == "polygon":
        # Vertices on a circle at sorted angles: a convex polygon.
        n = int(rng.integers(3, 9))
        t = np.sort(rng.uniform(0.0, 2 * np.pi, n))
        points = radius * np.stack([np.cos(t), np.sin(t)], axis=1)
    else:  # star: alternating outer and inner radii
        n = int(rng.integers(4, 8))
        t = np.arange(2 * n) * (np.pi / n)
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.35, 0.6))
        points = radius * r[:, None] * np.stack([np.cos(t), np.sin(t)], 1)
    return _rotate(points, rng.uniform(0.0, 2 * np.pi))


def _polygon_mask(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=1)
    return np.asarray(canvas, dtype=bool)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, 3)


def _texture(rng, kind: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """`(H, W, 3)` float texture over the whole image."""
    c1 = _colour(rng)
    if kind == "solid":
        return np.broadcast_to(c1, (*yy.shape, 3))
    c2 = _colour(rng)
    if kind == "stripes":
        angle = rng.uniform(0.0, np.pi)
        period = rng.uniform(4.0, 16.0)
        phase = xx * math.cos(angle) + yy * math.sin(angle)
        t = np.floor(phase / period) % 2
    elif kind == "checker":
        period = int(rng.integers(4, 17))
        t = (xx // period + yy // period) % 2
    else:  # gradient with noise
        angle = rng.uniform(0.0, 2 * np.pi)
        phase = xx * math.cos(angle) + yy * math.sin(angle)
        t = (phase - phase.min()) / max(float(np.ptp(phase)), 1.0)
        noise = rng.normal(0.0, rng.uniform(0.0, 12.0), (*yy.shape, 3))
        return c1 + t[..., None] * (c2 - c1) + noise
    return c1 + t[..., None] * (c2 - c1)


def _background(rng, size: tuple[int, int], yy, xx) -> np.ndarray:
    """Gradient, noise and clutter (lines, dots); uint8 `(H, W, 3)`."""
    h, w = size
    image = _texture(rng, "gradient", yy, xx)
    image = np.clip(image, 0, 255).astype(np.uint8)
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(5, 21))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.5:
            length = rng.uniform(0.02, 0.2) * min(h, w)
            angle = rng.uniform(0.0, 2 * np.pi)
            end = (x + length * math.cos(angle), y + length * math.sin(angle))
            draw.line([(x, y), end], fill=colour, width=int(rng.integers(1, 3)))
        else:
            r = rng.uniform(1.0, 3.0)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    return np.asarray(canvas)


def make_scene(
    seed: int | Sequence[int],
    image_size: tuple[int, int] = (256, 256),
    num_objects: tuple[int, int] = (2, 5),
    *,
    min_visible_fraction: float = 0.002,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a synthetic scene and the visible masks of its objects.

    A background (two-colour gradient at a random angle, Gaussian noise,
    5-20 random thin lines and dots of clutter) is overlaid with
    `num_objects` objects drawn back to front. Each object is an ellipse, a
    rectangle, a convex polygon (3-8 vertices) or a star (4-7 points), rotated
    at random, its radius log-uniform in 6-30% of the shorter image side,
    its centre in the middle 80% of the image, filled with a solid colour,
    stripes, a checkerboard or a noisy gradient. Later objects occlude
    earlier ones: each mask holds the pixels where its object is visible, so
    the masks are disjoint. Objects whose visible area is below
    `min_visible_fraction` of the image are dropped from the masks (their
    slivers stay in the picture as unlabelled clutter).

    Args:
        seed: Anything `np.random.default_rng` takes (an int or a sequence
            of non-negative ints); the same seed gives the same arrays.
        image_size: `(H, W)`, each >= 16.
        num_objects: `(min, max)` objects drawn, both inclusive.
        min_visible_fraction: Smallest visible area kept, as a fraction of
            `H * W`.

    Returns:
        `(image, masks)`: uint8 `(H, W, 3)` RGB and bool `(K, H, W)` with
        `K <= max` (objects kept), in drawing order (back to front).

    Raises:
        ValueError: bad `image_size`, `num_objects` or
            `min_visible_fraction`.

    Example:
    >>> image, masks = make_scene(0)
    >>> image.shape, image.dtype, masks.shape[1:], masks.dtype
    ((256, 256, 3), dtype('uint8'), (256, 256), dtype('bool'))
    """
    size = _image_size(image_size)
    low, high = _num_objects(num_objects)
    if not 0 <= float(min_visible_fraction) < 1:
        raise ValueError(
            "`min_visible_fraction` must be in [0, 1). Received: "
            f"min_visible_fraction={min_visible_fraction}"
        )
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    image = _background(rng, size, yy, xx).astype(np.float64)

    owner = np.full(size, -1, np.int32)  # index of the visible object
    count = int(rng.integers(low, high + 1))
    for k in range(count):
        kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
        radius = min(h, w) * math.exp(rng.uniform(*np.log(_RADIUS_RANGE)))
        centre = rng.uniform(0.1, 0.9, 2) * (w, h)
        shape = _polygon_mask(_outline(rng, kind, radius) + centre, size)
        texture = TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
        image[shape] = _texture(rng, texture, yy, xx)[shape]
        owner[shape] = k

    min_area = float(min_visible_fraction) * h * w
    masks = [owner == k for k in range(count)]
    masks = [m for m in masks if m.sum() >= max(min_area, 1.0)]
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if not masks:
        return image, np.zeros((0, h, w), bool)
    return image, np.stack(masks)


def _model_frame_mask(
    mask: np.ndarray, resized: tuple[int, int], input_size: int, factor: int
) -> np.ndarray:
    """Bool `(H, W)` mask -> float32 `{0, 1}` mask at the decoder size.

    Same geometry as the image: resize (bilinear, antialiased) to the
    resized image size, zero-pad to the model input, then average `factor x
    factor` blocks and threshold at 0.5.
    """
    canvas = Image.fromarray(mask.astype(np.float32))  # mode "F"
    coverage = np.asarray(
        canvas.resize(
            (resized[1], resized[0]), resample=Image.Resampling.BILINEAR
        ),
        np.float32,
    )
    padded = np.zeros((input_size, input_size), np.float32)
    padded[: resized[0], : resized[1]] = coverage
    m = input_size // factor
    blocks = padded.reshape(m, factor, m, factor).mean(axis=(1, 3))
    return (blocks >= 0.5).astype(np.float32)


class ShapesDataset(keras.utils.PyDataset):
    """Prompted training batches of synthetic scenes for SAM, in the model
    frame.

    Example `j` (`0 <= j < num_examples`) draws the scene
    `make_scene((seed, j, attempt, 1), image_size, num_objects)`, picks one
    of its objects uniformly (among those still non-empty at the decoder's
    low-res size; `attempt` moves on, rarely, when there is none) and a
    prompt for it:

    - a **point**: a foreground point uniform over the object's visible
      pixels, plus the official padding point `(0, 0)` with label -1;
    - a **box**: the mask's tight box `[x1, y1, x2, y2]` (inclusive pixel
      indices, as SAM's `batched_mask_to_box`), each coordinate moved by
      Gaussian noise of standard deviation `box_noise` times the box side,
      capped at `max_box_noise` pixels of a 1024-pixel input (SAM's
      appendix A: 10% of the side, at most 20 pixels), clipped to the image.
      It is encoded as two points with labels 2 (top-left) and 3
      (bottom-right): `SAMPromptEncoder` embeds them exactly as the box, and
      every example of a batch then has the same structure.

    Example `j` depends only on `(seed, j)`, not on the batch size or the
    order of access.

    With `prompts_per_image=K`, each example carries `K` prompts on its one
    image (the encoder then runs once for `K` supervised masks, see
    `keras_sam.SAM`'s call): prompt `k` targets object `order[k % n]` of a
    random order of the `n` usable objects, so every object is prompted
    before any is prompted twice, and draws its own kind (for `"mixed"`),
    point or box.

    Args:
        num_examples: Number of examples (the last batch may be smaller).
        batch_size: Examples per batch.
        seed: Non-negative int.
        image_size: `(H, W)` of the generated scenes.
        prompt: `"point"`, `"box"` or `"mixed"` (each example a box with
            probability `box_fraction`, else a point).
        input_size: Side of the square padded model input (the image
            encoder's `image_shape[0]`, 1024 for SAM).
        mask_size: Side of the ground-truth masks: by default the
            decoder's low-res masks (the prompt encoder's
            `mask_input_size`, `4x` the embedding), `input_size // 4`
            (patch size 16); or a multiple of it, up to `input_size` (the
            input's pixels), which `SAMLoss` compares with the upsampled
            logits. Must divide `input_size`.
        num_objects: `(min, max)` objects per scene.
        box_noise: Standard deviation of the box jitter, fraction of the
            side.
        max_box_noise: Cap of the box jitter, in pixels of a 1024 input
            (scaled by `input_size / 1024`).
        box_fraction: Probability that a `"mixed"` prompt is a box, in
            `[0, 1]` (default 1/2).
        prompts_per_image: None (one prompt per example) or an int `K >= 1`
            (`K` prompts per example, each with its own target mask).
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of
            `keras.utils.PyDataset`.

    Returns (each item):
        `(x, y)` of NumPy arrays, `B` the batch size:

        - `x["images"]`: float32 `(B, S, S, 3)`, `S = input_size`: the
          scene resized so that its long side is `S` (PIL bilinear,
          `transforms.preprocess_shape`), normalised with SAM's pixel mean
          and std, zero-padded bottom/right: the `keras_sam.SAM` input.
        - `x["points"]`: float32 `(B, 2, 2)`, `(x, y)` pixels in the padded
          model frame (scaled like `SAMPredictor`'s coordinates): `[point,
          (0, 0)]` or `[top-left, bottom-right]`.
        - `x["labels"]`: int32 `(B, 2)`: `[1, -1]` (point) or `[2, 3]`
          (box).
        - `y`: float32 `(B, M, M)`, `M = mask_size`, ground truth in {0, 1}
          at the decoder's low-res size: the visible mask resized like the
          image, padded, `S/M x S/M` block-averaged and thresholded at 0.5.

        With `prompts_per_image=K`, `x["points"]` is `(B, K, 2, 2)`,
        `x["labels"]` `(B, K, 2)` and `y` `(B, K, M, M)`.

    Raises:
        ValueError: bad argument values.

    Example:
    >>> data = ShapesDataset(8, 4, seed=0, input_size=64)
    >>> x, y = data[0]
    >>> x["images"].shape, x["points"].shape, x["labels"].shape, y.shape
    ((4, 64, 64, 3), (4, 2, 2), (4, 2), (4, 16, 16))
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        seed: int,
        image_size: tuple[int, int] = (256, 256),
        prompt: str = "mixed",
        *,
        input_size: int = 1024,
        mask_size: int | None = None,
        num_objects: tuple[int, int] = (2, 5),
        box_noise: float = 0.1,
        max_box_noise: float = 20.0,
        box_fraction: float = 0.5,
        prompts_per_image: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value, low in (
            ("num_examples", num_examples, 1),
            ("batch_size", batch_size, 1),
            ("seed", seed, 0),
            ("input_size", input_size, 4),
        ):
            integer(name, value, low)
        if prompt not in PROMPT_KINDS:
            raise ValueError(
                f"`prompt` must be one of {PROMPT_KINDS}. Received: "
                f"prompt={prompt!r}"
            )
        input_size = int(input_size)
        if mask_size is None:
            mask_size = input_size // 4
        if (
            int(mask_size) != mask_size
            or mask_size < 1
            or input_size % int(mask_size)
        ):
            raise ValueError(
                "`mask_size` must be a positive int dividing `input_size`. "
                f"Received: mask_size={mask_size}, input_size={input_size}"
            )
        for name, value in (
            ("box_noise", box_noise),
            ("max_box_noise", max_box_noise),
        ):
            if not float(value) >= 0:
                raise ValueError(
                    f"`{name}` must be a non-negative number. Received: "
                    f"{name}={value}"
                )
        if not 0.0 <= float(box_fraction) <= 1.0:
            raise ValueError(
                "`box_fraction` must be a number in [0, 1]. Received: "
                f"box_fraction={box_fraction}"
            )
        if prompts_per_image is not None:
            prompts_per_image = integer("prompts_per_image", prompts_per_image)
        self.prompts_per_image = (
            None if prompts_per_image is None else int(prompts_per_image)
        )
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.image_size = _image_size(image_size)
        self.prompt = prompt
        self.input_size = input_size
        self.mask_size = int(mask_size)
        self.num_objects = _num_objects(num_objects)
        self.box_noise = float(box_noise)
        self.max_box_noise = float(max_box_noise)
        self.box_fraction = float(box_fraction)
        # Where the scene lands inside the padded model input.
        self.resized_size = transforms.preprocess_shape(
            self.image_size, self.input_size
        )

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(
                f"Batch index out of range. Received: index={index}, "
                f"len={len(self)}"
            )
        start = index * self.batch_size
        stop = min(start + self.batch_size, self.num_examples)
        if self.prompts_per_image is None:
            examples = [self.example(j) for j in range(start, stop)]
        else:
            examples = [
                self.multi_prompt_example(j) for j in range(start, stop)
            ]
        x = {
            "images": np.stack([e["images"] for e in examples]),
            "points": np.stack([e["points"] for e in examples]),
            "labels": np.stack([e["labels"] for e in examples]),
        }
        return x, np.stack([e["y"] for e in examples])

    def example(self, index: int) -> dict:
        """Example `index`, in both frames.

        Returns:
            A dict with, in the scene's frame, `"image"` uint8 `(H, W, 3)`,
            `"mask"` bool `(H, W)` (the object's visible pixels),
            `"prompt"` (`"point"` or `"box"`) and `"coords"` float32
            `(2, 2)` (the prompt's `(x, y)` pixels, `(0, 0)` for the padding
            point); and the model-frame arrays of one batch row:
            `"images"` `(S, S, 3)`, `"points"` `(2, 2)`, `"labels"` `(2,)`,
            `"y"` `(M, M)`.
        """
        image, usable, rng = self._usable_objects(index, stream=2)
        mask, y = usable[0]
        kind, coords, points, labels = self._prompt(rng, mask)
        return {
            "image": image,
            "mask": mask,
            "prompt": kind,
            "coords": coords,
            "images": self._model_image(image),
            "points": points,
            "labels": labels,
            "y": y,
        }

    def multi_prompt_example(self, index: int) -> dict:
        """Example `index` with `K = prompts_per_image` prompts.

        Returns:
            A dict with `"image"` uint8 `(H, W, 3)`, `"masks"` bool
            `(K, H, W)`, `"prompts"` (K kinds), `"coords"` float32
            `(K, 2, 2)` in the scene's frame, and the model-frame
            `"images"` `(S, S, 3)`, `"points"` `(K, 2, 2)`, `"labels"`
            `(K, 2)`, `"y"` `(K, M, M)`.
        """
        count = self.prompts_per_image or 1
        image, usable, rng = self._usable_objects(index, stream=3)
        rows = []
        for i in range(count):
            mask, y = usable[i % len(usable)]
            rows.append((mask, y, *self._prompt(rng, mask)))
        return {
            "image": image,
            "masks": np.stack([r[0] for r in rows]),
            "prompts": [r[2] for r in rows],
            "coords": np.stack([r[3] for r in rows]),
            "images": self._model_image(image),
            "points": np.stack([r[4] for r in rows]),
            "labels": np.stack([r[5] for r in rows]),
            "y": np.stack([r[1] for r in rows]),
        }

    def _usable_objects(self, index: int, stream: int):
        """`(image, [(mask, y), ...], rng)` of example `index`: its scene's
        objects still non-empty at the decoder's size, in a random order
        drawn from `rng = default_rng((seed, index, attempt, stream))`
        (which then draws the prompts); `attempt` moves on, rarely, past
        scenes without such an object."""
        if not 0 <= index < self.num_examples:
            raise IndexError(
                f"Example index out of range. Received: index={index}, "
                f"num_examples={self.num_examples}"
            )
        factor = self.input_size // self.mask_size
        for attempt in range(_MAX_ATTEMPTS):
            key = (self.seed, index, attempt)
            image, masks = make_scene(
                (*key, 1), self.image_size, self.num_objects
            )
            rng = np.random.default_rng((*key, stream))
            usable = []
            for k in rng.permutation(len(masks)):
                y = _model_frame_mask(
                    masks[k], self.resized_size, self.input_size, factor
                )
                if y.any():
                    usable.append((masks[k], y))
            if usable:
                return image, usable, rng
        raise RuntimeError(  # pragma: no cover - 32 scenes without an object
            f"No usable object in {_MAX_ATTEMPTS} scenes for example "
            f"{index}; image_size={self.image_size} is too small for "
            f"mask_size={self.mask_size}"
        )

    def _model_image(self, image: np.ndarray) -> np.ndarray:
        return transforms.normalize_and_pad(
            transforms.resize_image(image, self.resized_size),
            self.input_size,
        )

    def _prompt(self, rng, mask: np.ndarray):
        """`(kind, coords, points, labels)` of one prompt for `mask`."""
        kind = self.prompt
        if kind == "mixed":
            # 1 - 0.5 == 0.5 exactly: the default draws as before.
            kind = "point" if rng.random() < 1.0 - self.box_fraction else "box"
        if kind == "point":
            coords, labels = self._point(rng, mask), [1, -1]
        else:
            coords, labels = self._box(rng, mask), [2, 3]
        # (0, 0) padding stays (0, 0) under the scaling.
        points = transforms.apply_coords(
            coords, self.image_size, self.resized_size
        )
        return (
            kind,
            coords,
            points.astype(np.float32),
            np.asarray(labels, np.int32),
        )

    @staticmethod
    def _point(rng, mask: np.ndarray) -> np.ndarray:
        rows, cols = np.nonzero(mask)
        i = int(rng.integers(len(rows)))
        return np.array([[cols[i], rows[i]], [0, 0]], np.float32)

    def _box(self, rng, mask: np.ndarray) -> np.ndarray:
        rows, cols = np.nonzero(mask)
        box = np.array(
            [cols.min(), rows.min(), cols.max(), rows.max()], np.float64
        )
        sides = np.array([box[2] - box[0], box[3] - box[1]] * 2)
        # The cap is in pixels of a 1024 input; back to the scene's frame.
        scale = self.resized_size[0] / self.image_size[0]
        cap = self.max_box_noise * (self.input_size / 1024) / scale
        noise = rng.normal(0.0, 1.0, 4) * self.box_noise * sides
        box = box + np.clip(noise, -cap, cap)
        h, w = self.image_size
        box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
        x1, x2 = sorted(box[0::2])
        y1, y2 = sorted(box[1::2])
        return np.array([[x1, y1], [x2, y2]], np.float32)
