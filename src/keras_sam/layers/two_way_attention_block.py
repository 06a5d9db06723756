"""One block of SAM's two-way transformer."""

import functools

import keras

from keras_sam import checks
from keras_sam.backend.compile import fuse_elementwise
from keras_sam.layers.attention import MultiHeadAttentionWithDownsampling
from keras_sam.layers.mlp import MLP


@keras.saving.register_keras_serializable(package="keras_sam")
class TwoWayAttentionBlock(keras.layers.Layer):
    """Tokens and image attend to each other, in four steps.

    1. Self-attention of the tokens (with the token positional encodings added
       to queries and keys; the first block of a transformer instead replaces
       the tokens by their plain self-attention, no residual, no encoding).
    2. Cross-attention from tokens to image.
    3. An MLP on the tokens.
    4. Cross-attention from image to tokens.

    Each step is a residual followed by a LayerNorm (epsilon 1e-5). Positional
    encodings are added to queries and keys, never to values. The
    cross-attentions project to `hidden_size // attention_downsample_rate`.

    Args:
        hidden_size: Width `C` of tokens and image features.
        num_heads: Attention heads.
        intermediate_dim: Hidden width of the MLP.
        attention_downsample_rate: Width reduction in the cross-attentions.
        skip_first_layer_pe: Whether this is a first block (step 1 replaces
            the tokens, without positional encoding).
        activation: Activation of the MLP.

    Call arguments:
        queries: `(B, Nt, C)` tokens.
        keys: `(B, Ni, C)` flattened image features.
        query_pe: `(B, Nt, C)` token positional encodings.
        key_pe: `(B, Ni, C)` image positional encodings.

    Returns:
        `(queries, keys)` with the input shapes.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        intermediate_dim: int,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
        activation: str = "relu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_size = checks.integer("hidden_size", hidden_size)
        self.num_heads = checks.integer("num_heads", num_heads)
        self.intermediate_dim = checks.integer(
            "intermediate_dim", intermediate_dim
        )
        self.attention_downsample_rate = checks.integer(
            "attention_downsample_rate", attention_downsample_rate
        )
        self.skip_first_layer_pe = bool(skip_first_layer_pe)
        self.activation = activation

        def attention(name, rate):
            return MultiHeadAttentionWithDownsampling(
                hidden_size=self.hidden_size,
                num_heads=self.num_heads,
                downsample_rate=rate,
                dtype=self.dtype_policy,
                name=name,
            )

        def norm(name):
            return keras.layers.LayerNormalization(
                epsilon=1e-5, dtype=self.dtype_policy, name=name
            )

        rate = self.attention_downsample_rate
        self.self_attention = attention("self_attention", 1)
        self.layer_norm1 = norm("layer_norm1")
        self.cross_attention_token_to_image = attention(
            "cross_attention_token_to_image", rate
        )
        self.layer_norm2 = norm("layer_norm2")
        self.mlp_block = MLP(
            hidden_dim=self.intermediate_dim,
            output_dim=self.hidden_size,
            num_layers=2,
            activation=activation,
            dtype=self.dtype_policy,
            name="mlp_block",
        )
        self.layer_norm3 = norm("layer_norm3")
        self.cross_attention_image_to_token = attention(
            "cross_attention_image_to_token", rate
        )
        self.layer_norm4 = norm("layer_norm4")

    def build(
        self,
        queries_shape=None,
        keys_shape=None,
        query_pe_shape=None,
        key_pe_shape=None,
    ):
        tokens = (None, None, self.hidden_size)
        for attn in (
            self.self_attention,
            self.cross_attention_token_to_image,
            self.cross_attention_image_to_token,
        ):
            attn.build(tokens, tokens, tokens)
        for layer in (
            self.layer_norm1,
            self.layer_norm2,
            self.mlp_block,
            self.layer_norm3,
            self.layer_norm4,
        ):
            layer.build(tokens)

    def call(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attention(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attention(q, q, queries)
        queries = self.layer_norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = queries + self.cross_attention_token_to_image(q, k, keys)
        queries = self.layer_norm2(queries)

        queries = self.layer_norm3(queries + self.mlp_block(queries))

        q = queries + query_pe
        keys = self._fused_add_norm4(
            keys, self.cross_attention_image_to_token(k, q, queries)
        )
        return queries, keys

    @functools.cached_property
    def _fused_add_norm4(self):
        """Residual and norm of the image tokens in one pass over them
        (`fuse_elementwise`). A cached property writes the instance dict
        directly, so the function is not tracked as layer state."""
        return fuse_elementwise(lambda x, y: self.layer_norm4(x + y))

    def compute_output_shape(
        self, queries_shape, keys_shape, query_pe_shape=None, key_pe_shape=None
    ):
        return tuple(queries_shape), tuple(keys_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "attention_downsample_rate": self.attention_downsample_rate,
                "skip_first_layer_pe": self.skip_first_layer_pe,
                "activation": self.activation,
            }
        )
        return config
