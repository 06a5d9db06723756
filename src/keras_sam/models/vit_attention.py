"""Multi-head self-attention with decomposed relative positions (ViTDet)."""

import keras
import numpy as np
from keras import ops

from keras_sam import checks


def size_pair(name: str, value) -> tuple[int, int]:
    """Normalise a pair of positive ints `(h, w)`, else a ValueError."""
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(
            f"`{name}` must be a pair of positive ints (height, width). "
            f"Received: {name}={value}"
        )
    return pair


def _relative_index(size: int) -> np.ndarray:
    """`(size, size)` rows of the `(2 size - 1, d)` table: `q - k + size - 1`.

    Queries and keys share one grid, so the official `get_rel_pos` needs no
    coordinate scaling and no interpolation of the table.
    """
    coords = np.arange(size)
    return (coords[:, None] - coords[None, :] + size - 1).astype("int32")


@keras.saving.register_keras_serializable(package="keras_sam")
class ViTAttention(keras.layers.Layer):
    """Self-attention over a 2-D token grid with relative positions.

    One Dense layer projects the tokens to queries, keys and values
    (`3 * hidden_size` features), which are split into `num_heads` heads. The
    logits `(q / sqrt(d_head)) k^T` get MViTv2's decomposed relative position
    bias: for a query at `(qh, qw)` and a key at `(kh, kw)`,
    `q . rel_pos_h[qh - kh + h - 1] + q . rel_pos_w[qw - kw + w - 1]`, with
    the unscaled query. Logits, bias and softmax are computed in float32
    (the two tables are read in float32 too), the weighted sum in the compute
    dtype; a last Dense layer projects back to `hidden_size`.

    Args:
        hidden_size: Width `C` of the tokens.
        num_heads: Number of heads; must divide `hidden_size`.
        input_size: `(h, w)` of the token grid the relative tables are made
            for: the window for windowed blocks, the whole grid for global
            ones. Inputs must have this spatial size when `use_rel_pos`.
        use_bias: Whether the query/key/value projection has a bias (the
            official `qkv_bias`); the output projection always has one.
        use_rel_pos: Whether to add the relative position bias.

    Call arguments:
        x: `(B, h, w, C)` tokens.

    Returns:
        `(B, h, w, C)`.

    Raises:
        ValueError: bad constructor values; inputs of the wrong rank, width
            or (with `use_rel_pos`) spatial size.

    Example:
    >>> attn = keras_sam.models.vit_attention.ViTAttention(
    ...     hidden_size=16, num_heads=2, input_size=(3, 4))
    >>> tuple(attn(keras.ops.ones((2, 3, 4, 16))).shape)
    (2, 3, 4, 16)

    Reference:
        Li et al., "Exploring Plain Vision Transformer Backbones for Object
        Detection" (ViTDet), ECCV 2022; Li et al., "MViTv2", CVPR 2022.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        input_size: tuple[int, int],
        use_bias: bool = True,
        use_rel_pos: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("hidden_size", hidden_size),
            ("num_heads", num_heads),
        ):
            if int(value) < 1:
                raise ValueError(
                    f"`{name}` must be a positive integer. "
                    f"Received: {name}={value}"
                )
        if int(hidden_size) % int(num_heads):
            raise ValueError(
                "`num_heads` must divide `hidden_size`. Received: "
                f"num_heads={num_heads}, hidden_size={hidden_size}"
            )
        self.hidden_size = int(hidden_size)
        self.num_heads = int(num_heads)
        self.input_size = size_pair("input_size", input_size)
        self.use_bias = bool(use_bias)
        self.use_rel_pos = bool(use_rel_pos)
        self.head_dim = self.hidden_size // self.num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = keras.layers.Dense(
            3 * self.hidden_size,
            use_bias=self.use_bias,
            dtype=self.dtype_policy,
            name="qkv",
        )
        self.proj = keras.layers.Dense(
            self.hidden_size, dtype=self.dtype_policy, name="proj"
        )

    def build(self, x_shape=None):
        self.qkv.build((None, self.hidden_size))
        self.proj.build((None, self.hidden_size))
        if self.use_rel_pos:
            # Official init: zeros. Read in float32 (no autocast): they feed
            # the float32 logits.
            h, w = self.input_size
            self.rel_pos_h = self.add_weight(
                name="rel_pos_h",
                shape=(2 * h - 1, self.head_dim),
                initializer="zeros",
                autocast=False,
            )
            self.rel_pos_w = self.add_weight(
                name="rel_pos_w",
                shape=(2 * w - 1, self.head_dim),
                initializer="zeros",
                autocast=False,
            )

    def _check_shape(self, shape: tuple) -> None:
        checks.check_rank("x", shape, 4, "(B, h, w, C)")
        checks.check_dim("x", shape, -1, self.hidden_size, "width")
        if self.use_rel_pos:
            for axis, size in (
                (1, self.input_size[0]),
                (2, self.input_size[1]),
            ):
                checks.check_dim("x", shape, axis, size, "size (input_size)")
        elif None in shape[1:3]:
            raise ValueError(
                "`x` must have a static spatial size. "
                f"Received: x.shape={shape}"
            )

    def _relative_bias(self, logits, q, h: int, w: int):
        """Add the decomposed relative position bias to `(B, n, N, N)`."""
        rel_h = ops.take(self.rel_pos_h, _relative_index(h), axis=0)
        rel_w = ops.take(self.rel_pos_w, _relative_index(w), axis=0)
        q = ops.reshape(q, (-1, self.num_heads, h, w, self.head_dim))
        bias_h = ops.einsum("bnhwc,hkc->bnhwk", q, ops.cast(rel_h, q.dtype))
        bias_w = ops.einsum("bnhwc,wkc->bnhwk", q, ops.cast(rel_w, q.dtype))
        logits = ops.reshape(logits, (-1, self.num_heads, h, w, h, w))
        logits = (
            logits
            + ops.expand_dims(bias_h, -1)  # (B, n, h, w, kh, 1)
            + ops.expand_dims(bias_w, -2)  # (B, n, h, w, 1, kw)
        )
        return ops.reshape(logits, (-1, self.num_heads, h * w, h * w))

    def call(self, x):
        shape = checks.static_shape(x)
        self._check_shape(shape)
        h, w = shape[1], shape[2]
        qkv = self.qkv(x)  # (B, h, w, 3C)
        qkv = ops.reshape(qkv, (-1, h * w, 3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, n, N, d)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = ops.cast(q, "float32")
        # The official code scales q before the product, not the logits.
        logits = ops.matmul(
            q * self.scale, ops.transpose(ops.cast(k, "float32"), (0, 1, 3, 2))
        )  # (B, n, N, N)
        if self.use_rel_pos:
            logits = self._relative_bias(logits, q, h, w)
        weights = ops.softmax(logits, axis=-1)
        out = ops.matmul(ops.cast(weights, v.dtype), v)  # (B, n, N, d)
        out = ops.transpose(out, (0, 2, 1, 3))  # (B, N, n, d)
        out = ops.reshape(out, (-1, h, w, self.hidden_size))
        return self.proj(out)

    def compute_output_shape(self, x_shape):
        self._check_shape(tuple(x_shape))
        return tuple(x_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "num_heads": self.num_heads,
                "input_size": self.input_size,
                "use_bias": self.use_bias,
                "use_rel_pos": self.use_rel_pos,
            }
        )
        return config
