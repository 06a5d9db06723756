"""SAM from its exported ONNX files in ONNX Runtime, without Keras.

Imports NumPy, ONNX Runtime (when a predictor is made) and PIL (to resize
pictures) only, so it runs where Keras and its backends are not installed.
"""

import os
from pathlib import Path

import numpy as np

from keras_sam.export import interface
from keras_sam.inference import transforms

MASK_THRESHOLD = 0.0
POINT_LABELS = (-1, 0, 1, 2, 3)


class OnnxPredictor:
    """`SAMPredictor`'s interface on `decoder.onnx` (and `image_encoder.onnx`).

    Same semantics as `keras_sam.SAMPredictor`: prompts in the original
    picture's pixels, the official padding point added to points without a
    box, a box passed to the decoder as two corner points labelled 2 and 3
    (after the points), masks upscaled to the picture's size with the
    predictor's own upscaling (for the returned masks only; the decoder's
    `masks` output serves callers without NumPy, e.g. in a browser). The
    picture is resized here (PIL bilinear, as `SAMPredictor`) and
    normalised, padded and encoded by `image_encoder.onnx`.

    Not supported: `use_stability_fallback`. A decoder exported with
    `single_mask` returns the official export's choice of one mask, for
    `multimask_output=False` only.

    Args:
        folder: the export folder (`keras-sam export -o DIR`), holding
            `decoder.onnx` and, unless embeddings are set with
            `set_image_embedding`, `image_encoder.onnx`.
        providers: ONNX Runtime execution providers (default: CPU).
        threads: intra-op threads of the sessions (default: ONNX Runtime's).
        decode_chunk_size: most prompts decoded in one call.

    Example:
    >>> predictor = keras_sam.export.OnnxPredictor("exported/")
    ... # doctest: +SKIP
    >>> predictor.set_image(image)  # doctest: +SKIP
    >>> masks, scores, logits = predictor.predict(
    ...     point_coords=[[500, 375]], point_labels=[1])  # doctest: +SKIP
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        providers: list | None = None,
        threads: int | None = None,
        decode_chunk_size: int = 64,
    ):
        try:
            import onnxruntime
        except ImportError as e:
            raise ImportError(
                "OnnxPredictor needs onnxruntime: pip install "
                '"keras-sam[export]" (or pip install onnxruntime)'
            ) from e
        folder = Path(folder)
        decoder = folder / interface.DECODER_FILE
        if not decoder.is_file():
            raise ValueError(
                f"`folder` must hold {interface.DECODER_FILE} (made by "
                f"`keras-sam export`). Received: folder={str(folder)!r}"
            )
        if int(decode_chunk_size) < 1:
            raise ValueError(
                "`decode_chunk_size` must be an int >= 1. Received: "
                f"decode_chunk_size={decode_chunk_size}"
            )
        self.decode_chunk_size = int(decode_chunk_size)
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        providers = providers or ["CPUExecutionProvider"]

        def session(path):
            return onnxruntime.InferenceSession(
                str(path), options, providers=providers
            )

        self.decoder = session(decoder)
        encoder = folder / interface.IMAGE_ENCODER_FILE
        self.image_encoder = session(encoder) if encoder.is_file() else None
        meta = self.decoder.get_modelmeta().custom_metadata_map
        self.image_size = tuple(
            int(v) for v in meta[interface.META_INPUT_SIZE].split(",")
        )
        self.single_mask = meta.get(interface.META_SINGLE_MASK) == "1"
        shapes = {i.name: i.shape for i in self.decoder.get_inputs()}
        self.embedding_shape = tuple(shapes["image_embeddings"])
        self.mask_input_size = tuple(shapes["mask_input"][-2:])
        self.reset_image()

    # -- image ---------------------------------------------------------------

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.features = None
        self.original_size = None
        self.input_size = None
        self.is_image_set = False

    def set_image(self, image, image_format: str = "RGB") -> None:
        """Encode `image`, uint8 `(H, W, 3)`, with `image_encoder.onnx`.

        Raises:
            RuntimeError: the folder has no `image_encoder.onnx`.
            ValueError: as `SAMPredictor.set_image`.
        """
        if self.image_encoder is None:
            raise RuntimeError(
                f"The export folder has no {interface.IMAGE_ENCODER_FILE} "
                "(exported with --decoder-only?): set embeddings with "
                "`set_image_embedding` instead."
            )
        if image_format not in ("RGB", "BGR"):
            raise ValueError(
                "`image_format` must be 'RGB' or 'BGR'. Received: "
                f"image_format={image_format!r}"
            )
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(
                "`image` must be a uint8 array (H, W, 3). Received: "
                f"image.dtype={image.dtype}, image.shape={image.shape}"
            )
        if min(image.shape[:2]) < 1:
            raise ValueError(
                f"`image` must not be empty. Received: image.shape="
                f"{image.shape}"
            )
        if image_format == "BGR":
            image = image[..., ::-1]
        original_size = tuple(int(v) for v in image.shape[:2])
        input_size = transforms.check_preprocess_shape(
            original_size, max(self.image_size), f"image.shape={image.shape}"
        )
        self.reset_image()
        resized = transforms.resize_image(
            np.ascontiguousarray(image), input_size
        )
        (features,) = self.image_encoder.run(
            list(interface.IMAGE_ENCODER_OUTPUTS),
            {interface.IMAGE_ENCODER_INPUTS[0]: resized},
        )
        self.set_image_embedding(features, original_size)

    def get_image_embedding(self) -> np.ndarray:
        """The current image embedding, float32 `(1, C, He, We)`."""
        self._require_image()
        return self.features

    def set_image_embedding(
        self, embedding, original_size: tuple[int, int]
    ) -> None:
        """Use an embedding `(1, C, He, We)` (channels first, as
        `image_encoder.onnx` gives it; `SAMPredictor.get_image_embedding()`
        is channels-last: `.transpose(0, 3, 1, 2)`) of a picture of
        `original_size` (H, W).

        Raises:
            ValueError: a wrong shape, NaN or infinity, a bad size.
        """
        embedding = np.ascontiguousarray(embedding, np.float32)
        if embedding.shape != self.embedding_shape:
            raise ValueError(
                f"`embedding` must have shape {self.embedding_shape} "
                "(1, C, He, We). Received: embedding.shape="
                f"{embedding.shape}"
            )
        if not np.all(np.isfinite(embedding)):
            raise ValueError(
                "`embedding` must be finite. Received: embedding containing "
                "NaN or infinite values"
            )
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
        self.input_size = transforms.check_preprocess_shape(
            (h, w), max(self.image_size), f"original_size={original_size!r}"
        )
        self.features = embedding
        self.original_size = (h, w)
        self.is_image_set = True

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError(
                "An image must be set with `set_image` or "
                "`set_image_embedding` before predicting."
            )

    # -- prediction ----------------------------------------------------------

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ):
        """Masks for one prompt, as `SAMPredictor.predict`.

        Returns:
            `(masks (C, H, W), scores (C,), low_res_logits (C, h, w))`.
        """
        self._require_image()
        prompts = self._prepare(point_coords, point_labels, box, mask_input, 1)
        logits, scores = self._decode(prompts, multimask_output)
        masks = self.upscale(logits, None if return_logits else MASK_THRESHOLD)
        return masks[0], scores[0], logits[0]

    def predict_batch(
        self,
        point_coords=None,
        point_labels=None,
        boxes=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ):
        """Masks for `B` prompts, as `SAMPredictor.predict_batch`:
        `point_coords` `(B, N, 2)`, `point_labels` `(B, N)`, `boxes`
        `(B, 4)`, `mask_input` `(B, 1, h, w)` or `(B, h, w)`.

        Returns:
            `(masks (B, C, H, W), scores (B, C), low_res_logits
            (B, C, h, w))`.
        """
        self._require_image()
        if point_coords is None and boxes is None and mask_input is None:
            raise ValueError(
                "A prompt batch needs at least one of point_coords, boxes "
                "or mask_input: it has no batch size otherwise."
            )
        prompts = self._prepare(
            point_coords, point_labels, boxes, mask_input, None
        )
        logits, scores = self._decode(prompts, multimask_output)
        masks = self.upscale(logits, None if return_logits else MASK_THRESHOLD)
        return masks, scores, logits

    def upscale(self, low_res_logits, threshold: float | None = None):
        """Low-res logits `(..., h, w)` to the picture's size `(..., H, W)`
        (float32 logits, or bool masks `logits > threshold`)."""
        self._require_image()
        return transforms.postprocess_masks(
            low_res_logits,
            self.input_size,
            self.original_size,
            self.image_size,
            threshold=threshold,
        )

    def _prepare(self, point_coords, point_labels, boxes, mask_input, one):
        """Checked prompts as the decoder's `point_coords`, `point_labels`
        (model frame, padding point and box corners included) and
        `mask_input` (None without one). `one`: 1 for `predict`, None for
        a batch."""
        rank = 1 if one else 2
        coords = labels = None
        batch = None
        if point_coords is not None or point_labels is not None:
            if point_coords is None or point_labels is None:
                missing = (
                    "point_labels" if point_labels is None else ("point_coords")
                )
                raise ValueError(
                    "`point_coords` and `point_labels` go together. "
                    f"Received: {missing}=None"
                )
            coords = _array("point_coords", point_coords, rank + 1, 2)
            labels = _array("point_labels", point_labels, rank, None)
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
            self._check_inside("point_coords", coords)
            if one:
                coords, labels = coords[None], labels[None]
            batch = coords.shape[0]
        if boxes is not None:
            name = "box" if one else "boxes"
            box = _array(name, boxes, rank, 4)
            if one:
                box = box[None]
            if np.any(box[:, 2] < box[:, 0]) or np.any(box[:, 3] < box[:, 1]):
                raise ValueError(
                    f"`{name}` must be x1, y1, x2, y2 with x2 >= x1 and "
                    f"y2 >= y1. Received: {name}={box.tolist()}"
                )
            corners = box.reshape(-1, 2, 2)
            self._check_inside(name, corners)
            if batch is not None and box.shape[0] != batch:
                raise ValueError(
                    "`boxes` must have one box per prompt of the batch. "
                    f"Received: {box.shape[0]} boxes for {batch} point "
                    "prompts"
                )
            batch = box.shape[0]
            corner_labels = np.tile([[2.0, 3.0]], (batch, 1))
            if coords is None:
                coords, labels = corners, corner_labels
            else:
                coords = np.concatenate([coords, corners], axis=1)
                labels = np.concatenate([labels, corner_labels], axis=1)
        elif coords is not None:
            # The official padding point: (0, 0) with label -1.
            coords = np.concatenate([coords, np.zeros((batch, 1, 2))], 1)
            labels = np.concatenate([labels, -np.ones((batch, 1))], 1)
        masks = None
        if mask_input is not None:
            masks = np.asarray(mask_input, np.float32)
            if not one and masks.ndim == 3:
                masks = masks[:, None]
            expected = (1, 1, *self.mask_input_size)
            if not one:
                expected = (masks.shape[0],) + expected[1:]
            if masks.shape[-3:] != expected[-3:] or (
                one and masks.shape != expected[1:]
            ):
                raise ValueError(
                    f"`mask_input` must have shape {expected[int(bool(one)) :]}"
                    ": low-resolution logits from an earlier prediction. "
                    f"Received: mask_input.shape={masks.shape}"
                )
            if not np.all(np.isfinite(masks)):
                raise ValueError(
                    "`mask_input` must be finite. Received: mask_input "
                    "containing NaN or infinity"
                )
            masks = masks.reshape((-1, 1, *self.mask_input_size))
            if batch is not None and masks.shape[0] != batch:
                raise ValueError(
                    "`mask_input` must have one mask per prompt of the "
                    f"batch. Received: {masks.shape[0]} masks for {batch} "
                    "prompts"
                )
            batch = masks.shape[0]
        if coords is None:
            coords = np.zeros((batch, 0, 2))
            labels = np.zeros((batch, 0))
        coords = transforms.apply_coords(
            coords, self.original_size, self.input_size
        )
        return {
            "point_coords": coords.astype(np.float32),
            "point_labels": labels.astype(np.float32),
            "mask_input": masks,
        }

    def _check_inside(self, name: str, coords: np.ndarray) -> None:
        h, w = self.original_size
        x, y = coords[..., 0], coords[..., 1]
        if np.any(x < 0) or np.any(x > w) or np.any(y < 0) or np.any(y > h):
            raise ValueError(
                f"`{name}` must lie inside the image (0 <= x <= {w}, "
                f"0 <= y <= {h}). Received: {name} with x in "
                f"[{x.min()}, {x.max()}], y in [{y.min()}, {y.max()}]"
            )

    def _decode(self, prompts, multimask_output):
        """`(B, C, h, w)` low-res logits and `(B, C)` scores of the masks
        to return, decoded in chunks of `decode_chunk_size`."""
        if not isinstance(multimask_output, (bool, np.bool_)):
            raise ValueError(
                "`multimask_output` must be a bool. Received: "
                f"multimask_output={multimask_output!r}"
            )
        if self.single_mask and multimask_output:
            raise ValueError(
                "This decoder was exported with a single mask per prompt: "
                "pass multimask_output=False. Received: "
                "multimask_output=True"
            )
        coords, labels = prompts["point_coords"], prompts["point_labels"]
        masks = prompts["mask_input"]
        batch = coords.shape[0]
        fixed = {
            "image_embeddings": self.features,
            "orig_im_size": np.asarray(self.original_size, np.float32),
        }
        logits, scores = [], []
        for start in range(0, max(batch, 1), self.decode_chunk_size):
            stop = start + self.decode_chunk_size
            rows = slice(start, stop)
            if batch == 0:  # one empty-batch call for the output shapes
                rows = slice(0, 1)
                coords, labels = np.zeros((1, 1, 2)), -np.ones((1, 1))
            feed = dict(
                fixed,
                point_coords=np.ascontiguousarray(coords[rows], np.float32),
                point_labels=np.ascontiguousarray(labels[rows], np.float32),
                mask_input=np.zeros((1, 1, *self.mask_input_size), np.float32)
                if masks is None
                else np.ascontiguousarray(masks[rows]),
                has_mask_input=np.asarray([masks is not None], np.float32),
            )
            iou, low_res = self.decoder.run(
                ["iou_predictions", "low_res_masks"], feed
            )
            logits.append(low_res[: batch - start])
            scores.append(iou[: batch - start])
        logits, scores = np.concatenate(logits), np.concatenate(scores)
        if not self.single_mask:
            keep = slice(1, None) if multimask_output else slice(0, 1)
            logits, scores = logits[:, keep], scores[:, keep]
        return logits, scores


def _array(name: str, value, rank: int, last: int | None) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"`{name}` must be an array of numbers. Received: {name}={value!r}"
        ) from e
    if array.ndim != rank or (last is not None and array.shape[-1] != last):
        raise ValueError(
            f"`{name}` must have {rank} dimensions"
            + ("" if last is None else f", the last of size {last}")
            + f". Received: {name}.shape={array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"`{name}` must be finite. Received: {name} containing NaN or "
            "infinity"
        )
    return array
