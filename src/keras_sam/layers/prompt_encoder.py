"""SAM's prompt encoder: points, boxes and masks to decoder inputs."""

import keras
import numpy as np
from keras import ops

from keras_sam import checks
from keras_sam.layers.positional_embedding import (
    RandomFrequencyPositionalEmbeddings,
)

# Label values of point prompts. -1 marks a padding "not a point".
LABEL_NOT_A_POINT = -1
LABEL_BACKGROUND = 0
LABEL_FOREGROUND = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3
VALID_LABELS = (-1, 0, 1, 2, 3)


@keras.saving.register_keras_serializable(package="keras_sam")
class SAMPromptEncoder(keras.layers.Layer):
    """Prompt encoder of the Segment Anything Model (SAM).

    Encodes three kinds of prompts for `SAMMaskDecoder`:

    - **Points** `(x, y)` with a label. A point is the random-frequency
      positional encoding of its pixel centre (`+0.5`), normalised by
      `input_image_size` (x by the width, y by the height), plus a learned
      embedding chosen by its label:

      | label | meaning | embedding |
      |---|---|---|
      | -1 | not a point (padding) | replaced by `not_a_point_embed` |
      | 0 | background | `+ background_point_embed` |
      | 1 | foreground | `+ foreground_point_embed` |
      | 2 | box top-left corner | `+ top_left_corner_embed` |
      | 3 | box bottom-right corner | `+ bottom_right_corner_embed` |

      Labels 2 and 3 follow the official ONNX model and SAM 2: a box may be
      passed as two labelled points and gives exactly the box's embedding.
      (The official PyTorch encoder gives 2 and 3 no type embedding at all;
      KerasHub treats every label but 0 and -1 as foreground.) Any other
      label raises a `ValueError` in eager execution; inside a compiled
      function it gets no type embedding.
    - **Boxes** `[[x1, y1], [x2, y2]]`: two corner tokens, each a positional
      encoding plus the top-left or bottom-right corner embedding.
    - **Masks**: a low-resolution mask (logits, `4 x image_embedding_size`)
      downscaled 4x by two stride-2 convolutions (LayerNorm eps 1e-6, exact
      GELU) and a 1x1 convolution to `hidden_size` channels. Without a mask,
      the learned `no_mask_embed` fills the dense embedding.

    This layer adds **no padding point**: KerasHub does the same, while the
    official encoder appends a `(0, 0)` point with label -1 whenever points
    are given without a box. `keras_sam.SAMPredictor` adds it, so predictor
    results match the official ones; callers of this layer who want official
    numbers append it themselves.

    Args:
        hidden_size: Width `C` of the embeddings (even).
        image_embedding_size: `(He, We)` of the image embedding (an int means
            a square).
        input_image_size: `(H, W)` of the padded model input that point and
            box coordinates refer to.
        mask_in_channels: Hidden channels of the mask downscaler (>= 4).
        activation: Activation of the mask downscaler; `"gelu"` is the exact
            (erf) GELU of the official model.

    Call arguments:
        images: ignored (a backbone may pass its whole input dict).
        points: float `(B, N, 2)`, `(x, y)` pixels in the `input_image_size`
            frame.
        labels: int or float `(B, N)`, values in {-1, 0, 1, 2, 3}; required
            with `points`.
        boxes: float `(B, M, 2, 2)`, `[[x1, y1], [x2, y2]]` pixels in the
            `input_image_size` frame.
        masks: float `(B, K, 4He, 4We, 1)` mask logits; `K = 0` means none.

        At least one input fixes the batch size `B`; inputs must agree on it.
        With no prompt at all the batch size is 1.

    Returns:
        A dict with
        - `"prompt_sparse_embeddings"`: `(B, N + 2M, C)`, points then box
          corners.
        - `"prompt_dense_embeddings"`: `(B*K, He, We, C)` for `K > 0` masks,
          `(B, He, We, C)` otherwise.
        - `"prompt_dense_positional_embeddings"`: `(1, He, We, C)`, the same
          for every prompt (broadcast by the decoder).

    Raises:
        ValueError: bad constructor values; inputs of the wrong rank or last
            dimension; labels without points or points without labels; a
            point/label count mismatch; batch sizes that differ; a mask whose
            size is not 4x the embedding size; (eagerly) labels outside
            {-1, 0, 1, 2, 3} or non-finite coordinates.

    Example:
    >>> encoder = keras_sam.layers.SAMPromptEncoder(
    ...     hidden_size=32, image_embedding_size=(8, 8),
    ...     input_image_size=(128, 128))
    >>> out = encoder(points=np.array([[[30.0, 40.0]]]), labels=np.array([[1]]))
    >>> tuple(out["prompt_sparse_embeddings"].shape)
    (1, 1, 32)
    >>> tuple(out["prompt_dense_positional_embeddings"].shape)
    (1, 8, 8, 32)

    Reference:
        Kirillov et al., "Segment Anything", ICCV 2023.
    """

    def __init__(
        self,
        *,
        hidden_size: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
        mask_in_channels: int = 16,
        activation: str = "gelu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        hidden_size = checks.integer("hidden_size", hidden_size)
        mask_in_channels = checks.integer("mask_in_channels", mask_in_channels)
        if hidden_size % 2:
            raise ValueError(
                "`hidden_size` must be a positive even integer (half the "
                f"features are sines, half cosines). Received: "
                f"hidden_size={hidden_size}"
            )
        if mask_in_channels < 4:
            raise ValueError(
                "`mask_in_channels` must be at least 4 (the first "
                "downscaling convolution has mask_in_channels // 4 "
                f"channels). Received: mask_in_channels={mask_in_channels}"
            )
        self.hidden_size = hidden_size
        self.image_embedding_size = checks.integer_pair(
            "image_embedding_size", image_embedding_size
        )
        self.input_image_size = checks.integer_pair(
            "input_image_size", input_image_size
        )
        self.mask_in_channels = mask_in_channels
        self.activation = activation
        self.mask_input_size = (
            4 * self.image_embedding_size[0],
            4 * self.image_embedding_size[1],
        )

        policy = self.dtype_policy
        self.positional_embedding_layer = RandomFrequencyPositionalEmbeddings(
            num_positional_features=self.hidden_size // 2,
            dtype=policy,
            name="positional_embedding_layer",
        )

        def embedding(name):
            return keras.layers.Embedding(
                1, self.hidden_size, dtype=policy, name=name
            )

        self.background_point_embed = embedding("background_point_embed")
        self.foreground_point_embed = embedding("foreground_point_embed")
        self.top_left_corner_embed = embedding("top_left_corner_embed")
        self.bottom_right_corner_embed = embedding("bottom_right_corner_embed")
        self.not_a_point_embed = embedding("not_a_point_embed")
        self.no_mask_embed = embedding("no_mask_embed")

        c = self.mask_in_channels
        self.mask_downscaler = keras.Sequential(
            [
                keras.layers.Conv2D(
                    c // 4, 2, strides=2, dtype=policy, name="conv_0"
                ),
                keras.layers.LayerNormalization(
                    epsilon=1e-6, dtype=policy, name="norm_0"
                ),
                keras.layers.Activation(activation, dtype=policy, name="act_0"),
                keras.layers.Conv2D(
                    c, 2, strides=2, dtype=policy, name="conv_1"
                ),
                keras.layers.LayerNormalization(
                    epsilon=1e-6, dtype=policy, name="norm_1"
                ),
                keras.layers.Activation(activation, dtype=policy, name="act_1"),
                keras.layers.Conv2D(
                    self.hidden_size, 1, dtype=policy, name="conv_2"
                ),
            ],
            name="mask_downscaler",
        )

    # -- Keras API -----------------------------------------------------------

    def build(
        self,
        points_shape=None,
        labels_shape=None,
        boxes_shape=None,
        masks_shape=None,
    ):
        self.positional_embedding_layer.build()
        for layer in self._type_embeddings() + [
            self.not_a_point_embed,
            self.no_mask_embed,
        ]:
            layer.build((None,))
        self.mask_downscaler.build((None, *self.mask_input_size, 1))

    def _type_embeddings(self) -> list:
        """The label-indexed embeddings, in label order 0, 1, 2, 3."""
        return [
            self.background_point_embed,
            self.foreground_point_embed,
            self.top_left_corner_embed,
            self.bottom_right_corner_embed,
        ]

    def compute_output_shape(
        self,
        images_shape=None,
        points_shape=None,
        labels_shape=None,
        boxes_shape=None,
        masks_shape=None,
    ):
        shapes = self._check_shapes(
            points_shape, labels_shape, boxes_shape, masks_shape
        )
        batch = shapes["batch"]
        num_tokens = 0
        if points_shape is not None:
            num_tokens = points_shape[1]
        if boxes_shape is not None:
            boxes_tokens = (
                None if boxes_shape[1] is None else 2 * boxes_shape[1]
            )
            num_tokens = (
                None
                if num_tokens is None or boxes_tokens is None
                else num_tokens + boxes_tokens
            )
        dense_batch = batch
        if masks_shape is not None and masks_shape[1] != 0:
            k = masks_shape[1]
            dense_batch = None if batch is None or k is None else batch * k
        he, we = self.image_embedding_size
        c = self.hidden_size
        return {
            "prompt_sparse_embeddings": (batch, num_tokens, c),
            "prompt_dense_embeddings": (dense_batch, he, we, c),
            "prompt_dense_positional_embeddings": (1, he, we, c),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "image_embedding_size": self.image_embedding_size,
                "input_image_size": self.input_image_size,
                "mask_in_channels": self.mask_in_channels,
                "activation": self.activation,
            }
        )
        return config

    # -- validation ----------------------------------------------------------

    def _check_shapes(self, points, labels, boxes, masks) -> dict:
        """Static checks on input shapes; returns the batch size (or None)."""
        if points is not None:
            checks.check_rank("points", points, 3, "(B, N, 2)")
            checks.check_dim("points", points, 2, 2, "size")
            if labels is None:
                raise ValueError(
                    "`labels` must be given with `points` (one label per "
                    f"point). Received: points.shape={points}, labels=None"
                )
        if labels is not None:
            if points is None:
                raise ValueError(
                    "`labels` were given without `points`. Received: "
                    f"labels.shape={labels}, points=None"
                )
            checks.check_rank("labels", labels, 2, "(B, N)")
            if None not in (points[1], labels[1]) and points[1] != labels[1]:
                raise ValueError(
                    "`labels` must have one label per point. Received: "
                    f"points.shape={points}, labels.shape={labels}"
                )
        if boxes is not None:
            checks.check_rank("boxes", boxes, 4, "(B, M, 2, 2)")
            checks.check_dim("boxes", boxes, 2, 2, "size")
            checks.check_dim("boxes", boxes, 3, 2, "size")
        if masks is not None:
            checks.check_rank("masks", masks, 5, "(B, K, 4*He, 4*We, 1)")
            checks.check_dim("masks", masks, 4, 1, "size")
            for axis, size in (
                (2, self.mask_input_size[0]),
                (3, self.mask_input_size[1]),
            ):
                checks.check_dim(
                    "masks",
                    masks,
                    axis,
                    size,
                    "4x the image embedding size, i.e.",
                )
        batch = checks.common_batch_size(
            {"points": points, "labels": labels, "boxes": boxes, "masks": masks}
        )
        if points is None and boxes is None and masks is None:
            batch = 1
        return {"batch": batch}

    @staticmethod
    def _check_values(points, labels, boxes, masks) -> None:
        """Eager-only checks on values (skipped inside traced functions)."""
        label_values = checks.concrete_values(labels)
        if label_values is not None and label_values.size:
            bad = ~np.isin(label_values, VALID_LABELS)
            if bad.any():
                raise ValueError(
                    "`labels` must take values in {-1, 0, 1, 2, 3} (-1 not a "
                    "point, 0 background, 1 foreground, 2/3 box corners). "
                    "Received: labels containing "
                    f"{np.unique(label_values[bad])}"
                )
        for name, x in (("points", points), ("boxes", boxes), ("masks", masks)):
            values = checks.concrete_values(x)
            if values is not None and not np.all(np.isfinite(values)):
                raise ValueError(
                    f"`{name}` must be finite. Received: {name} containing "
                    "NaN or infinity"
                )

    # -- encoding ------------------------------------------------------------

    def _embed_points(self, points, labels):
        points = ops.cast(points, "float32") + 0.5  # shift to pixel centre
        encoding = self.positional_embedding_layer.encode_coordinates(
            points, self.input_image_size
        )  # (B, N, C)
        # expand_dims, not [..., None]: LiteRT has no strided slice that
        # adds an axis to a tensor of two dynamic sizes.
        labels = ops.expand_dims(ops.cast(labels, "int32"), -1)  # (B, N, 1)
        table = ops.concatenate(
            [layer.embeddings for layer in self._type_embeddings()], axis=0
        )  # (4, C)
        table = ops.cast(table, encoding.dtype)
        has_type = ops.logical_and(labels >= 0, labels < 4)
        type_embedding = ops.take(table, ops.clip(labels[..., 0], 0, 3), axis=0)
        embedded = ops.where(has_type, encoding + type_embedding, encoding)
        not_a_point = ops.cast(
            self.not_a_point_embed.embeddings[0], encoding.dtype
        )
        return ops.where(labels == LABEL_NOT_A_POINT, not_a_point, embedded)

    def _embed_boxes(self, boxes):
        boxes = ops.cast(boxes, "float32") + 0.5  # shift to pixel centre
        encoding = self.positional_embedding_layer.encode_coordinates(
            boxes, self.input_image_size
        )  # (B, M, 2, C)
        corners = ops.concatenate(
            [
                self.top_left_corner_embed.embeddings,
                self.bottom_right_corner_embed.embeddings,
            ],
            axis=0,
        )  # (2, C)
        encoding = encoding + ops.cast(corners, encoding.dtype)
        shape = ops.shape(encoding)
        return ops.reshape(
            encoding, (shape[0], shape[1] * 2, self.hidden_size)
        )  # (B, 2M, C)

    def _embed_masks(self, masks):
        shape = checks.static_shape(masks)
        if shape[0] == 0:
            # TensorFlow's eager conv2d returns the input's spatial size for
            # an empty batch (TF 2.21); an empty batch needs no convolution.
            he, we = self.image_embedding_size
            return ops.zeros((0, he, we, self.hidden_size), self.compute_dtype)
        shape = ops.shape(masks)
        flat = ops.reshape(
            masks, (shape[0] * shape[1], shape[2], shape[3], shape[4])
        )  # (B*K, 4He, 4We, 1)
        return self.mask_downscaler(ops.cast(flat, self.compute_dtype))

    def _no_mask_dense(self, batch_size):
        he, we = self.image_embedding_size
        embed = ops.reshape(
            self.no_mask_embed.embeddings, (1, 1, 1, self.hidden_size)
        )
        return ops.broadcast_to(
            ops.cast(embed, self.compute_dtype),
            (batch_size, he, we, self.hidden_size),
        )

    def call(
        self, images=None, points=None, labels=None, boxes=None, masks=None
    ):
        del images  # accepted for KerasHub compatibility, unused
        shapes = {
            name: None if x is None else checks.static_shape(x)
            for name, x in (
                ("points", points),
                ("labels", labels),
                ("boxes", boxes),
                ("masks", masks),
            )
        }
        self._check_shapes(**shapes)
        self._check_values(points, labels, boxes, masks)

        given = [x for x in (points, boxes, masks) if x is not None]
        batch_size = ops.shape(given[0])[0] if given else 1

        sparse = []
        if points is not None:
            sparse.append(self._embed_points(points, labels))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        if sparse:
            sparse = ops.concatenate(sparse, axis=1)
        else:
            sparse = ops.zeros(
                (batch_size, 0, self.hidden_size), dtype=self.compute_dtype
            )

        num_masks = None if masks is None else shapes["masks"][1]
        if masks is None or num_masks == 0:
            dense = self._no_mask_dense(batch_size)
        elif num_masks is not None:
            dense = self._embed_masks(masks)
        else:
            # Mask count unknown until run time (graph mode).
            dense = ops.cond(
                ops.shape(masks)[1] == 0,
                lambda: self._no_mask_dense(batch_size),
                lambda: self._embed_masks(masks),
            )

        dense_pe = self.positional_embedding_layer.encode_image(
            self.image_embedding_size
        )[None]  # (1, He, We, C)
        return {
            "prompt_sparse_embeddings": sparse,
            "prompt_dense_embeddings": dense,
            "prompt_dense_positional_embeddings": dense_pe,
        }
