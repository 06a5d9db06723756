"""SAM from its exported ONNX files in ONNX Runtime, without Keras.

Imports NumPy, ONNX Runtime (when a predictor is made) and PIL (to resize
pictures) only, so it runs where Keras and its backends are not installed.
"""

import os
from pathlib import Path

import numpy as np

from keras_sam.export import interface
from keras_sam.inference import transforms
from keras_sam.inference.predictor_base import MASK_THRESHOLD
from keras_sam.inference.predictor_base import PredictorBase
from keras_sam.inference.predictor_base import rgb_image


class OnnxPredictor(PredictorBase):
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
        image = rgb_image(image, image_format)
        original_size = tuple(int(v) for v in image.shape[:2])
        input_size = self._input_size(
            original_size, f"image.shape={image.shape}"
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
        embedding = self._check_embedding(embedding, self.embedding_shape)
        self._use_embedding(np.ascontiguousarray(embedding), original_size)

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
        prompts = self._prepare(point_coords, point_labels, box, mask_input, ())
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
        prompts = self._prepare_batch(
            point_coords, point_labels, boxes, mask_input
        )
        logits, scores = self._decode(prompts, multimask_output)
        masks = self.upscale(logits, None if return_logits else MASK_THRESHOLD)
        return masks, scores, logits

    def _decoder_inputs(self, prompts: dict) -> dict:
        """The prompt encoder's arguments (`PredictorBase._prepare`) as
        the official ONNX interface takes them: a box as two corner points
        labelled 2 and 3 after the points, labels float32, masks
        `(B, 1, h, w)` (None without)."""
        coords, labels = prompts.get("points"), prompts.get("labels")
        if "boxes" in prompts:
            corners = prompts["boxes"].reshape(-1, 2, 2)
            corner_labels = np.tile([[2, 3]], (len(corners), 1))
            if coords is None:
                coords, labels = corners, corner_labels
            else:
                coords = np.concatenate([coords, corners], axis=1)
                labels = np.concatenate([labels, corner_labels], axis=1)
        masks = prompts.get("masks")
        if masks is not None:
            masks = masks[..., 0]
        if coords is None:
            batch = masks.shape[0]
            coords, labels = np.zeros((batch, 0, 2)), np.zeros((batch, 0))
        return {
            "point_coords": coords.astype(np.float32),
            "point_labels": labels.astype(np.float32),
            "mask_input": masks,
        }

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
        prompts = self._decoder_inputs(prompts)
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
