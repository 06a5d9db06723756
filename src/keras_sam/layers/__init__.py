"""Keras layers of the Segment Anything Model."""

from keras_sam.layers.attention import MultiHeadAttentionWithDownsampling
from keras_sam.layers.mask_decoder import SAMMaskDecoder
from keras_sam.layers.mlp import MLP
from keras_sam.layers.positional_embedding import (
    RandomFrequencyPositionalEmbeddings,
)
from keras_sam.layers.prompt_encoder import SAMPromptEncoder
from keras_sam.layers.two_way_attention_block import TwoWayAttentionBlock
from keras_sam.layers.two_way_transformer import TwoWayTransformer

__all__ = [
    "MLP",
    "MultiHeadAttentionWithDownsampling",
    "RandomFrequencyPositionalEmbeddings",
    "SAMMaskDecoder",
    "SAMPromptEncoder",
    "TwoWayAttentionBlock",
    "TwoWayTransformer",
]
