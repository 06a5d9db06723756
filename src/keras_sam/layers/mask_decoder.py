"""SAM's mask decoder: image and prompt embeddings to masks and IoU scores."""

import functools

import keras
from keras import ops

from keras_sam import checks
from keras_sam.backend.compile import fuse_elementwise
from keras_sam.layers.mlp import MLP
from keras_sam.layers.two_way_transformer import TwoWayTransformer


@keras.saving.register_keras_serializable(package="keras_sam")
class SAMMaskDecoder(keras.layers.Layer):
    """Mask decoder of the Segment Anything Model (SAM).

    Learned output tokens (one IoU token, `1 + num_multimask_outputs` mask
    tokens) are prepended to the prompt tokens. A `TwoWayTransformer` lets the
    tokens and the image embedding (plus the dense prompt embedding) attend to
    each other. The image side is then upscaled 4x by two transposed
    convolutions (`C -> C/4 -> C/8`, LayerNorm eps 1e-6 and exact GELU after
    the first, GELU after the second); each mask token passes through its own
    3-layer MLP (ReLU) to a `C/8` vector whose dot product with every pixel of
    the upscaled embedding gives that mask's logits. The IoU token passes
    through the IoU head (ReLU, no sigmoid) to one predicted IoU per mask.

    All masks are returned; the caller selects. Index 0 is the single-mask
    output (the official `multimask_output=False`), indices `1..n` the
    multimask outputs (`multimask_output=True`). The image embedding may have
    batch 1 and is then shared by every prompt without being copied.

    Args:
        hidden_size: Width of the two-way transformer; must equal
            `embedding_dim` (the transformer runs on the embeddings).
        num_layers: Blocks in the two-way transformer.
        intermediate_dim: Hidden width of the transformer MLPs.
        num_heads: Attention heads; must divide `hidden_size // 2`.
        embedding_dim: Width `C` of image and prompt embeddings (divisible
            by 8).
        num_multimask_outputs: Extra masks `n` for ambiguous prompts.
        iou_head_depth: Dense layers in the IoU head.
        iou_head_hidden_dim: Hidden width of the IoU head.
        activation: Activation of the upscaling network; `"gelu"` is the
            exact (erf) GELU of the official model.

    Call arguments:
        image_embeddings: `(Bi, He, We, C)` with `Bi` 1 or `B`.
        prompt_dense_positional_embeddings: `(1 or B, He, We, C)`.
        prompt_sparse_embeddings: `(B, N, C)`.
        prompt_dense_embeddings: `(B, He, We, C)`.

    Returns:
        A dict with `"masks"`: `(B, 1 + n, 4He, 4We)` mask logits and
        `"iou_pred"`: `(B, 1 + n)` predicted IoUs.

    Raises:
        ValueError: bad constructor values; inputs of the wrong rank, width
            or spatial size; batch sizes that cannot broadcast.

    Example:
    >>> decoder = keras_sam.layers.SAMMaskDecoder(
    ...     hidden_size=32, num_layers=2, intermediate_dim=64, num_heads=2,
    ...     embedding_dim=32)
    >>> out = decoder(
    ...     image_embeddings=np.zeros((1, 8, 8, 32)),
    ...     prompt_dense_positional_embeddings=np.zeros((1, 8, 8, 32)),
    ...     prompt_sparse_embeddings=np.zeros((2, 3, 32)),
    ...     prompt_dense_embeddings=np.zeros((2, 8, 8, 32)))
    >>> tuple(out["masks"].shape), tuple(out["iou_pred"].shape)
    ((2, 4, 32, 32), (2, 4))

    Reference:
        Kirillov et al., "Segment Anything", ICCV 2023.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_layers: int,
        intermediate_dim: int,
        num_heads: int,
        embedding_dim: int = 256,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        activation: str = "gelu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        hidden_size = checks.integer("hidden_size", hidden_size)
        embedding_dim = checks.integer("embedding_dim", embedding_dim, 8)
        if embedding_dim % 8:
            raise ValueError(
                "`embedding_dim` must be divisible by 8 (the upscaler "
                f"produces embedding_dim // 8 channels). Received: "
                f"embedding_dim={embedding_dim}"
            )
        if hidden_size != embedding_dim:
            raise ValueError(
                "`hidden_size` must equal `embedding_dim`: the two-way "
                "transformer runs on the prompt and image embeddings. "
                f"Received: hidden_size={hidden_size}, "
                f"embedding_dim={embedding_dim}"
            )
        self.hidden_size = hidden_size
        self.num_layers = checks.integer("num_layers", num_layers)
        self.intermediate_dim = checks.integer(
            "intermediate_dim", intermediate_dim
        )
        self.num_heads = checks.integer("num_heads", num_heads)
        self.embedding_dim = embedding_dim
        self.num_multimask_outputs = checks.integer(
            "num_multimask_outputs", num_multimask_outputs, 0
        )
        self.iou_head_depth = checks.integer("iou_head_depth", iou_head_depth)
        self.iou_head_hidden_dim = checks.integer(
            "iou_head_hidden_dim", iou_head_hidden_dim
        )
        self.activation = activation
        self.num_mask_tokens = self.num_multimask_outputs + 1

        policy = self.dtype_policy
        c = self.embedding_dim
        self.transformer = TwoWayTransformer(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            dtype=policy,
            name="transformer",
        )
        self.iou_token = keras.layers.Embedding(
            1, c, dtype=policy, name="iou_token"
        )
        self.mask_tokens = keras.layers.Embedding(
            self.num_mask_tokens, c, dtype=policy, name="mask_tokens"
        )
        self.output_upscaling = keras.Sequential(
            [
                keras.layers.Conv2DTranspose(
                    c // 4, 2, strides=2, dtype=policy, name="deconv_0"
                ),
                keras.layers.LayerNormalization(
                    epsilon=1e-6, dtype=policy, name="norm_0"
                ),
                keras.layers.Activation(activation, dtype=policy, name="act_0"),
                keras.layers.Conv2DTranspose(
                    c // 8, 2, strides=2, dtype=policy, name="deconv_1"
                ),
                keras.layers.Activation(activation, dtype=policy, name="act_1"),
            ],
            name="output_upscaling",
        )
        self.output_hypernetworks_mlps = [
            MLP(
                hidden_dim=c,
                output_dim=c // 8,
                num_layers=3,
                dtype=policy,
                name=f"output_hypernetworks_mlp_{i}",
            )
            for i in range(self.num_mask_tokens)
        ]
        self.iou_prediction_head = MLP(
            hidden_dim=self.iou_head_hidden_dim,
            output_dim=self.num_mask_tokens,
            num_layers=self.iou_head_depth,
            dtype=policy,
            name="iou_prediction_head",
        )

    def build(
        self,
        image_embeddings_shape=None,
        prompt_dense_positional_embeddings_shape=None,
        prompt_sparse_embeddings_shape=None,
        prompt_dense_embeddings_shape=None,
    ):
        c = self.embedding_dim
        self.transformer.build()
        self.iou_token.build((None,))
        self.mask_tokens.build((None,))
        self.output_upscaling.build((None, None, None, c))
        for mlp in self.output_hypernetworks_mlps:
            mlp.build((None, c))
        self.iou_prediction_head.build((None, c))

    def _check_shapes(self, image, pe, sparse, dense) -> None:
        c = self.embedding_dim
        named = (
            ("image_embeddings", image, 4, "(B, He, We, C)"),
            ("prompt_dense_positional_embeddings", pe, 4, "(1, He, We, C)"),
            ("prompt_sparse_embeddings", sparse, 3, "(B, N, C)"),
            ("prompt_dense_embeddings", dense, 4, "(B, He, We, C)"),
        )
        for name, shape, rank, layout in named:
            checks.check_rank(name, shape, rank, layout)
            checks.check_dim(name, shape, -1, c, "width (embedding_dim)")
        for name, shape, _, _ in (named[1], named[3]):
            for axis in (1, 2):
                if None not in (shape[axis], image[axis]) and (
                    shape[axis] != image[axis]
                ):
                    raise ValueError(
                        f"`{name}` must have the spatial size of "
                        f"`image_embeddings`. Received: {name}.shape={shape}, "
                        f"image_embeddings.shape={image}"
                    )
        # The prompt batch B is that of the sparse prompt embeddings; the
        # other inputs broadcast from batch 1.
        b = sparse[0]
        for name, shape in (
            ("image_embeddings", image),
            ("prompt_dense_positional_embeddings", pe),
            ("prompt_dense_embeddings", dense),
        ):
            if None not in (shape[0], b) and shape[0] not in (1, b):
                raise ValueError(
                    f"`{name}` must have batch 1 or the prompt batch size "
                    f"{b}. Received: {name}.shape={shape}, "
                    f"prompt_sparse_embeddings.shape={sparse}"
                )

    def compute_output_shape(
        self,
        image_embeddings_shape,
        prompt_dense_positional_embeddings_shape,
        prompt_sparse_embeddings_shape,
        prompt_dense_embeddings_shape,
    ):
        self._check_shapes(
            image_embeddings_shape,
            prompt_dense_positional_embeddings_shape,
            prompt_sparse_embeddings_shape,
            prompt_dense_embeddings_shape,
        )
        b = prompt_sparse_embeddings_shape[0]
        h, w = image_embeddings_shape[1:3]
        h = None if h is None else 4 * h
        w = None if w is None else 4 * w
        n = self.num_mask_tokens
        return {"masks": (b, n, h, w), "iou_pred": (b, n)}

    def call(
        self,
        image_embeddings,
        prompt_dense_positional_embeddings,
        prompt_sparse_embeddings,
        prompt_dense_embeddings,
    ):
        self._check_shapes(
            *(
                checks.static_shape(x)
                for x in (
                    image_embeddings,
                    prompt_dense_positional_embeddings,
                    prompt_sparse_embeddings,
                    prompt_dense_embeddings,
                )
            )
        )
        dtype = self.compute_dtype
        sparse = ops.cast(prompt_sparse_embeddings, dtype)
        batch = ops.shape(sparse)[0]
        c = self.embedding_dim

        # Token order: [iou, mask tokens, prompt tokens].
        output_tokens = ops.concatenate(
            [self.iou_token.embeddings, self.mask_tokens.embeddings], axis=0
        )  # (1 + T, C)
        output_tokens = ops.broadcast_to(
            ops.cast(output_tokens, dtype)[None],
            (batch, self.num_mask_tokens + 1, c),
        )
        tokens = ops.concatenate([output_tokens, sparse], axis=1)  # (B, Nt, C)

        # Dense prompts are added to the image embedding. Batch-1 inputs stay
        # batch 1: the transformer's first block then projects the image side
        # once for all prompts (see MultiHeadAttentionWithDownsampling).
        source = ops.cast(image_embeddings, dtype) + ops.cast(
            prompt_dense_embeddings, dtype
        )  # (1 or B, He, We, C)
        pos = ops.cast(prompt_dense_positional_embeddings, dtype)
        if source.shape[0] != pos.shape[0]:
            pos = ops.broadcast_to(pos, ops.shape(source))
        image_shape = ops.shape(image_embeddings)
        shape = (batch, image_shape[1], image_shape[2], c)

        hidden, source = self.transformer(source, pos, tokens)
        # (B, He*We, C); still batch 1 only without transformer layers.
        source = ops.broadcast_to(
            source, (batch, image_shape[1] * image_shape[2], c)
        )
        iou_token_out = hidden[:, 0, :]  # (B, C)
        mask_tokens_out = hidden[:, 1 : 1 + self.num_mask_tokens, :]

        hyper_in = ops.stack(
            [
                mlp(mask_tokens_out[:, i, :])
                for i, mlp in enumerate(self.output_hypernetworks_mlps)
            ],
            axis=1,
        )  # (B, T, C/8)
        masks = self._upscale_and_predict(
            source, hyper_in, shape
        )  # (B, T, 4He, 4We)
        iou_pred = self.iou_prediction_head(iou_token_out)  # (B, T)
        return {"masks": masks, "iou_pred": iou_pred}

    @functools.cached_property
    def _fused_upscaling(self):
        """Bias + norm + activation of the first upscaled map, and bias +
        activation of the second, each one pass over the map
        (`fuse_elementwise`). A cached property writes the instance dict
        directly, so the functions are not tracked as layer state."""
        _, norm_0, act_0, _, act_1 = self.output_upscaling.layers
        return (
            fuse_elementwise(lambda x, bias: act_0(norm_0(x + bias))),
            fuse_elementwise(lambda x, bias: act_1(x + bias)),
        )

    def _upscale_and_predict(self, source, hyper_in, shape):
        """`output_upscaling`, then each mask token's dot product with every
        pixel, computed per embedding cell.

        The two transposed convolutions have kernel 2 and stride 2: each
        embedding cell `(i, j)` alone makes the 4x4 block of output pixels
        `(4i + 2a + c, 4j + 2b + d)` (`(a, b)` from the first, `(c, d)` from
        the second). So they are two matrix products on the cells, with the
        layers' own kernels, and the pixels are put in image order only at
        the end, on the `T` mask logits rather than on the `C/8` features:
        the same sums as the convolutions, without moving the feature maps.

        Args:
            source: `(B, He*We, C)` image tokens from the transformer.
            hyper_in: `(B, T, C/8)` hypernetwork outputs.
            shape: `(B, He, We, C)`.

        Returns:
            `(B, T, 4He, 4We)` mask logits.
        """
        deconv_0, _, _, deconv_1, _ = self.output_upscaling.layers
        norm_act_0, act_1 = self._fused_upscaling
        batch, he, we, c = shape
        dtype = source.dtype

        def as_matrix(deconv):
            # (2, 2, out, in) kernel -> (in, [a, b, out]).
            kernel = ops.cast(deconv.kernel, dtype)
            _, _, c_out, c_in = kernel.shape
            kernel = ops.transpose(kernel, (3, 0, 1, 2))
            return ops.reshape(kernel, (c_in, 4 * c_out)), c_out

        kernel, c4 = as_matrix(deconv_0)
        x = ops.matmul(source, kernel)  # (B, He*We, 4 * C/4)
        x = ops.reshape(x, (batch, he * we, 4, c4))
        x = norm_act_0(x, ops.cast(deconv_0.bias, dtype))
        kernel, c8 = as_matrix(deconv_1)
        x = ops.matmul(x, kernel)  # (B, He*We, 4, 4 * C/8)
        x = ops.reshape(x, (batch, he * we * 16, c8))
        x = act_1(x, ops.cast(deconv_1.bias, dtype))  # (B, 16 He We, C/8)
        logits = ops.matmul(x, ops.transpose(hyper_in, (0, 2, 1)))
        t = self.num_mask_tokens
        # (B, i, j, a, b, c, d, T) -> (B, T, i, a, c, j, b, d)
        logits = ops.reshape(logits, (batch, he, we, 2, 2, 2, 2, t))
        logits = ops.transpose(logits, (0, 7, 1, 3, 5, 2, 4, 6))
        return ops.reshape(logits, (batch, t, 4 * he, 4 * we))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "num_layers": self.num_layers,
                "intermediate_dim": self.intermediate_dim,
                "num_heads": self.num_heads,
                "embedding_dim": self.embedding_dim,
                "num_multimask_outputs": self.num_multimask_outputs,
                "iou_head_depth": self.iou_head_depth,
                "iou_head_hidden_dim": self.iou_head_hidden_dim,
                "activation": self.activation,
            }
        )
        return config
