"""The name table from official PyTorch SAM parameters to Keras variables.

One `Row` per Keras variable: the official parameter name (relative to the
official module: `pe_layer.positional_encoding_gaussian_matrix`,
`transformer.layers.0.self_attn.q_proj.weight`, ...), the Keras variable path
relative to the target layer, and the name of the transform that turns the
PyTorch layout into the Keras one.
"""

from typing import NamedTuple

import numpy as np


class Row(NamedTuple):
    torch_key: str
    keras_path: str
    transform: str


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _linear(x: np.ndarray) -> np.ndarray:
    # torch Linear weight (out, in) -> Keras Dense kernel (in, out).
    return x.T


def _conv2d(x: np.ndarray) -> np.ndarray:
    # torch Conv2d (out, in, kh, kw) -> Keras Conv2D (kh, kw, in, out).
    return x.transpose(2, 3, 1, 0)


def _conv2d_transpose(x: np.ndarray) -> np.ndarray:
    # torch ConvTranspose2d (in, out, kh, kw) -> Keras Conv2DTranspose
    # (kh, kw, out, in).
    return x.transpose(2, 3, 1, 0)


def _depthwise_conv2d(x: np.ndarray) -> np.ndarray:
    # torch depthwise Conv2d (C, 1, kh, kw) -> Keras DepthwiseConv2D
    # (kh, kw, C, 1).
    return x.transpose(2, 3, 0, 1)


TRANSFORMS = {
    "identity": _identity,
    "depthwise_conv2d": _depthwise_conv2d,
    "linear": _linear,
    "conv2d": _conv2d,
    "conv2d_transpose": _conv2d_transpose,
}
# The transform of a row whose source key is assigned to nothing (weights
# the source model keeps but never uses): consumed if present, never
# required.
UNUSED = "unused"


def dense_rows(torch_prefix: str, keras_prefix: str) -> list[Row]:
    return [
        Row(f"{torch_prefix}.weight", f"{keras_prefix}/kernel", "linear"),
        Row(f"{torch_prefix}.bias", f"{keras_prefix}/bias", "identity"),
    ]


def conv_rows(
    torch_prefix: str, keras_prefix: str, transform: str
) -> list[Row]:
    return [
        Row(f"{torch_prefix}.weight", f"{keras_prefix}/kernel", transform),
        Row(f"{torch_prefix}.bias", f"{keras_prefix}/bias", "identity"),
    ]


def norm_rows(torch_prefix: str, keras_prefix: str) -> list[Row]:
    return [
        Row(f"{torch_prefix}.weight", f"{keras_prefix}/gamma", "identity"),
        Row(f"{torch_prefix}.bias", f"{keras_prefix}/beta", "identity"),
    ]


def _embedding(torch_key: str, keras_prefix: str) -> list[Row]:
    return [Row(torch_key, f"{keras_prefix}/embeddings", "identity")]


def _attention(torch_prefix: str, keras_prefix: str) -> list[Row]:
    rows = []
    for t, k in (("q", "query"), ("k", "key"), ("v", "value"), ("out", "out")):
        rows += dense_rows(
            f"{torch_prefix}.{t}_proj", f"{keras_prefix}/{k}_proj"
        )
    return rows


def _mlp(torch_prefix: str, keras_prefix: str, num_layers: int) -> list[Row]:
    rows = []
    for j in range(num_layers):
        rows += dense_rows(
            f"{torch_prefix}.layers.{j}", f"{keras_prefix}/layer_{j}"
        )
    return rows


