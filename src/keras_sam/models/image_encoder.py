"""SAM's image encoder: a ViTDet vision transformer with a conv neck."""

from collections.abc import Sequence

import keras
from keras import ops

from keras_sam import checks
from keras_sam.models.vit_block import ViTBlock


def _image_shape(value, patch_size: int) -> tuple[int, int, int]:
    """Normalise `image_shape` to `(H, W, C)` with H, W multiples of p."""
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            "`image_shape` must be three positive ints (height, width, "
            f"channels). Received: image_shape={value}"
        )
    if shape[0] % patch_size or shape[1] % patch_size:
        raise ValueError(
            "`image_shape` height and width must be multiples of "
            f"`patch_size`. Received: image_shape={value}, "
            f"patch_size={patch_size}"
        )
    return shape


def check_images_shape(shape: tuple, image_shape: tuple) -> None:
    """Refuse `images` whose shape is not `(B,) + image_shape`."""
    checks.check_rank("images", shape, 4, "(B, H, W, 3)")
    for axis, what in ((1, "height"), (2, "width"), (3, "channels")):
        checks.check_dim(
            "images",
            shape,
            axis,
            image_shape[axis - 1],
            f"{what} (image_shape)",
        )


def build_neck(channels: int, policy) -> keras.Sequential:
    """SAM's neck to `channels`: 1x1 conv (no bias), LayerNorm, 3x3 conv
    (no bias, zero padding 1), LayerNorm; both norms over channels with
    epsilon 1e-6 (the official `LayerNorm2d`). Shared by the image
    encoders."""
    return keras.Sequential(
        [
            keras.layers.Conv2D(
                channels, 1, use_bias=False, dtype=policy, name="conv_0"
            ),
            keras.layers.LayerNormalization(
                epsilon=1e-6, dtype=policy, name="norm_0"
            ),
            keras.layers.Conv2D(
                channels,
                3,
                padding="same",
                use_bias=False,
                dtype=policy,
                name="conv_1",
            ),
            keras.layers.LayerNormalization(
                epsilon=1e-6, dtype=policy, name="norm_1"
            ),
        ],
        name="neck",
    )


