"""TinyViT's window attention with learned relative position biases."""

import keras
import numpy as np
from keras import ops

from keras_sam import checks


def _bias_index(window_size: int) -> np.ndarray:
    """`(N, N)` index into the bias table of a `window_size**2`-token window.

    Tokens `p`, `q` (row-major) share a bias when `(|dy|, |dx|)` agree; the
    official code numbers the offsets in order of first appearance, which,
    starting from token (0, 0), is `|dy| * window_size + |dx|`.
    """
    y, x = np.divmod(np.arange(window_size * window_size), window_size)
    dy = np.abs(y[:, None] - y[None, :])
    dx = np.abs(x[:, None] - x[None, :])
    return (dy * window_size + dx).astype("int32")


@keras.saving.register_keras_serializable(package="keras_sam")
class TinyViTAttention(keras.layers.Layer):
    """Multi-head self-attention inside one TinyViT window.

    LayerNorm (epsilon 1e-5) of the tokens, one projection to queries, keys
    and values laid out per head (`[q, k, v]` of `C / num_heads` each, head
    after head, as the official `qkv`), scaled dot products plus a learned
    bias per head and per token offset `(|dy|, |dx|)` (`attention_biases`,
    `(num_heads, window_size**2)`), softmax in float32, output projection.

    Args:
        hidden_size: Token width `C`.
        num_heads: Attention heads; must divide `hidden_size`.
        window_size: Side of the square window; inputs hold its
            `window_size**2` tokens in row-major order.

    Call arguments:
        inputs: float `(B, window_size**2, C)`; `B` counts windows.

    Returns:
        `(B, window_size**2, C)`.
    """

    def __init__(
        self, *, hidden_size: int, num_heads: int, window_size: int, **kwargs
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("hidden_size", hidden_size),
            ("num_heads", num_heads),
            ("window_size", window_size),
        ):
            checks.integer(name, value, 1)
        if int(hidden_size) % int(num_heads):
            raise ValueError(
                "`num_heads` must divide `hidden_size`. Received: "
                f"num_heads={num_heads}, hidden_size={hidden_size}"
            )
        self.hidden_size = int(hidden_size)
        self.num_heads = int(num_heads)
        self.window_size = int(window_size)
        self.head_dim = self.hidden_size // self.num_heads
        self.bias_index = _bias_index(self.window_size)
        policy = self.dtype_policy
        self.norm = keras.layers.LayerNormalization(
            epsilon=1e-5, dtype=policy, name="norm"
        )
        self.qkv = keras.layers.Dense(
            3 * self.hidden_size, dtype=policy, name="qkv"
        )
        self.proj = keras.layers.Dense(
            self.hidden_size, dtype=policy, name="proj"
        )

    def build(self, inputs_shape=None):
        n, c = self.window_size**2, self.hidden_size
        self.norm.build((None, n, c))
        self.qkv.build((None, n, c))
        self.proj.build((None, n, c))
        self.attention_biases = self.add_weight(
            name="attention_biases",
            shape=(self.num_heads, n),
            initializer="zeros",
        )

    def call(self, inputs):
        n, h, d = self.window_size**2, self.num_heads, self.head_dim
        x = self.qkv(self.norm(inputs))
        x = ops.reshape(x, (-1, n, h, 3 * d))
        x = ops.transpose(x, (0, 2, 1, 3))  # (B, h, N, 3d)
        q, k, v = x[..., :d], x[..., d : 2 * d], x[..., 2 * d :]
        q = ops.cast(q, "float32") * (d**-0.5)
        k = ops.cast(k, "float32")
        logits = ops.matmul(q, ops.swapaxes(k, -1, -2))  # (B, h, N, N)
        biases = ops.take(
            ops.cast(self.attention_biases, "float32"),
            ops.reshape(self.bias_index, (-1,)),
            axis=1,
        )
        logits = logits + ops.reshape(biases, (1, h, n, n))
        weights = ops.cast(ops.softmax(logits, axis=-1), self.compute_dtype)
        x = ops.matmul(weights, v)  # (B, h, N, d)
        x = ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (-1, n, h * d))
        return self.proj(x)  # (B, N, C)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "num_heads": self.num_heads,
                "window_size": self.window_size,
            }
        )
        return config