def prompt_encoder_table(layer) -> list[Row]:
    """Rows for a `SAMPromptEncoder` (official `PromptEncoder`)."""
    rows = [
        Row(
            "pe_layer.positional_encoding_gaussian_matrix",
            "positional_embedding_layer/positional_encoding_gaussian_matrix",
            "identity",
        )
    ]
    for i, name in enumerate(
        (
            "background_point_embed",
            "foreground_point_embed",
            "top_left_corner_embed",
            "bottom_right_corner_embed",
        )
    ):
        rows += _embedding(f"point_embeddings.{i}.weight", name)
    rows += _embedding("not_a_point_embed.weight", "not_a_point_embed")
    rows += _embedding("no_mask_embed.weight", "no_mask_embed")
    # Official Sequential indices: 0 conv, 1 norm, 2 act, 3 conv, 4 norm,
    # 5 act, 6 conv.
    rows += conv_rows("mask_downscaling.0", "mask_downscaler/conv_0", "conv2d")
    rows += norm_rows("mask_downscaling.1", "mask_downscaler/norm_0")
    rows += conv_rows("mask_downscaling.3", "mask_downscaler/conv_1", "conv2d")
    rows += norm_rows("mask_downscaling.4", "mask_downscaler/norm_1")
    rows += conv_rows("mask_downscaling.6", "mask_downscaler/conv_2", "conv2d")
    return rows


def mask_decoder_table(layer) -> list[Row]:
    """Rows for a `SAMMaskDecoder` (official `MaskDecoder`)."""
    rows = []
    for i in range(layer.num_layers):
        t, k = f"transformer.layers.{i}", f"transformer/layer_{i}"
        rows += _attention(f"{t}.self_attn", f"{k}/self_attention")
        rows += norm_rows(f"{t}.norm1", f"{k}/layer_norm1")
        rows += _attention(
            f"{t}.cross_attn_token_to_image",
            f"{k}/cross_attention_token_to_image",
        )
        rows += norm_rows(f"{t}.norm2", f"{k}/layer_norm2")
        rows += dense_rows(f"{t}.mlp.lin1", f"{k}/mlp_block/layer_0")
        rows += dense_rows(f"{t}.mlp.lin2", f"{k}/mlp_block/layer_1")
        rows += norm_rows(f"{t}.norm3", f"{k}/layer_norm3")
        rows += norm_rows(f"{t}.norm4", f"{k}/layer_norm4")
        rows += _attention(
            f"{t}.cross_attn_image_to_token",
            f"{k}/cross_attention_image_to_token",
        )
    rows += _attention(
        "transformer.final_attn_token_to_image",
        "transformer/final_attention_token_to_image",
    )
    rows += norm_rows(
        "transformer.norm_final_attn", "transformer/final_layer_norm"
    )
    rows += _embedding("iou_token.weight", "iou_token")
    rows += _embedding("mask_tokens.weight", "mask_tokens")
    # Official Sequential indices: 0 deconv, 1 norm, 2 act, 3 deconv, 4 act.
    rows += conv_rows(
        "output_upscaling.0", "output_upscaling/deconv_0", "conv2d_transpose"
    )
    rows += norm_rows("output_upscaling.1", "output_upscaling/norm_0")
    rows += conv_rows(
        "output_upscaling.3", "output_upscaling/deconv_1", "conv2d_transpose"
    )
    for i in range(layer.num_mask_tokens):
        rows += _mlp(
            f"output_hypernetworks_mlps.{i}",
            f"output_hypernetworks_mlp_{i}",
            3,
        )
    rows += _mlp(
        "iou_prediction_head", "iou_prediction_head", layer.iou_head_depth
    )
    return rows


def sub_table(rows: list[Row], torch_prefix: str, keras_prefix: str) -> list:
    """The rows under a sub-module, with both prefixes removed.

    E.g. `sub_table(mask_decoder_table(d), "transformer.", "transformer/")`
    maps an official `TwoWayTransformer` onto a Keras `TwoWayTransformer`.
    """
    return [
        Row(
            r.torch_key[len(torch_prefix) :],
            r.keras_path[len(keras_prefix) :],
            r.transform,
        )
        for r in rows
        if r.torch_key.startswith(torch_prefix)
        and r.keras_path.startswith(keras_prefix)
    ]