@keras.saving.register_keras_serializable(package="keras_sam")
class SAMImageEncoder(keras.layers.Layer):
    """Image encoder of the Segment Anything Model (SAM): ViTDet.

    A `patch_size` x `patch_size` convolution with the same stride embeds
    the image into a `(H/p, W/p)` grid of `hidden_size`-wide tokens, to which
    a learned absolute position embedding is added. `num_layers` pre-norm
    transformer blocks follow (`ViTBlock`): attention inside
    `window_size x window_size` windows (the grid zero-padded to multiples
    of the window), except in the blocks listed in
    `global_attention_layer_indices`, which attend over the whole grid; both
    kinds add decomposed relative position biases. The MLPs use exact (erf)
    GELU. A neck maps the tokens to `num_output_channels`: 1x1 conv (no
    bias), LayerNorm, 3x3 conv (no bias, zero padding 1), LayerNorm, both
    norms over channels with epsilon 1e-6 (the official `LayerNorm2d`).

    Attention logits and softmax, and all norms, are computed in float32.
    The official model needs no interpolation of the absolute or relative
    position tables, because inputs must have exactly `image_shape`.

    Args:
        hidden_size: Token width `C` (official `embed_dim`).
        num_layers: Number of transformer blocks (official `depth`).
        intermediate_dim: Hidden width of the MLPs (`mlp_ratio * C`).
        num_heads: Attention heads; must divide `hidden_size`.
        global_attention_layer_indices: Indices in `[0, num_layers)` of the
            blocks with global attention (official `global_attn_indexes`).
        image_shape: `(H, W, 3)` of the padded model input; H and W must be
            multiples of `patch_size`.
        patch_size: Side `p` of the patches.
        num_output_channels: Channels of the output embedding (official
            `out_chans`).
        use_bias: Whether the attention query/key/value projection has a
            bias (official `qkv_bias`).
        use_abs_pos: Whether to add the absolute position embedding.
        use_rel_pos: Whether attention adds relative position biases.
        window_size: Side of the attention windows of the non-global blocks;
            0 makes every block global.
        layer_norm_epsilon: Epsilon of the blocks' LayerNorms (the official
            checkpoints use 1e-6); the neck's is always 1e-6.

    Call arguments:
        images: float `(B, H, W, 3)` with `(H, W, 3) == image_shape`,
            already normalised with SAM's pixel mean and std and padded
            bottom/right.

    Returns:
        `(B, H/p, W/p, num_output_channels)` image embeddings.

    Raises:
        ValueError: bad constructor values; `images` of the wrong rank,
            spatial size or channels.

    Example:
    >>> encoder = keras_sam.models.SAMImageEncoder(
    ...     hidden_size=32, num_layers=2, intermediate_dim=64, num_heads=2,
    ...     global_attention_layer_indices=(1,), image_shape=(64, 96, 3),
    ...     window_size=2, num_output_channels=16)
    >>> tuple(encoder(np.zeros((1, 64, 96, 3))).shape)
    (1, 4, 6, 16)

    Reference:
        Kirillov et al., "Segment Anything", ICCV 2023; Li et al.,
        "Exploring Plain Vision Transformer Backbones for Object Detection"
        (ViTDet), ECCV 2022.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_layers: int,
        intermediate_dim: int,
        num_heads: int,
        global_attention_layer_indices: Sequence[int],
        image_shape: tuple[int, int, int] = (1024, 1024, 3),
        patch_size: int = 16,
        num_output_channels: int = 256,
        use_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        layer_norm_epsilon: float = 1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value, low in (
            ("hidden_size", hidden_size, 1),
            ("num_layers", num_layers, 1),
            ("intermediate_dim", intermediate_dim, 1),
            ("num_heads", num_heads, 1),
            ("patch_size", patch_size, 1),
            ("num_output_channels", num_output_channels, 1),
            ("window_size", window_size, 0),
        ):
            checks.integer(name, value, low)
        if int(hidden_size) % int(num_heads):
            raise ValueError(
                "`num_heads` must divide `hidden_size`. Received: "
                f"num_heads={num_heads}, hidden_size={hidden_size}"
            )
        if not float(layer_norm_epsilon) > 0:
            raise ValueError(
                "`layer_norm_epsilon` must be positive. "
                f"Received: layer_norm_epsilon={layer_norm_epsilon}"
            )
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.intermediate_dim = int(intermediate_dim)
        self.num_heads = int(num_heads)
        self.patch_size = int(patch_size)
        self.image_shape = _image_shape(image_shape, self.patch_size)
        received = global_attention_layer_indices
        try:
            indices = tuple(int(i) for i in received)
        except (TypeError, ValueError):
            indices = None
        if indices is None or any(
            not 0 <= i < self.num_layers for i in indices
        ):
            raise ValueError(
                "`global_attention_layer_indices` must be block indices in "
                f"[0, num_layers={self.num_layers}). Received: "
                f"global_attention_layer_indices={received}"
            )
        self.global_attention_layer_indices = indices
        self.num_output_channels = int(num_output_channels)
        self.use_bias = bool(use_bias)
        self.use_abs_pos = bool(use_abs_pos)
        self.use_rel_pos = bool(use_rel_pos)
        self.window_size = int(window_size)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.grid_size = (
            self.image_shape[0] // self.patch_size,
            self.image_shape[1] // self.patch_size,
        )

        policy = self.dtype_policy
        self.patch_embed = keras.layers.Conv2D(
            self.hidden_size,
            self.patch_size,
            strides=self.patch_size,
            dtype=policy,
            name="patch_embed",
        )
        self.blocks = [
            ViTBlock(
                hidden_size=self.hidden_size,
                num_heads=self.num_heads,
                intermediate_dim=self.intermediate_dim,
                input_size=self.grid_size,
                window_size=0 if i in indices else self.window_size,
                use_bias=self.use_bias,
                use_rel_pos=self.use_rel_pos,
                layer_norm_epsilon=self.layer_norm_epsilon,
                dtype=policy,
                name=f"block_{i}",
            )
            for i in range(self.num_layers)
        ]
        self.neck = build_neck(self.num_output_channels, policy)

    def build(self, images_shape=None):
        gh, gw = self.grid_size
        self.patch_embed.build((None,) + self.image_shape)
        if self.use_abs_pos:
            # Official init: zeros (the checkpoints hold the trained values).
            self.pos_embed = self.add_weight(
                name="pos_embed",
                shape=(1, gh, gw, self.hidden_size),
                initializer="zeros",
            )
        for block in self.blocks:
            block.build((None, gh, gw, self.hidden_size))
        self.neck.build((None, gh, gw, self.hidden_size))

    def call(self, images):
        check_images_shape(checks.static_shape(images), self.image_shape)
        x = self.patch_embed(ops.cast(images, self.compute_dtype))
        if self.use_abs_pos:
            x = x + ops.cast(self.pos_embed, x.dtype)  # (B, H/p, W/p, C)
        for block in self.blocks:
            x = block(x)
        return self.neck(x)  # (B, H/p, W/p, num_output_channels)

    def compute_output_shape(self, images_shape):
        check_images_shape(tuple(images_shape), self.image_shape)
        return (images_shape[0],) + self.grid_size + (self.num_output_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "num_layers": self.num_layers,
                "intermediate_dim": self.intermediate_dim,
                "num_heads": self.num_heads,
                "global_attention_layer_indices": (
                    self.global_attention_layer_indices
                ),
                "image_shape": self.image_shape,
                "patch_size": self.patch_size,
                "num_output_channels": self.num_output_channels,
                "use_bias": self.use_bias,
                "use_abs_pos": self.use_abs_pos,
                "use_rel_pos": self.use_rel_pos,
                "window_size": self.window_size,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
