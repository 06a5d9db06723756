"""A ViTDet transformer block: windowed or global attention, then an MLP."""

import keras
from keras import ops

from keras_sam import checks
from keras_sam.layers.mlp import MLP
from keras_sam.models.vit_attention import ViTAttention
from keras_sam.models.vit_attention import size_pair


def _window_partition(x, window_size: int, height: int, width: int):
    """Zero-pad `(B, H, W, C)` to multiples of `window_size`, cut windows.

    Returns `(B * num_windows, window_size, window_size, C)` windows (row by
    row) and the padded `(Hp, Wp)`. Padded tokens are zeros after the norm,
    and are attended to as keys, as in the official code.
    """
    pad_h = -height % window_size
    pad_w = -width % window_size
    if pad_h or pad_w:
        x = ops.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = height + pad_h, width + pad_w
    channels = x.shape[-1]
    x = ops.reshape(
        x,
        (-1, hp // window_size, window_size, wp // window_size, window_size)
        + (channels,),
    )
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, nh, nw, ws, ws, C)
    x = ops.reshape(x, (-1, window_size, window_size, channels))
    return x, (hp, wp)


def _window_unpartition(
    windows, window_size: int, padded_size: tuple, size: tuple
):
    """Inverse of `_window_partition`: windows back to `(B, H, W, C)`."""
    hp, wp = padded_size
    channels = windows.shape[-1]
    x = ops.reshape(
        windows,
        (-1, hp // window_size, wp // window_size, window_size, window_size)
        + (channels,),
    )
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, nh, ws, nw, ws, C)
    x = ops.reshape(x, (-1, hp, wp, channels))
    return x[:, : size[0], : size[1], :]


@keras.saving.register_keras_serializable(package="keras_sam")
class ViTBlock(keras.layers.Layer):
    """Pre-norm transformer block of SAM's ViTDet image encoder.

    `x + attention(norm1(x))`, then `x + mlp(norm2(x))`. With
    `window_size > 0` the normalised grid is zero-padded to multiples of the
    window, attention runs inside each `window_size x window_size` window,
    and the padding is cropped off again; `window_size = 0` attends over the
    whole grid. The MLP is Dense - exact (erf) GELU - Dense.

    Args:
        hidden_size: Width `C` of the tokens.
        num_heads: Attention heads; must divide `hidden_size`.
        intermediate_dim: Hidden width of the MLP.
        input_size: `(H, W)` of the token grid.
        window_size: Side of the attention windows; 0 for global attention.
        use_bias: Whether the query/key/value projection has a bias.
        use_rel_pos: Whether attention adds relative position biases.
        layer_norm_epsilon: Epsilon of both LayerNorms.

    Call arguments:
        x: `(B, H, W, C)` tokens with `(H, W) == input_size`.

    Returns:
        `(B, H, W, C)`.

    Raises:
        ValueError: bad constructor values; inputs of the wrong rank, width
            or spatial size.

    Example:
    >>> block = keras_sam.models.vit_block.ViTBlock(
    ...     hidden_size=16, num_heads=2, intermediate_dim=32,
    ...     input_size=(5, 6), window_size=4)
    >>> tuple(block(keras.ops.ones((1, 5, 6, 16))).shape)
    (1, 5, 6, 16)

    Reference:
        Li et al., "Exploring Plain Vision Transformer Backbones for Object
        Detection" (ViTDet), ECCV 2022.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        intermediate_dim: int,
        input_size: tuple[int, int],
        window_size: int = 0,
        use_bias: bool = True,
        use_rel_pos: bool = True,
        layer_norm_epsilon: float = 1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(intermediate_dim) < 1:
            raise ValueError(
                "`intermediate_dim` must be a positive integer. "
                f"Received: intermediate_dim={intermediate_dim}"
            )
        if int(window_size) < 0:
            raise ValueError(
                "`window_size` must be >= 0 (0: global attention). "
                f"Received: window_size={window_size}"
            )
        if not float(layer_norm_epsilon) > 0:
            raise ValueError(
                "`layer_norm_epsilon` must be positive. "
                f"Received: layer_norm_epsilon={layer_norm_epsilon}"
            )
        self.hidden_size = int(hidden_size)
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.input_size = size_pair("input_size", input_size)
        self.window_size = int(window_size)
        self.use_bias = bool(use_bias)
        self.use_rel_pos = bool(use_rel_pos)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        policy = self.dtype_policy
        ws = self.window_size
        # Relative tables are per window, or per grid for global attention.
        # ViTAttention validates hidden_size and num_heads.
        self.attention = ViTAttention(
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            input_size=(ws, ws) if ws else self.input_size,
            use_bias=self.use_bias,
            use_rel_pos=self.use_rel_pos,
            dtype=policy,
            name="attention",
        )
        self.layer_norm1 = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="layer_norm1"
        )
        self.layer_norm2 = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="layer_norm2"
        )
        self.mlp = MLP(
            hidden_dim=self.intermediate_dim,
            output_dim=self.hidden_size,
            num_layers=2,
            activation="gelu",  # exact (erf) GELU, as torch nn.GELU()
            dtype=policy,
            name="mlp",
        )

    def build(self, x_shape=None):
        c = self.hidden_size
        self.layer_norm1.build((None, None, None, c))
        self.attention.build()
        self.layer_norm2.build((None, None, None, c))
        self.mlp.build((None, c))

    def _check_shape(self, shape: tuple) -> None:
        checks.check_rank("x", shape, 4, "(B, H, W, C)")
        checks.check_dim("x", shape, -1, self.hidden_size, "width")
        for axis in (1, 2):
            checks.check_dim(
                "x", shape, axis, self.input_size[axis - 1], "size"
            )

    def call(self, x):
        self._check_shape(checks.static_shape(x))
        h, w = self.input_size
        shortcut = x
        x = self.layer_norm1(x)
        if self.window_size:
            x, padded = _window_partition(x, self.window_size, h, w)
        x = self.attention(x)  # (B', h', w', C)
        if self.window_size:
            x = _window_unpartition(x, self.window_size, padded, (h, w))
        x = shortcut + x
        return x + self.mlp(self.layer_norm2(x))

    def compute_output_shape(self, x_shape):
        self._check_shape(tuple(x_shape))
        return tuple(x_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "input_size": self.input_size,
                "window_size": self.window_size,
                "use_bias": self.use_bias,
                "use_rel_pos": self.use_rel_pos,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
