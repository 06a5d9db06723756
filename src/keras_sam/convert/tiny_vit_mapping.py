"""MobileSAM's TinyViT image encoder: name table and detection.

`tiny_vit_table` maps the official `TinyViT` parameters (relative to the
module: `layers.1.blocks.0.attn.qkv.weight`) to `TinyViTImageEncoder`
variable paths, rows in the style of `keras_sam.convert.torch_mapping`.
Each official `Conv2d_BN` (`c` convolution, `bn` BatchNorm with its
running statistics) is a `Conv2DBatchNorm` (`conv`, `bn` with
`moving_mean`/`moving_variance`). The classifier head that `TinyViT`
keeps from ImageNet pre-training (`head`, `norm_head`) is never used by
MobileSAM's forward pass: its rows are `UNUSED`, consumed without a
target if present (every key of the file is still accounted for), and not
required.

`detect_tiny_vit` reads the encoder's configuration from the shapes of a
MobileSAM state dict (keys `image_encoder.*`).
"""

import math
import re

from keras_sam.convert.torch_mapping import UNUSED
from keras_sam.convert.torch_mapping import Row
from keras_sam.convert.torch_mapping import dense_rows
from keras_sam.convert.torch_mapping import norm_rows

# A key only MobileSAM's layout has (whole-`Sam` names).
MARKER_KEY = "image_encoder.patch_embed.seq.0.c.weight"
# Output widths at which the official `PatchMerging` uses stride 1 (its
# code tests `out_dim in (320, 448, 576)`), keeping 1024-pixel images on
# SAM's 64 x 64 grid.
_STRIDE_1_WIDTHS = (320, 448, 576)
# No TinyViT stage this package builds exceeds these (twice ViT-H's
# width, depth and heads).
_MAX_WIDTH, _MAX_DEPTH, _MAX_HEADS, _MAX_WINDOW = 2560, 64, 32, 64


def _conv_bn_rows(torch_prefix: str, keras_prefix: str, depthwise=False):
    conv = "depthwise_conv2d" if depthwise else "conv2d"
    rows = [
        Row(f"{torch_prefix}.c.weight", f"{keras_prefix}/conv/kernel", conv)
    ]
    for t, k in (
        ("weight", "gamma"),
        ("bias", "beta"),
        ("running_mean", "moving_mean"),
        ("running_var", "moving_variance"),
    ):
        rows.append(
            Row(f"{torch_prefix}.bn.{t}", f"{keras_prefix}/bn/{k}", "identity")
        )
    return rows


def _merging_rows(torch_prefix: str, keras_prefix: str) -> list[Row]:
    rows = []
    for j, depthwise in ((1, False), (2, True), (3, False)):
        rows += _conv_bn_rows(
            f"{torch_prefix}.conv{j}", f"{keras_prefix}/conv{j}", depthwise
        )
    return rows


def tiny_vit_table(layer) -> list[Row]:
    """Rows for a `TinyViTImageEncoder` (official MobileSAM `TinyViT`)."""
    # Official Sequential indices: 0 Conv2d_BN, 1 GELU, 2 Conv2d_BN.
    rows = _conv_bn_rows("patch_embed.seq.0", "patch_embed_0")
    rows += _conv_bn_rows("patch_embed.seq.2", "patch_embed_1")
    for i, depth in enumerate(layer.num_layers):
        for j in range(depth):
            t, k = f"layers.{i}.blocks.{j}", f"stage_{i}_block_{j}"
            if i == 0:  # MBConv blocks
                rows += _merging_rows(t, k)
                continue
            rows += norm_rows(f"{t}.attn.norm", f"{k}/attention/norm")
            rows += dense_rows(f"{t}.attn.qkv", f"{k}/attention/qkv")
            rows += dense_rows(f"{t}.attn.proj", f"{k}/attention/proj")
            rows.append(
                Row(
                    f"{t}.attn.attention_biases",
                    f"{k}/attention/attention_biases",
                    "identity",
                )
            )
            rows += _conv_bn_rows(
                f"{t}.local_conv", f"{k}/local_conv", depthwise=True
            )
            rows += norm_rows(f"{t}.mlp.norm", f"{k}/mlp_norm")
            rows += dense_rows(f"{t}.mlp.fc1", f"{k}/mlp_fc1")
            rows += dense_rows(f"{t}.mlp.fc2", f"{k}/mlp_fc2")
        if i + 1 < len(layer.num_layers):
            rows += _merging_rows(
                f"layers.{i}.downsample", f"stage_{i}_downsample"
            )
    # Official Sequential indices: 0 conv 1x1, 1 norm, 2 conv 3x3, 3 norm.
    rows.append(Row("neck.0.weight", "neck/conv_0/kernel", "conv2d"))
    rows += norm_rows("neck.1", "neck/norm_0")
    rows.append(Row("neck.2.weight", "neck/conv_1/kernel", "conv2d"))
    rows += norm_rows("neck.3", "neck/norm_1")
    for key in ("head", "norm_head"):
        rows += [Row(f"{key}.{p}", "", UNUSED) for p in ("weight", "bias")]
    return rows


def is_tiny_vit(state_dict) -> bool:
    """Whether a whole-`Sam` state dict has MobileSAM's TinyViT encoder."""
    return MARKER_KEY in state_dict


def _stage_indices(keys, prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})
    if not found or found != list(range(len(found))):
        raise ValueError(
            f"`state_dict` entries {prefix}{{i}} are not numbered 0..n-1. "
            f"Received indices: {found[:20]}"
        )
    return found


def _bounded(label: str, value: int, limit: int) -> int:
    if not 1 <= value <= limit:
        raise ValueError(
            f"`{label}` must be between 1 and {limit} for a TinyViT this "
            f"package builds. Received: {label}={value}"
        )
    return value


