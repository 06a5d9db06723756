"""Name table from the official `ImageEncoderViT` to `SAMImageEncoder`.

Rows in the style of `keras_sam.convert.torch_mapping`: official parameter
names relative to the official module (`blocks.0.attn.qkv.weight`), Keras
variable paths relative to the encoder, and a named transform from
`torch_mapping.TRANSFORMS`. No new transform is needed: `pos_embed` is
already channels-last `(1, H/p, W/p, C)` and the relative position tables
`(2 size - 1, head_dim)` have the same layout in both.
"""

from keras_sam.convert.torch_mapping import Row
from keras_sam.convert.torch_mapping import conv_rows
from keras_sam.convert.torch_mapping import dense_rows
from keras_sam.convert.torch_mapping import norm_rows


def image_encoder_table(layer) -> list[Row]:
    """Rows for a `SAMImageEncoder` (official `ImageEncoderViT`)."""
    rows = conv_rows("patch_embed.proj", "patch_embed", "conv2d")
    if layer.use_abs_pos:
        rows.append(Row("pos_embed", "pos_embed", "identity"))
    for i in range(layer.num_layers):
        t, k = f"blocks.{i}", f"block_{i}"
        rows += norm_rows(f"{t}.norm1", f"{k}/layer_norm1")
        if layer.use_bias:
            rows += dense_rows(f"{t}.attn.qkv", f"{k}/attention/qkv")
        else:
            rows.append(
                Row(
                    f"{t}.attn.qkv.weight",
                    f"{k}/attention/qkv/kernel",
                    "linear",
                )
            )
        rows += dense_rows(f"{t}.attn.proj", f"{k}/attention/proj")
        if layer.use_rel_pos:
            for axis in ("h", "w"):
                rows.append(
                    Row(
                        f"{t}.attn.rel_pos_{axis}",
                        f"{k}/attention/rel_pos_{axis}",
                        "identity",
                    )
                )
        rows += norm_rows(f"{t}.norm2", f"{k}/layer_norm2")
        rows += dense_rows(f"{t}.mlp.lin1", f"{k}/mlp/layer_0")
        rows += dense_rows(f"{t}.mlp.lin2", f"{k}/mlp/layer_1")
    # Official Sequential indices: 0 conv 1x1, 1 norm, 2 conv 3x3, 3 norm;
    # both convs have no bias.
    rows.append(Row("neck.0.weight", "neck/conv_0/kernel", "conv2d"))
    rows += norm_rows("neck.1", "neck/norm_0")
    rows.append(Row("neck.2.weight", "neck/conv_1/kernel", "conv2d"))
    rows += norm_rows("neck.3", "neck/norm_1")
    return rows
