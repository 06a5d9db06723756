"""What `SAMPredictor` and `OnnxPredictor` share, in NumPy alone.

The current picture (its size, the size it is resized to, its embedding),
the checks of pictures and embeddings, users' prompts checked and moved to
the model's 1024 frame with the official padding point, and the upscaling
of low-res logits to the picture. No Keras: `OnnxPredictor` runs where it
is not installed.
"""

import numpy as np

from keras_sam.inference import transforms
from keras_sam.inference.user_prompts import check_prompts

MASK_THRESHOLD = 0.0


def rgb_image(image, image_format: str) -> np.ndarray:
    """`image`, uint8 `(H, W, 3)` in `image_format` ("RGB" or "BGR"), as
    RGB (a view).

    Raises:
        ValueError: another format, dtype or shape, or an empty picture.
    """
    if image_format not in ("RGB", "BGR"):
        raise ValueError(
            "`image_format` must be 'RGB' or 'BGR'. Received: "
            f"image_format={image_format!r}"
        )
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(
            "`image` must be a uint8 array (H, W, 3). Received: "
            f"image.dtype={image.dtype}"
        )
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            "`image` must have shape (H, W, 3) (RGB or BGR). Received: "
            f"image.shape={image.shape}"
        )
    if min(image.shape[:2]) < 1:
        raise ValueError(
            f"`image` must not be empty. Received: image.shape={image.shape}"
        )
    return image[..., ::-1] if image_format == "BGR" else image


class PredictorBase:
    """The picture state and prompt preparation of a SAM predictor.

    Subclasses set `image_size` (the model's input `(H, W)`) and
    `mask_input_size` (`(h, w)` of its low-res logits), call
    `reset_image()` in `__init__`, and encode pictures themselves, then
    hand the embedding to `_use_embedding`.
    """

    image_size: tuple[int, int]
    mask_input_size: tuple[int, int]

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.features = None
        self.original_size = None
        self.input_size = None
        self.is_image_set = False

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError(
                "An image must be set with `set_image` or "
                "`set_image_embedding` before predicting."
            )

    def _input_size(self, original_size, what: str) -> tuple[int, int]:
        """`(h, w)` of a picture of `original_size` resized to the model's
        long side; `what` names the argument in the `ValueError` of a
        picture too elongated for it."""
        return transforms.check_preprocess_shape(
            original_size, max(self.image_size), what
        )

    def _check_embedding(self, embedding, shape: tuple) -> np.ndarray:
        """`embedding` as float32 of `shape`, finite.

        Raises:
            ValueError: another shape, NaN or infinity.
        """
        embedding = np.asarray(embedding, np.float32)
        if embedding.shape != tuple(shape):
            raise ValueError(
                f"`embedding` must have shape {tuple(shape)}. Received: "
                f"embedding.shape={embedding.shape}"
            )
        if not np.all(np.isfinite(embedding)):
            raise ValueError(
                "`embedding` must be finite. Received: embedding containing "
                f"{np.count_nonzero(~np.isfinite(embedding))} NaN or "
                "infinite values"
            )
        return embedding

    def _use_embedding(self, embedding, original_size) -> None:
        """Make `embedding` (checked by the caller) the current picture's,
        a picture of `original_size` `(H, W)`.

        Raises:
            ValueError: `original_size` not two positive ints, or too
                elongated for the model.
        """
        try:
            h, w = (int(v) for v in original_size)
        except (TypeError, ValueError) as e:
            raise ValueError(
                "`original_size` must be (height, width). Received: "
                f"original_size={original_size!r}"
            ) from e
        if h < 1 or w < 1:
            raise ValueError(
                "`original_size` must be positive. Received: "
                f"original_size={original_size!r}"
            )
        input_size = self._input_size(
            (h, w), f"original_size={original_size!r}"
        )
        self.features = embedding
        self.original_size = (h, w)
        self.input_size = input_size
        self.is_image_set = True

    def _prepare(
        self, point_coords, point_labels, boxes, mask_input, batch_shape
    ) -> dict:
        """Users' prompts checked (`check_prompts`) and moved to the model
        frame, as the prompt encoder's arguments: `points` `(B, N, 2)`
        float32 and `labels` `(B, N)` int32 (the official padding point
        `(0, 0)` labelled -1 appended when there is no box), `boxes`
        `(B, 1, 2, 2)` float32, `masks` `(B, 1, h, w, 1)` float32; only
        those given. `batch_shape`: `()` for one prompt (`B = 1`),
        `("B",)` for a batch."""
        checked = check_prompts(
            point_coords,
            point_labels,
            boxes,
            mask_input,
            image_size=self.original_size,
            mask_input_size=self.mask_input_size,
            batch_shape=batch_shape,
        )
        prompts = {}
        if "point_coords" in checked:
            coords = transforms.apply_coords(
                checked["point_coords"], self.original_size, self.input_size
            )
            prompts["points"] = coords.astype(np.float32)
            prompts["labels"] = checked["point_labels"].astype(np.int32)
        if "box" in checked:
            box = checked["box"]
            corners = transforms.apply_coords(
                box.reshape(box.shape[:-1] + (2, 2)),
                self.original_size,
                self.input_size,
            )
            prompts["boxes"] = corners.reshape((-1, 1, 2, 2)).astype(np.float32)
        if "mask_input" in checked:
            prompts["masks"] = checked["mask_input"].reshape(
                (-1, 1) + tuple(self.mask_input_size) + (1,)
            )
        if not batch_shape:
            for key in ("points", "labels"):
                if key in prompts:
                    prompts[key] = prompts[key][None]
        if "points" in prompts and "boxes" not in prompts:
            # The official encoder's padding point: (0, 0) with label -1.
            b = prompts["points"].shape[0]
            prompts["points"] = np.concatenate(
                [prompts["points"], np.zeros((b, 1, 2), np.float32)], axis=1
            )
            prompts["labels"] = np.concatenate(
                [prompts["labels"], -np.ones((b, 1), np.int32)], axis=1
            )
        return prompts

    def _prepare_batch(self, point_coords, point_labels, boxes, mask_input):
        """`_prepare` of a batch, which needs a prompt to have a size."""
        self._require_image()
        if point_coords is None and boxes is None and mask_input is None:
            raise ValueError(
                "A prompt batch needs at least one of point_coords, boxes "
                "or mask_input: it has no batch size otherwise."
            )
        return self._prepare(
            point_coords, point_labels, boxes, mask_input, ("B",)
        )

    def upscale(self, low_res_logits, threshold: float | None = None):
        """Low-res logits `(..., 256, 256)` of the current image to its
        original size `(..., H, W)`: float32 logits, or the bool masks
        `logits > threshold`."""
        self._require_image()
        return self._postprocess_masks(
            low_res_logits,
            self.input_size,
            self.original_size,
            self.image_size,
            threshold=threshold,
        )

    def _postprocess_masks(self, *args, **kwargs):
        """`transforms.postprocess_masks` (NumPy, on every core); a
        subclass may compute it elsewhere."""
        return transforms.postprocess_masks(*args, **kwargs)