def detect_tiny_vit(keys, shape) -> dict:
    """`TinyViTImageEncoder` arguments from a MobileSAM state dict.

    Args:
        keys: The state dict's keys (whole-`Sam` names).
        shape: `shape(key, ndim=None)` gives a key's shape (checking its
            rank), raising `ValueError` for a missing key.

    What the shapes fix: stage widths, depths, heads (rows of
    `attention_biases`), window sides (its columns are `side**2`), MLP and
    MBConv ratios, the local convolution and output widths. Not in any
    shape: the merging strides, taken as the official code's rule (1 into
    widths 320, 448, 576, else 2), and the image size, which its forward
    pass fixes at a 64 x 64 output grid (1024 pixels for MobileSAM).

    Raises:
        ValueError: a key is missing, shapes are inconsistent or beyond
            twice ViT-H's sizes.
    """
    p = "image_encoder."
    keys = list(keys)
    stem = shape(MARKER_KEY, 4)  # (C0 / 2, in, 3, 3)
    stages = _stage_indices(keys, p + "layers.")
    if len(stages) < 2:
        raise ValueError(
            "`state_dict` has one TinyViT stage (image_encoder.layers.0); "
            "MobileSAM has a convolutional stage and attention stages."
        )
    widths, depths, heads, windows, ratios = [], [], [], [], []
    for i in stages:
        blocks = _stage_indices(keys, f"{p}layers.{i}.blocks.")
        depths.append(_bounded(f"layers.{i} depth", len(blocks), _MAX_DEPTH))
        t = f"{p}layers.{i}.blocks.0"
        if i == 0:
            conv1 = shape(f"{t}.conv1.c.weight", 4)  # (inner, C0, 1, 1)
            widths.append(conv1[1])
            expansion = conv1[0] / conv1[1]
            continue
        width = shape(f"{t}.attn.norm.weight", 1)[0]
        widths.append(width)
        bias = shape(f"{t}.attn.attention_biases", 2)  # (heads, side**2)
        side = math.isqrt(bias[1])
        if side * side != bias[1]:
            raise ValueError(
                f"`state_dict[{t}.attn.attention_biases]` must have a "
                "square number of columns (window side squared). Received: "
                f"shape {bias}"
            )
        heads.append(_bounded(f"layers.{i} heads", bias[0], _MAX_HEADS))
        windows.append(_bounded(f"layers.{i} window", side, _MAX_WINDOW))
        ratios.append(shape(f"{t}.mlp.fc1.weight", 2)[0] / width)
    for i, width in enumerate(widths):
        _bounded(f"layers.{i} width", width, _MAX_WIDTH)
    if len(set(ratios)) != 1:
        raise ValueError(
            "`state_dict` MLP widths are not one ratio of the stage widths. "
            f"Received ratios per stage: {ratios}"
        )
    strides = tuple(1 if w in _STRIDE_1_WIDTHS else 2 for w in widths[1:])
    side = 64 * 4 * math.prod(strides)
    return {
        "hidden_sizes": tuple(widths),
        "num_layers": tuple(depths),
        "num_heads": tuple(heads),
        "window_sizes": tuple(windows),
        "downsample_strides": strides,
        "image_shape": (side, side, stem[1]),
        "mlp_ratio": ratios[0],
        "mbconv_expansion_ratio": expansion,
        "local_conv_size": shape(
            f"{p}layers.1.blocks.0.local_conv.c.weight", 4
        )[-1],
        "num_output_channels": shape(p + "neck.0.weight", 4)[0],
    }


def check_tiny_vit(config) -> None:
    """Refuse a `TinyViTImageEncoder` configuration larger than any this
    package builds: at most 8 stages, each at most 2560 wide, 64 blocks
    deep, 32 heads, windows of 64, strides 1 or 2, ratios of 8, images of
    2048 pixels and 6 channels, 512 output channels.

    Raises:
        ValueError: naming the first value out of bounds.
    """
    limits = {
        "hidden_sizes": _MAX_WIDTH,
        "num_layers": _MAX_DEPTH,
        "num_heads": _MAX_HEADS,
        "window_sizes": _MAX_WINDOW,
        "downsample_strides": 2,
        "image_shape": 2048,
    }
    for key, limit in limits.items():
        values = config.get(key, ())
        if not isinstance(values, (list, tuple)) or len(values) > 8:
            raise ValueError(
                f"`image_encoder.{key}` must be a list of at most 8 "
                f"integers. Received: {str(values)[:60]}"
            )
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(
                    f"`image_encoder.{key}[{i}]` must be an integer. "
                    f"Received: {str(value)[:60]}"
                )
            bound = 6 if key == "image_shape" and i == 2 else limit
            _bounded(f"image_encoder.{key}[{i}]", value, bound)
    for key in ("mlp_ratio", "mbconv_expansion_ratio"):
        value = config.get(key, 4.0)
        if not isinstance(value, (int, float)) or not 0 < value <= 8:
            raise ValueError(
                f"`image_encoder.{key}` must be a number in (0, 8]. "
                f"Received: {str(value)[:60]}"
            )
    for key, limit in (("local_conv_size", 15), ("num_output_channels", 512)):
        value = config.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"`image_encoder.{key}` must be an integer. "
                f"Received: {str(value)[:60]}"
            )
        _bounded(f"image_encoder.{key}", value, limit)


def tiny_vit_grid(config) -> tuple[int, int]:
    """The output grid `(He, We)` of a `TinyViTImageEncoder` config."""
    stride = 4 * math.prod(config.get("downsample_strides", (2, 2, 1)))
    h, w = config.get("image_shape", (1024, 1024, 3))[:2]
    return h // stride, w // stride
