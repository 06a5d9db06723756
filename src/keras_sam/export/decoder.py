"""The decoder as exported: SAM's prompt side with the official ONNX
interface (`keras_sam.export.interface`)."""

import keras
from keras import ops

from keras_sam.backend.export import upscale_masks
from keras_sam.export import interface


class DecoderExport(keras.Model):
    """Prompt encoder + mask decoder + upscaling, on the official ONNX
    decoder's inputs and outputs.

    Points and labels go through `SAMPromptEncoder` (labels -1 to 3, box
    corners as points labelled 2 and 3, the padding point included by the
    caller). The dense prompt embedding is `has_mask_input *
    mask_downscaler(mask_input) + (1 - has_mask_input) * no_mask_embed`, as
    in the official export, with `mask_input` of batch 1 or `B`. All the
    decoder's masks are returned, or with `single_mask` the one the
    official rule picks: `argmax(iou + (N - 2.5) * [1000, 0, ...])` with
    `N` the number of points (padding and box corners included). The
    low-res logits are upscaled to the runtime `orig_im_size` as the
    predictor upscales them (bilinear to the padded input size, crop to
    the resized picture, bilinear to the original size).

    Exported on the TensorFlow backend (`keras_sam.backend.export`).

    Args:
        prompt_encoder: a `SAMPromptEncoder`.
        mask_decoder: a `SAMMaskDecoder`.
        single_mask: return one mask per prompt (official rule).

    Call arguments:
        inputs: dict keyed by `interface.DECODER_INPUTS`: `image_embeddings`
            `(1, C, He, We)`, `point_coords` `(B, N, 2)` x, y in the model's
            input frame, `point_labels` `(B, N)`, `mask_input` `(B or 1, 1,
            4He, 4We)`, `has_mask_input` `(1,)`, `orig_im_size` `(2,)` H, W.

    Returns:
        dict keyed by `interface.DECODER_OUTPUTS`: `masks` `(B, M, H, W)`,
        `iou_predictions` `(B, M)`, `low_res_masks` `(B, M, 4He, 4We)`
        logits, with `M` all the decoder's masks or 1.
    """

    def __init__(
        self,
        prompt_encoder,
        mask_decoder,
        *,
        single_mask: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.single_mask = bool(single_mask)
        self.built = True  # of built parts; Keras' export checks it

    def input_specs(self) -> dict:
        """`{name: (shape, dtype)}` of the inputs; dynamic axes by name."""
        c = self.prompt_encoder.hidden_size
        he, we = self.prompt_encoder.image_embedding_size
        mh, mw = self.prompt_encoder.mask_input_size
        shapes = (
            (1, c, he, we),
            ("B", "N", 2),
            ("B", "N"),
            ("B_mask", 1, mh, mw),
            (1,),
            (2,),
        )
        return {
            name: (shape, "float32")
            for name, shape in zip(
                interface.DECODER_INPUTS, shapes, strict=True
            )
        }

    def output_shapes(self) -> dict:
        """`{name: shape}` of the outputs, in interface order."""
        m = 1 if self.single_mask else self.mask_decoder.num_mask_tokens
        mh, mw = self.prompt_encoder.mask_input_size
        shapes = (("B", m, "H", "W"), ("B", m), ("B", m, mh, mw))
        return dict(zip(interface.DECODER_OUTPUTS, shapes, strict=True))

    def metadata(self) -> dict:
        """What `OnnxPredictor` needs beyond the tensor shapes."""
        h, w = self.prompt_encoder.input_image_size
        return {
            interface.META_INPUT_SIZE: f"{h},{w}",
            interface.META_SINGLE_MASK: str(int(self.single_mask)),
        }

    def call(self, inputs):
        encoder = self.prompt_encoder
        c = encoder.hidden_size
        he, we = encoder.image_embedding_size
        embeddings = ops.transpose(inputs["image_embeddings"], (0, 2, 3, 1))
        points = inputs["point_coords"]
        prompts = encoder(points=points, labels=inputs["point_labels"])
        sparse = prompts["prompt_sparse_embeddings"]  # (B, N, C)

        # Dense prompt: the downscaled mask, or the no-mask embedding.
        masks = ops.transpose(inputs["mask_input"], (0, 2, 3, 1))
        has_mask = ops.reshape(inputs["has_mask_input"], (1, 1, 1, 1))
        no_mask = ops.reshape(encoder.no_mask_embed.embeddings, (1, 1, 1, c))
        dense = has_mask * encoder.mask_downscaler(masks) + (1.0 - has_mask) * (
            no_mask
        )  # (B or 1, He, We, C)
        batch = ops.shape(sparse)[0]
        dense = ops.broadcast_to(dense, (batch, he, we, c))

        out = self.mask_decoder(
            image_embeddings=embeddings,
            prompt_dense_positional_embeddings=prompts[
                "prompt_dense_positional_embeddings"
            ],
            prompt_sparse_embeddings=sparse,
            prompt_dense_embeddings=dense,
        )
        low_res, iou = out["masks"], out["iou_pred"]  # (B, M, h, w), (B, M)
        if self.single_mask:
            low_res, iou = self._select(low_res, iou, ops.shape(points)[1])
        masks = upscale_masks(
            low_res, inputs["orig_im_size"], encoder.input_image_size
        )
        return {
            "masks": masks,
            "iou_predictions": iou,
            "low_res_masks": low_res,
        }

    def _select(self, low_res, iou, num_points):
        """The official single-mask choice, per prompt."""
        weight = [interface.SINGLE_MASK_WEIGHT] + [0.0] * (
            self.mask_decoder.num_mask_tokens - 1
        )
        offset = ops.cast(num_points, "float32") - (
            interface.SINGLE_MASK_POINT_OFFSET
        )
        score = iou + offset * ops.convert_to_tensor(weight)
        # top_k, not argmax: Keras' TensorFlow argmax uses a Bitcast that
        # ONNX lacks. Ties go to the first index in both.
        _, best = ops.top_k(score, 1)  # (B, 1)
        best = ops.cast(best[:, 0], "int32")
        low_res = ops.take_along_axis(low_res, best[:, None, None, None], 1)
        iou = ops.take_along_axis(iou, best[:, None], 1)
        return low_res, iou
