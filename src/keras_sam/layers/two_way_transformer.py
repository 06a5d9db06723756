"""SAM's two-way transformer: prompt tokens and image attend to each other."""

import keras

from keras_sam import checks
from keras_sam.layers.attention import MultiHeadAttentionWithDownsampling
from keras_sam.layers.two_way_attention_block import TwoWayAttentionBlock


@keras.saving.register_keras_serializable(package="keras_sam")
class TwoWayTransformer(keras.layers.Layer):
    """A stack of `TwoWayAttentionBlock`s and a final token-to-image attention.

    The image features and their positional encodings are flattened to
    sequences; the tokens serve both as the initial queries and as the
    queries' positional encodings in every block. After the blocks, the
    tokens attend to the image once more (residual, LayerNorm 1e-5).

    Args:
        num_layers: Number of blocks; the first skips its positional
            encoding in self-attention.
        hidden_size: Width `C`.
        num_heads: Attention heads; must divide
            `hidden_size // attention_downsample_rate`.
        intermediate_dim: Hidden width of each block's MLP.
        attention_downsample_rate: Width reduction in the cross-attentions.
        activation: Activation of the blocks' MLPs.

    Call arguments:
        image_embedding: `(B, H, W, C)`.
        image_pe: `(B, H, W, C)` positional encodings of the image.
        point_embedding: `(B, Nt, C)` tokens.

    Returns:
        `(queries, keys)`: `(B, Nt, C)` updated tokens and `(B, H*W, C)`
        updated image features.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        hidden_size: int,
        num_heads: int,
        intermediate_dim: int,
        attention_downsample_rate: int = 2,
        activation: str = "relu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_layers = checks.integer("num_layers", num_layers)
        self.hidden_size = checks.integer("hidden_size", hidden_size)
        self.num_heads = checks.integer("num_heads", num_heads)
        self.intermediate_dim = checks.integer(
            "intermediate_dim", intermediate_dim
        )
        self.attention_downsample_rate = checks.integer(
            "attention_downsample_rate", attention_downsample_rate
        )
        self.activation = activation
        self.layers = [
            TwoWayAttentionBlock(
                hidden_size=self.hidden_size,
                num_heads=self.num_heads,
                intermediate_dim=self.intermediate_dim,
                attention_downsample_rate=self.attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
                activation=activation,
                dtype=self.dtype_policy,
                name=f"layer_{i}",
            )
            for i in range(self.num_layers)
        ]
        self.final_attention_token_to_image = (
            MultiHeadAttentionWithDownsampling(
                hidden_size=self.hidden_size,
                num_heads=self.num_heads,
                downsample_rate=self.attention_downsample_rate,
                dtype=self.dtype_policy,
                name="final_attention_token_to_image",
            )
        )
        self.final_layer_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, dtype=self.dtype_policy, name="final_layer_norm"
        )

    def build(
        self,
        image_embedding_shape=None,
        image_pe_shape=None,
        point_embedding_shape=None,
    ):
        tokens = (None, None, self.hidden_size)
        for layer in self.layers:
            layer.build(tokens, tokens, tokens, tokens)
        self.final_attention_token_to_image.build(tokens, tokens, tokens)
        self.final_layer_norm.build(tokens)

    def call(self, image_embedding, image_pe, point_embedding):
        shape = keras.ops.shape(image_embedding)
        flat = (shape[0], shape[1] * shape[2], shape[3])
        keys = keras.ops.reshape(image_embedding, flat)  # (B, H*W, C)
        key_pe = keras.ops.reshape(image_pe, flat)  # (B, H*W, C)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = queries + self.final_attention_token_to_image(q, k, keys)
        queries = self.final_layer_norm(queries)
        return queries, keys

    def compute_output_shape(
        self,
        image_embedding_shape,
        image_pe_shape=None,
        point_embedding_shape=None,
    ):
        b, h, w, c = image_embedding_shape
        hw = None if h is None or w is None else h * w
        return tuple(point_embedding_shape), (b, hw, c)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_layers": self.num_layers,
                "hidden_size": self.hidden_size,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "attention_downsample_rate": self.attention_downsample_rate,
                "activation": self.activation,
            }
        )
        return config
