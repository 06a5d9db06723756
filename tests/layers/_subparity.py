"""Loading official sub-modules into Keras sub-layers for parity tests."""

from keras_sam.convert import torch_mapping
from keras_sam.convert.weights import load_with_table
from keras_sam.layers import SAMMaskDecoder
from keras_sam.layers import SAMPromptEncoder


def decoder_rows(num_layers: int, torch_prefix: str, keras_prefix: str):
    """Table rows of a decoder sub-module (`transformer.layers.0.` ...)."""
    decoder = SAMMaskDecoder(
        hidden_size=8,
        num_layers=num_layers,
        intermediate_dim=8,
        num_heads=1,
        embedding_dim=8,
    )
    rows = torch_mapping.mask_decoder_table(decoder)
    return torch_mapping.sub_table(rows, torch_prefix, keras_prefix)


def encoder_rows(torch_prefix: str, keras_prefix: str):
    rows = torch_mapping.prompt_encoder_table(SAMPromptEncoder(hidden_size=8))
    return torch_mapping.sub_table(rows, torch_prefix, keras_prefix)


def load(layer, module, rows) -> None:
    if not layer.built:
        layer.build()
    load_with_table(layer, module.state_dict(), rows)
