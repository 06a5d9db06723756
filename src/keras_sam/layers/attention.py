"""Multi-head attention whose projections may shrink the width (SAM)."""

import math

import keras
from keras import ops

from keras_sam import checks


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
        self.hidden_size = checks.integer("hidden_size", hidden_size)
        self.num_heads = checks.integer("num_heads", num_heads)
        self.downsample_rate = checks.integer(
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
        path = self._cheapest_path(
            query.shape[1], key.shape[1], query.shape[0], key.shape[0]
        )
        if path == "few_keys":
            return self._attend_few_keys(query, key, value)
        if path == "few_queries":
            return self._attend_few_queries(query, key, value)
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

    def _cheapest_path(
        self, num_queries, num_keys, query_batch=1, key_batch=1
    ) -> str:
        """`"standard"`, `"few_keys"` or `"few_queries"`: the order of the
        products with the fewest multiply-adds.

        With `Nk` keys and `heads * Nk < internal_dim` (image-to-token
        attention: thousands of image queries, a few tokens), the query
        and output projections of the many rows are folded into the few
        keys: `softmax((x Wq + bq) k^T) v Wo = softmax(x (Wq k^T) + bq
        k^T) (v Wo)` per head, so each query row costs `2 C heads Nk`
        instead of `2 C internal_dim` multiply-adds (a batch-1 image
        shared by many prompts has its query projection computed once,
        which the count takes into account). With few queries
        (token-to-image attention), the key and value projections of the
        many rows are folded into the queries: `q (x Wk + bk)^T = (q
        Wk^T) x^T + const` (the constant drops out of the softmax) and
        `softmax(.) (x Wv + bv) = (softmax(.) x) Wv + bv`. Both are exact
        algebra; the sums run in another order (differences of float
        rounding). Used only in float32 and with plain `Dense`
        projections; a third of SAM's decoder multiply-adds per prompt
        go (measured in `benchmarks/decoder.py`).
        """
        if num_queries is None or num_keys is None:
            return "standard"
        if self.compute_dtype != "float32" or any(
            getattr(dense, "quantization_mode", None) is not None
            or getattr(dense, "lora_enabled", False)
            for dense in (self.query_proj, self.key_proj, self.value_proj)
            + (self.out_proj,)
        ):
            return "standard"
        costs = self.multiply_adds(
            num_queries, num_keys, query_batch, key_batch
        )
        best = min(costs, key=costs.get)
        # Keep the plain order unless the saving is clear.
        if costs[best] > 0.75 * costs["standard"]:
            return "standard"
        return best

    def multiply_adds(
        self, num_queries: int, num_keys: int, query_batch=1, key_batch=1
    ) -> dict[str, int]:
        """Multiply-adds of one call in each product order (see
        `_cheapest_path`), for queries `(query_batch, num_queries, C)` and
        keys `(key_batch, num_keys, C)`; a batch of `None` counts one batch
        element. Softmax and additions are not counted."""
        c, i, h = self.hidden_size, self.internal_dim, self.num_heads
        nq, nk = int(num_queries), int(num_keys)
        if query_batch is None or key_batch is None:
            bq = bk = b = 1
        else:
            bq, bk = int(query_batch), int(key_batch)
            b = max(bq, bk)
        return {  # a batch-1 side is projected once
            # q, k, v projections; scores and mix; output projection.
            "standard": (bq * nq + 2 * bk * nk) * c * i
            + b * (2 * nq * nk * i + nq * i * c),
            # k, v projections, Wq k^T, v Wo; scores and output.
            "few_keys": bk * 4 * nk * c * i + b * 2 * nq * c * h * nk,
            # q projection, q Wk^T, (.) Wv, out projection; scores, mix.
            "few_queries": bq * 4 * nq * c * i + b * 2 * nk * c * h * nq,
        }

    def _head_kernel(self, dense):
        """`(heads, d_head, C)` view of a `(C, internal_dim)` kernel."""
        kernel = ops.reshape(
            dense.kernel, (self.hidden_size, self.num_heads, self.head_dim)
        )
        return ops.transpose(kernel, (1, 2, 0))

    def _attend_few_keys(self, query, key, value):
        h, d = self.num_heads, self.head_dim
        k = self._separate_heads(self.key_proj(key))  # (Bk, h, Nk, d)
        v = self._separate_heads(self.value_proj(value))  # (Bk, h, Nk, d)
        batch, nk = ops.shape(k)[0], k.shape[2]
        scale = 1.0 / math.sqrt(d)
        # Query kernel folded into the keys: (Bk, h*Nk, C).
        folded = ops.reshape(
            ops.matmul(k, self._head_kernel(self.query_proj)) * scale,
            (batch, h * nk, self.hidden_size),
        )
        bias = ops.reshape(
            ops.matmul(k, ops.reshape(self.query_proj.bias, (h, d, 1))) * scale,
            (batch, 1, h * nk),
        )  # bq . k per (head, key)
        if query.shape[0] == 1:
            # Batch-1 queries (a shared image): one product for all keys.
            flat = ops.reshape(
                ops.transpose(folded, (2, 0, 1)), (self.hidden_size, -1)
            )
            logits = ops.matmul(query[0], flat)  # (Nq, Bk*h*Nk)
            logits = ops.transpose(
                ops.reshape(logits, (ops.shape(query)[1], batch, h * nk)),
                (1, 0, 2),
            )
        else:
            logits = ops.matmul(query, ops.transpose(folded, (0, 2, 1)))
        logits = logits + bias  # (B, Nq, h*Nk)
        shape = ops.shape(logits)
        weights = ops.softmax(
            ops.reshape(logits, (shape[0], shape[1], h, nk)), axis=-1
        )
        weights = ops.reshape(weights, (shape[0], shape[1], h * nk))
        # Output kernel folded into the values: (Bk, h*Nk, C).
        out_kernel = ops.reshape(self.out_proj.kernel, (h, d, self.hidden_size))
        values = ops.reshape(
            ops.matmul(v, out_kernel), (batch, h * nk, self.hidden_size)
        )
        return ops.matmul(weights, values) + self.out_proj.bias

    def _attend_few_queries(self, query, key, value):
        h, d = self.num_heads, self.head_dim
        q = self._separate_heads(self.query_proj(query))  # (B, h, Nq, d)
        batch, nq = ops.shape(q)[0], q.shape[2]
        # Key kernel folded into the queries (its bias adds a constant per
        # query, which the softmax removes): (B, h*Nq, C).
        folded = ops.reshape(
            ops.matmul(q, self._head_kernel(self.key_proj))
            * (1.0 / math.sqrt(d)),
            (batch, h * nq, self.hidden_size),
        )
        logits = ops.matmul(folded, ops.transpose(key, (0, 2, 1)))
        weights = ops.softmax(logits, axis=-1)  # (B, h*Nq, Nk)
        mixed = ops.reshape(
            ops.matmul(weights, value), (batch, h, nq, self.hidden_size)
        )  # softmax rows sum to 1: the value bias passes through.
        wv = ops.transpose(self._head_kernel(self.value_proj), (0, 2, 1))
        out = ops.matmul(mixed, wv) + ops.reshape(
            self.value_proj.bias, (h, 1, d)
        )  # (B, h, Nq, d)
        out = ops.reshape(
            ops.transpose(out, (0, 2, 1, 3)), (batch, nq, self.internal_dim)
        )
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
