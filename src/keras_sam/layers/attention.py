"""Multi-head attention whose projections may shrink the width (SAM)."""

import math

import keras
from keras import ops

from keras_sam.layers import _checks


@keras.saving.register_keras_serializable(package="keras_sam")
class MultiHeadAttentionWithDownsampling(keras.layers.Layer):
    """Multi-head attention with an internal width of `hidden_size / rate`.

    Queries, keys and values are projected from `hidden_size` to
    `hidden_size // downsample_rate` features, split into `num_heads` heads,
    attended with `softmax(q k^T / sqrt(d_head))` (d_head measured after the
    downsampling), recombined and projected back to `hidden_size`. The logits
    and softmax are computed in float32.

    Args:
        hidden_size: Width `C` of the inputs and of the output.
        num_heads: Number of heads; must divide `hidden_size //
            downsample_rate`.
        downsample_rate: Factor by which the projections shrink the width.

    Call arguments:
        query: `(B, Nq, C)`.
        key: `(B, Nk, C)` or `(1, Nk, C)`.
        value: `(B, Nk, C)` or `(1, Nk, C)`; batch 1 or B, as `key`.

    Shared keys (batch 1, statically known) are projected once and all
    `B * Nq` queries attend to them in one product (each query's softmax is
    its own, so this equals attending batch by batch); a query of batch 1
    against keys of batch B is projected once and broadcast.

    Returns:
        `(B, Nq, C)` (`B` the larger batch).

    Example:
    >>> attn = MultiHeadAttentionWithDownsampling(
    ...     hidden_size=16, num_heads=2, downsample_rate=2)
    >>> q, kv = keras.ops.ones((1, 3, 16)), keras.ops.ones((1, 5, 16))
    >>> tuple(attn(q, kv, kv).shape)
    (1, 3, 16)
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        downsample_rate: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_size = _checks.integer("hidden_size", hidden_size)
        self.num_heads = _checks.integer("num_heads", num_heads)
        self.downsample_rate = _checks.integer(
            "downsample_rate", downsample_rate
        )
        self.internal_dim = self.hidden_size // self.downsample_rate
        if self.internal_dim < 1 or self.internal_dim % self.num_heads:
            raise ValueError(
                "`num_heads` must divide `hidden_size // downsample_rate`. "
                f"Received: num_heads={num_heads}, hidden_size={hidden_size}, "
                f"downsample_rate={downsample_rate}"
            )
        self.head_dim = self.internal_dim // self.num_heads
        dense = dict(dtype=self.dtype_policy)
        self.query_proj = keras.layers.Dense(
            self.internal_dim, name="query_proj", **dense
        )
        self.key_proj = keras.layers.Dense(
            self.internal_dim, name="key_proj", **dense
        )
        self.value_proj = keras.layers.Dense(
            self.internal_dim, name="value_proj", **dense
        )
        self.out_proj = keras.layers.Dense(
            self.hidden_size, name="out_proj", **dense
        )

    def build(self, query_shape=None, key_shape=None, value_shape=None):
        for layer in (self.query_proj, self.key_proj, self.value_proj):
            layer.build((None, None, self.hidden_size))
        self.out_proj.build((None, None, self.internal_dim))

    def _separate_heads(self, x):
        shape = ops.shape(x)
        x = ops.reshape(x, (shape[0], shape[1], self.num_heads, self.head_dim))
        return ops.transpose(x, (0, 2, 1, 3))  # (B, heads, N, d_head)

    def call(self, query, key, value):
        query_batch, num_queries = tuple(query.shape)[:2]
        fold = key.shape[0] == 1 and value.shape[0] == 1 and query_batch != 1
        if fold:
            # Shared keys: the B*Nq queries attend as one batch-1 sequence.
            if num_queries is None:
                num_queries = ops.shape(query)[1]
            query = ops.reshape(query, (1, -1, query.shape[-1]))
        out = self._attend(query, key, value)
        if fold:
            out = ops.reshape(out, (-1, num_queries, self.hidden_size))
        return out

    def _attend(self, query, key, value):
        q = self._separate_heads(self.query_proj(query))
        k = self._separate_heads(self.key_proj(key))
        v = self._separate_heads(self.value_proj(value))
        logits = ops.matmul(
            ops.cast(q, "float32"),
            ops.transpose(ops.cast(k, "float32"), (0, 1, 3, 2)),
        )  # (B, heads, Nq, Nk)
        weights = ops.softmax(logits / math.sqrt(self.head_dim), axis=-1)
        out = ops.matmul(ops.cast(weights, v.dtype), v)  # (B, heads, Nq, d)
        out = ops.transpose(out, (0, 2, 1, 3))
        shape = ops.shape(out)
        out = ops.reshape(out, (shape[0], shape[1], self.internal_dim))
        return self.out_proj(out)

    def compute_output_shape(
        self, query_shape, key_shape=None, value_shape=None
    ):
        return tuple(query_shape[:-1]) + (self.hidden_size,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "num_heads": self.num_heads,
                "downsample_rate": self.downsample_rate,
            }
        )
        return config
