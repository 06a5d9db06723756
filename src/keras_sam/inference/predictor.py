"""Interactive prediction with SAM: set an image once, prompt it many times."""

from collections.abc import Iterator

import keras
import numpy as np

from keras_sam import checks
from keras_sam.backend.device import on_accelerator
from keras_sam.inference import device_upscale
from keras_sam.inference import transforms
from keras_sam.inference.amg_utils import stability_score
from keras_sam.inference.predictor_base import MASK_THRESHOLD
from keras_sam.inference.predictor_base import PredictorBase
from keras_sam.inference.predictor_base import rgb_image


class SAMPredictor(PredictorBase):
    """Segment an image from points, boxes and mask prompts.

    The semantics are those of the official `SamPredictor`: `set_image`
    resizes the longest side to the model's input size (PIL bilinear, the
    official rounding), normalises with the ImageNet mean and std, pads
    bottom/right and runs the image encoder once; `predict` scales prompt
    coordinates into that frame, appends the official padding point when
    points come without a box, decodes, and upsamples the selected masks to
    the original image size (bilinear to the padded size, crop, bilinear to
    the original size, composed into one matrix per axis).

    Full-size masks take `B * C * H * W` bytes (8.4 GiB for 1,000 prompts
    with three masks each on a 1500x2000 picture). `predict_batch_iter`
    yields them chunk by chunk instead, `(masks, scores, low_res_logits)`
    of at most `chunk_size` prompts at a time, so that only one chunk of
    full-size masks is held at once; `predict_low_res` skips the upscaling
    altogether and `upscale` does it later for the masks one keeps.

    Any aspect ratio works whose short side, once the long side is resized
    to the model's input size, rounds to at least one pixel (up to
    2048:1 for a 1024 input, 512:1 for 256); longer pictures are refused
    with a `ValueError`. Embeddings with NaN or infinity are refused too:
    from `set_image_embedding`, or out of the image encoder (bad weights,
    float16 overflow), since their masks and scores would look normal.

    Args:
        model: a `keras_sam.SAM`.
        use_stability_fallback: with `multimask_output=False`, replace the
            single-mask output by the best multimask output (by predicted
            IoU) when its stability score is below `stability_thresh`, as
            SAM 2 does. Off by default (official SAM behaviour).
        stability_delta: logit offset of that stability score.
        stability_thresh: minimum stability of the single-mask output.
        decode_chunk_size: most prompts decoded in one call. Batches are
            split into chunks of this size and each chunk is padded to a
            power of two, so that the compiled decoder is traced for a few
            shapes only (not once per prompt count) and memory stays
            bounded.

    Example:
    >>> predictor = keras_sam.SAMPredictor(model)  # doctest: +SKIP
    >>> predictor.set_image(image)  # uint8 (H, W, 3) RGB  # doctest: +SKIP
    >>> masks, scores, logits = predictor.predict(
    ...     point_coords=[[500, 375]], point_labels=[1])  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        *,
        use_stability_fallback: bool = False,
        stability_delta: float = 0.05,
        stability_thresh: float = 0.98,
        decode_chunk_size: int = 64,
    ):
        self.model = model
        if not model.built:
            model.build()
        self.decode_chunk_size = int(decode_chunk_size)
        if self.decode_chunk_size < 1:
            raise ValueError(
                "`decode_chunk_size` must be an int >= 1. Received: "
                f"decode_chunk_size={decode_chunk_size}"
            )
        self.use_stability_fallback = checks.boolean(
            "use_stability_fallback", use_stability_fallback
        )
        self.stability_delta = float(stability_delta)
        self.stability_thresh = float(stability_thresh)
        self.image_size = tuple(model.prompt_encoder.input_image_size)
        self.mask_input_size = tuple(model.prompt_encoder.mask_input_size)
        self.reset_image()

    # -- image ---------------------------------------------------------------

    def set_image(self, image, image_format: str = "RGB") -> None:
        """Compute the embedding of `image`, uint8 `(H, W, 3)`.

        Args:
            image: uint8 `(H, W, 3)` array.
            image_format: `"RGB"` or `"BGR"` channel order of `image`.

        Raises:
            ValueError: a wrong dtype or shape, an empty image, an image so
                elongated that its short side would be resized to 0
                pixels, or an image encoder that gives NaN or infinity
                (the previous image is forgotten then).
        """
        image = rgb_image(image, image_format)
        original_size = image.shape[:2]
        input_size = self._input_size(
            original_size, f"image.shape={image.shape}"
        )
        # As the official predictor: the old image goes before encoding.
        self.reset_image()
        resized = transforms.resize_image(
            np.ascontiguousarray(image), input_size
        )
        model_input = transforms.normalize_and_pad(resized, self.image_size[0])
        features = self.model.compiled_method("encode_image")(model_input[None])
        features = keras.ops.convert_to_numpy(features)
        if not np.all(np.isfinite(features)):
            raise ValueError(
                "The image encoder gave a non-finite embedding (NaN or "
                "infinity) for this image, so its masks and scores would be "
                "meaningless: check the model's weights and dtype policy "
                "(float16 can overflow). Received: image.shape="
                f"{image.shape}"
            )
        self._use_embedding(features, original_size)

    def get_image_embedding(self) -> np.ndarray:
        """The current image embedding, `(1, He, We, C)` float32."""
        self._require_image()
        return self.features

    def set_image_embedding(
        self, embedding, original_size: tuple[int, int]
    ) -> None:
        """Reuse a stored embedding of an image of `original_size` (H, W).

        Raises:
            ValueError: an embedding of the wrong shape or with NaN or
                infinity, or an `original_size` that is not two positive
                ints or too elongated for the model.
        """
        he, we = self.model.prompt_encoder.image_embedding_size
        c = self.model.prompt_encoder.hidden_size
        embedding = self._check_embedding(embedding, (1, he, we, c))
        self._use_embedding(embedding, original_size)

    def reset_image(self) -> None:
        super().reset_image()
        self._device_embedding = None

    def _decoder_embedding(self):
        """The current embedding as the decoder takes it: on a GPU or TPU a
        copy kept there for the current picture (the official predictor
        keeps its features on the device too), else the NumPy array."""
        if not on_accelerator():
            return self.features
        kept = self._device_embedding
        if kept is None or kept[0] is not self.features:
            kept = (self.features, keras.ops.convert_to_tensor(self.features))
            self._device_embedding = kept
        return kept[1]

    def _run_decoder(self, prompts) -> tuple[np.ndarray, np.ndarray]:
        """All `(B, T, h, w)` low-res logits and `(B, T)` scores.

        Prompt batches go through the compiled decoder in chunks of at most
        `decode_chunk_size`, each padded (by repeating its last prompt) to a
        power of two: compiled functions are traced per input shape, so any
        batch size reuses one of a few traces, and large batches keep a
        bounded working set. The padding rows are dropped.
        """
        decode = self.model.compiled_method("decode")

        def run(chunk, rows=None):
            out = decode(self._decoder_embedding(), **chunk)
            return (
                keras.ops.convert_to_numpy(out["masks"])[:rows],
                keras.ops.convert_to_numpy(out["iou_pred"])[:rows],
            )

        if not prompts:
            return run({})
        batch = next(iter(prompts.values())).shape[0]
        if batch == 0:
            # An empty batch: decode one zero prompt for the output shapes.
            one = {
                k: np.zeros((1,) + v.shape[1:], v.dtype)
                for k, v in prompts.items()
            }
            return run(one, 0)
        chunk_size = self.decode_chunk_size  # validated >= 1
        logits, scores = [], []
        for start in range(0, batch, chunk_size):
            chunk = {
                k: v[start : start + chunk_size] for k, v in prompts.items()
            }
            rows = next(iter(chunk.values())).shape[0]
            padded = min(1 << (rows - 1).bit_length(), chunk_size)
            if padded > rows:
                chunk = {
                    k: np.concatenate(
                        [v, np.repeat(v[-1:], padded - rows, axis=0)]
                    )
                    for k, v in chunk.items()
                }
            chunk_logits, chunk_scores = run(chunk, rows)
            logits.append(chunk_logits)
            scores.append(chunk_scores)
        if len(logits) == 1:
            return logits[0], scores[0]
        return np.concatenate(logits), np.concatenate(scores)

    def _decode(self, prompts, multimask_output: bool):
        logits, scores = self._run_decoder(prompts)  # (B, T, h, w), (B, T)
        if multimask_output:
            return logits[:, 1:], scores[:, 1:]
        single, single_score = logits[:, :1], scores[:, :1]
        if self.use_stability_fallback and logits.shape[1] > 1:
            stable = stability_score(
                single[:, 0], MASK_THRESHOLD, self.stability_delta, empty=1.0
            )
            best = 1 + np.argmax(scores[:, 1:], axis=1)
            rows = np.arange(logits.shape[0])
            unstable = stable < self.stability_thresh
            single = np.where(
                unstable[:, None, None, None],
                logits[rows, best][:, None],
                single,
            )
            single_score = np.where(
                unstable[:, None], scores[rows, best][:, None], single_score
            )
        return single, single_score

    def _postprocess_masks(self, *args, **kwargs):
        """On a GPU or TPU the backend upscales there and only the result
        comes back to the host; on a CPU NumPy does, on every core (same
        arithmetic, same results up to float rounding)."""
        if on_accelerator():
            return device_upscale.postprocess_masks(*args, **kwargs)
        return super()._postprocess_masks(*args, **kwargs)

    def _finish(self, logits, scores, return_logits: bool):
        masks = self.upscale(
            logits, threshold=None if return_logits else MASK_THRESHOLD
        )
        return masks, scores, logits

    # -- public prediction ---------------------------------------------------

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ):
        """Masks for one prompt on the current image.

        Args:
            point_coords: `(N, 2)` x, y pixels in the original image.
            point_labels: `(N,)`: 1 foreground, 0 background (2/3 box
                corners, -1 ignored).
            box: `(4,)` x1, y1, x2, y2 pixels in the original image.
            mask_input: `(1, 256, 256)` low-resolution logits from an
                earlier `predict` (its third output), not a binary mask.
            multimask_output: three masks for an ambiguous prompt (True) or
                one (False).
            return_logits: return logits instead of boolean masks.

        Returns:
            `(masks, scores, low_res_logits)`: `(C, H, W)` bool (or float32
            logits), `(C,)` predicted IoUs, `(C, 256, 256)` logits, with
            `C = 3` for multimask output and 1 otherwise.

        Raises:
            RuntimeError: no image set.
            ValueError: a prompt of the wrong shape, non-finite, outside the
                image, a box with x2 < x1 or y2 < y1, a wrong `mask_input`
                size; `multimask_output` or `return_logits` not a bool.
        """
        multimask_output = checks.boolean("multimask_output", multimask_output)
        return_logits = checks.boolean("return_logits", return_logits)
        self._require_image()
        prompts = self._prepare(point_coords, point_labels, box, mask_input, ())
        logits, scores = self._decode(prompts, multimask_output)
        masks, scores, logits = self._finish(logits, scores, return_logits)
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
        """Masks for a batch of B prompts on the current image, decoded
        together (e.g. several boxes at once).

        All `B * C` full-size masks are returned at once; for many prompts
        on a large picture, `predict_batch_iter` yields them in chunks.

        Args:
            point_coords: `(B, N, 2)`; point_labels: `(B, N)`.
            boxes: `(B, 4)` x1, y1, x2, y2.
            mask_input: `(B, 1, 256, 256)` or `(B, 256, 256)` logits.
            multimask_output, return_logits: as in `predict`.

        Returns:
            `(masks (B, C, H, W), scores (B, C), low_res_logits
            (B, C, 256, 256))`; empty arrays of these shapes for `B = 0`.
        """
        return_logits = checks.boolean("return_logits", return_logits)
        logits, scores = self.predict_low_res(
            point_coords, point_labels, boxes, mask_input, multimask_output
        )
        return self._finish(logits, scores, return_logits)

    def predict_batch_iter(
        self,
        point_coords=None,
        point_labels=None,
        boxes=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
        *,
        chunk_size: int = 64,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`predict_batch` in chunks of at most `chunk_size` prompts, in
        order, holding the full-size masks of one chunk at a time.

        The prompts are all checked before this returns, so a bad prompt
        raises here, not halfway through the iteration. Concatenating the
        chunks along axis 0 gives `predict_batch`'s result (up to float32
        rounding of the decoder on other batch sizes). An empty batch
        yields no chunk.

        Args:
            point_coords, point_labels, boxes, mask_input, multimask_output,
                return_logits: as in `predict_batch`.
            chunk_size: most prompts per chunk, an int >= 1.

        Returns:
            An iterator of `(masks (b, C, H, W), scores (b, C),
            low_res_logits (b, C, 256, 256))` with `b <= chunk_size`.

        Example:
        >>> for masks, scores, _ in predictor.predict_batch_iter(
        ...         boxes=boxes, chunk_size=16):  # doctest: +SKIP
        ...     save(masks)  # doctest: +SKIP
        """
        multimask_output = checks.boolean("multimask_output", multimask_output)
        return_logits = checks.boolean("return_logits", return_logits)
        chunk_size = checks.integer("chunk_size", chunk_size, 1)
        prompts = self._prepare_batch(
            point_coords, point_labels, boxes, mask_input
        )
        batch = next(iter(prompts.values())).shape[0]

        def chunks():
            for start in range(0, batch, chunk_size):
                chunk = {
                    k: v[start : start + chunk_size] for k, v in prompts.items()
                }
                logits, scores = self._decode(chunk, multimask_output)
                yield self._finish(logits, scores, return_logits)

        return chunks()

    def predict_low_res(
        self,
        point_coords=None,
        point_labels=None,
        boxes=None,
        mask_input=None,
        multimask_output: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The decoder's low-resolution logits and scores for a batch of B
        prompts, not upscaled: for callers that filter masks before paying
        for the upscaling to the image size (as the automatic mask generator
        does), then upscale the rest with `upscale`.

        Arguments as in `predict_batch`.

        Returns:
            `(low_res_logits (B, C, 256, 256), scores (B, C))` NumPy.
        """
        multimask_output = checks.boolean("multimask_output", multimask_output)
        prompts = self._prepare_batch(
            point_coords, point_labels, boxes, mask_input
        )
        return self._decode(prompts, multimask_output)
