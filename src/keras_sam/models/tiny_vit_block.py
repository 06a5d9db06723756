"""TinyViT's transformer block: window attention, depthwise conv, MLP."""

import keras
from keras import ops

from keras_sam import checks
from keras_sam.models.conv_batch_norm import Conv2DBatchNorm
from keras_sam.models.tiny_vit_attention import TinyViTAttention


@keras.saving.register_keras_serializable(package="keras_sam")
class TinyViTBlock(keras.layers.Layer):
    """One block of a TinyViT attention stage.

    The `(H, W)` token grid is zero-padded bottom/right to multiples of
    `window_size` and cut into windows; `TinyViTAttention` runs in each
    (its LayerNorm sees the padding zeros, which also serve as keys, as in
    the official code), the padding is cropped and the input added. A
    `local_conv_size` depthwise convolution with BatchNorm follows (no
    residual), then a pre-norm MLP (LayerNorm epsilon 1e-5, Dense,
    exact GELU, Dense) with a residual.

    Args:
        hidden_size: Token width `C`.
        num_heads: Attention heads.
        window_size: Side of the attention windows.
        intermediate_dim: Hidden width of the MLP.
        local_conv_size: Kernel side of the depthwise convolution.

    Call arguments:
        inputs: float `(B, H, W, C)` with static `H`, `W`.

    Returns:
        `(B, H, W, C)`.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        window_size: int,
        intermediate_dim: int,
        local_conv_size: int = 3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        checks.integer("intermediate_dim", intermediate_dim, 1)
        checks.integer("local_conv_size", local_conv_size, 1)
        self.hidden_size = int(hidden_size)
        self.num_heads = int(num_heads)
        self.window_size = int(window_size)
        self.intermediate_dim = int(intermediate_dim)
        self.local_conv_size = int(local_conv_size)
        policy = self.dtype_policy
        self.attention = TinyViTAttention(
            hidden_size=hidden_size,
            num_heads=num_heads,
            window_size=window_size,
            dtype=policy,
            name="attention",
        )
        self.local_conv = Conv2DBatchNorm(
            filters=self.hidden_size,
            kernel_size=self.local_conv_size,
            depthwise=True,
            dtype=policy,
            name="local_conv",
        )
        self.mlp_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, dtype=policy, name="mlp_norm"
        )
        self.mlp_fc1 = keras.layers.Dense(
            self.intermediate_dim, dtype=policy, name="mlp_fc1"
        )
        self.mlp_fc2 = keras.layers.Dense(
            self.hidden_size, dtype=policy, name="mlp_fc2"
        )

    def build(self, inputs_shape):
        shape = tuple(inputs_shape)
        if shape[-1] != self.hidden_size:
            raise ValueError(
                "`TinyViTBlock` inputs must have `hidden_size` channels. "
                f"Received: input shape {shape}, "
                f"hidden_size={self.hidden_size}"
            )
        self.attention.build()
        self.local_conv.build(shape)
        self.mlp_norm.build(shape)
        self.mlp_fc1.build(shape)
        self.mlp_fc2.build(shape[:-1] + (self.intermediate_dim,))

    def _attend(self, x):
        _, h, w, c = x.shape
        s = self.window_size
        pad_h, pad_w = -h % s, -w % s
        if pad_h or pad_w:
            x = ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
        nh, nw = (h + pad_h) // s, (w + pad_w) // s
        x = ops.reshape(x, (-1, nh, s, nw, s, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        x = ops.reshape(x, (-1, s * s, c))  # (B nh nw, s s, C)
        x = self.attention(x)
        x = ops.reshape(x, (-1, nh, nw, s, s, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        x = ops.reshape(x, (-1, nh * s, nw * s, c))
        return x[:, :h, :w, :]  # (B, H, W, C)

    def call(self, inputs, training=None):
        checks.check_rank(
            "inputs", checks.static_shape(inputs), 4, "(B, H, W, C)"
        )
        x = inputs + self._attend(inputs)
        x = self.local_conv(x, training=training)
        y = self.mlp_fc1(self.mlp_norm(x))
        y = self.mlp_fc2(ops.gelu(y, approximate=False))
        return x + y  # (B, H, W, C)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "num_heads": self.num_heads,
                "window_size": self.window_size,
                "intermediate_dim": self.intermediate_dim,
                "local_conv_size": self.local_conv_size,
            }
        )
        return config
