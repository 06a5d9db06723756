"""The name table from a KerasHub SAM preset's weights to official names.

A KerasHub `SAMBackbone` saved with `save_to_preset` keeps its variables in
`model.weights.h5` by layer path and index, not by name:
`layers/windowed_transformer_encoder_1/attention/qkv/vars/0` is the kernel
of block 1's qkv projection. Keras names each layer of a list after its
class in snake case, the second and later ones with `_1`, `_2`, ... (the
image encoder's layers sit in the backbone's own list, flattened from the
ViTDet functional model; the mask decoder, outside the functional graph,
under its attribute name). Indices follow `add_weight` order: kernel 0 and
bias 1, gamma 0 and beta 1, `rel_pos_h` 0 and `rel_pos_w` 1.

`table(config)` gives one `Row` per keras-sam variable: the file's dataset
path and the variable's path below the `SAM` model. The values are
already in Keras layouts; `official_state_dict` takes them through the
inverse of the official table's transforms to official names, so that a
preset converts to an official checkpoint and loads through the one
official loader (every name used once, shapes checked, all-or-nothing).
"""

from collections.abc import Mapping
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from keras_sam.convert import image_encoder_mapping
from keras_sam.convert import torch_mapping


class Row(NamedTuple):
    h5_path: str
    keras_path: str


# The inverse of each transform of `torch_mapping.TRANSFORMS`: Keras
# layout back to the PyTorch one.
INVERSE_TRANSFORMS = {
    "identity": lambda x: x,
    # Keras Dense kernel (in, out) -> torch Linear weight (out, in).
    "linear": lambda x: x.T,
    # Keras Conv2D (kh, kw, in, out) -> torch Conv2d (out, in, kh, kw).
    "conv2d": lambda x: x.transpose(3, 2, 0, 1),
    # Keras Conv2DTranspose (kh, kw, out, in) -> torch ConvTranspose2d
    # (in, out, kh, kw).
    "conv2d_transpose": lambda x: x.transpose(3, 2, 0, 1),
}


def _nth(name: str, i: int) -> str:
    """Keras' name for the `i`-th layer of class `name` in one list."""
    return name if i == 0 else f"{name}_{i}"


def _weights(h5: str, keras: str, names=("kernel", "bias")) -> list[Row]:
    return [
        Row(f"{h5}/vars/{i}", f"{keras}/{name}") for i, name in enumerate(names)
    ]


def _norm(h5: str, keras: str) -> list[Row]:
    return _weights(h5, keras, ("gamma", "beta"))


def _dense_stack(h5: str, keras: str, depth: int) -> list[Row]:
    """A keras-hub MLP's Sequential of Dense layers onto our layer_j."""
    rows = []
    for j in range(depth):
        rows += _weights(
            f"{h5}/layers/{_nth('dense', j)}", f"{keras}/layer_{j}"
        )
    return rows


def _attention(h5: str, keras: str) -> list[Row]:
    rows = []
    for proj in ("query_proj", "key_proj", "value_proj", "out_proj"):
        rows += _weights(f"{h5}/{proj}", f"{keras}/{proj}")
    return rows


def image_encoder_rows(enc: Mapping) -> list[Row]:
    """Rows of a ViTDet image encoder (`SAMImageEncoder` arguments)."""
    k, h = "image_encoder", "layers"
    rows = _weights(
        f"{h}/vi_t_det_patching_and_embedding/projection", f"{k}/patch_embed"
    )
    if enc.get("use_abs_pos", True):
        rows.append(
            Row(f"{h}/add_positional_embedding/vars/0", f"{k}/pos_embed")
        )
    qkv = ("kernel", "bias") if enc.get("use_bias", True) else ("kernel",)
    for i in range(enc["num_layers"]):
        t, b = (
            f"{h}/{_nth('windowed_transformer_encoder', i)}",
            f"{k}/block_{i}",
        )
        rows += _norm(f"{t}/layer_norm1", f"{b}/layer_norm1")
        rows += _weights(f"{t}/attention/qkv", f"{b}/attention/qkv", qkv)
        rows += _weights(f"{t}/attention/projection", f"{b}/attention/proj")
        if enc.get("use_rel_pos", True):
            rows += _weights(
                f"{t}/attention/add_decomposed_relative_pe",
                f"{b}/attention",
                ("rel_pos_h", "rel_pos_w"),
            )
        rows += _norm(f"{t}/layer_norm2", f"{b}/layer_norm2")
        rows += _dense_stack(f"{t}/mlp_block/dense_net", f"{b}/mlp", 2)
    # The neck: a Sequential of conv (no bias), norm, conv, norm.
    neck = f"{h}/sequential/layers"
    for j in range(2):
        rows += _weights(
            f"{neck}/{_nth('conv2d', j)}", f"{k}/neck/conv_{j}", ("kernel",)
        )
        rows += _norm(
            f"{neck}/{_nth('layer_normalization', j)}", f"{k}/neck/norm_{j}"
        )
    return rows


def prompt_encoder_rows() -> list[Row]:
    """Rows of a `SAMPromptEncoder` (the backbone's functional layer)."""
    h, k = "layers/sam_prompt_encoder", "prompt_encoder"
    rows = [
        Row(
            f"{h}/positional_embedding_layer/vars/0",
            f"{k}/positional_embedding_layer/"
            "positional_encoding_gaussian_matrix",
        )
    ]
    for name in (
        "background_point_embed",
        "foreground_point_embed",
        "top_left_corner_embed",
        "bottom_right_corner_embed",
        "not_a_point_embed",
        "no_mask_embed",
    ):
        rows.append(Row(f"{h}/{name}/vars/0", f"{k}/{name}/embeddings"))
    down = f"{h}/mask_downscaler/layers"
    for j in range(3):
        rows += _weights(
            f"{down}/{_nth('conv2d', j)}", f"{k}/mask_downscaler/conv_{j}"
        )
    for j in range(2):
        rows += _norm(
            f"{down}/{_nth('layer_normalization', j)}",
            f"{k}/mask_downscaler/norm_{j}",
        )
    return rows


def mask_decoder_rows(dec: Mapping) -> list[Row]:
    """Rows of a `SAMMaskDecoder` (`SAMMaskDecoder` arguments)."""
    h = k = "mask_decoder"
    rows = []
    for i in range(dec["num_layers"]):
        t = f"{h}/transformer/layers/{_nth('two_way_multi_head_attention', i)}"
        b = f"{k}/transformer/layer_{i}"
        for attention in (
            "self_attention",
            "cross_attention_token_to_image",
            "cross_attention_image_to_token",
        ):
            rows += _attention(f"{t}/{attention}", f"{b}/{attention}")
        for n in range(1, 5):
            rows += _norm(f"{t}/layer_norm{n}", f"{b}/layer_norm{n}")
        rows += _dense_stack(f"{t}/mlp_block/mlp_block", f"{b}/mlp_block", 2)
    rows += _attention(
        f"{h}/transformer/final_attention_token_to_image",
        f"{k}/transformer/final_attention_token_to_image",
    )
    rows += _norm(
        f"{h}/transformer/final_layer_norm", f"{k}/transformer/final_layer_norm"
    )
    for name in ("iou_token", "mask_tokens"):
        rows.append(Row(f"{h}/{name}/vars/0", f"{k}/{name}/embeddings"))
    up = f"{h}/output_upscaling/layers"
    for j in range(2):
        rows += _weights(
            f"{up}/{_nth('conv2d_transpose', j)}",
            f"{k}/output_upscaling/deconv_{j}",
        )
    rows += _norm(f"{up}/layer_normalization", f"{k}/output_upscaling/norm_0")
    for i in range(dec.get("num_multimask_outputs", 3) + 1):
        rows += _dense_stack(
            f"{h}/output_hypernetworks_mlps/{_nth('mlp', i)}/mlp_block",
            f"{k}/output_hypernetworks_mlp_{i}",
            3,
        )
    rows += _dense_stack(
        f"{h}/iou_prediction_head/mlp_block",
        f"{k}/iou_prediction_head",
        dec.get("iou_head_depth", 3),
    )
    return rows


def table(config: Mapping) -> list[Row]:
    """Every row of a SAM preset of `config` (keras-sam constructor
    arguments of the three parts)."""
    return (
        image_encoder_rows(config["image_encoder"])
        + prompt_encoder_rows()
        + mask_decoder_rows(config["mask_decoder"])
    )


def _official_rows(config: Mapping) -> dict[str, tuple[str, str]]:
    """Our variable path below the model -> (official name, transform)."""
    enc, dec = config["image_encoder"], config["mask_decoder"]
    # The official tables read only these facts of the layers.
    parts = (
        (
            "image_encoder",
            image_encoder_mapping.image_encoder_table(
                SimpleNamespace(
                    num_layers=enc["num_layers"],
                    use_abs_pos=enc.get("use_abs_pos", True),
                    use_bias=enc.get("use_bias", True),
                    use_rel_pos=enc.get("use_rel_pos", True),
                )
            ),
        ),
        ("prompt_encoder", torch_mapping.prompt_encoder_table(None)),
        (
            "mask_decoder",
            torch_mapping.mask_decoder_table(
                SimpleNamespace(
                    num_layers=dec["num_layers"],
                    num_mask_tokens=dec.get("num_multimask_outputs", 3) + 1,
                    iou_head_depth=dec.get("iou_head_depth", 3),
                )
            ),
        ),
    )
    return {
        f"{part}/{row.keras_path}": (f"{part}.{row.torch_key}", row.transform)
        for part, rows in parts
        for row in rows
    }


def official_state_dict(
    arrays: Mapping[str, np.ndarray], config: Mapping
) -> dict[str, np.ndarray]:
    """A preset's weights (dataset path -> array) under official names.

    Every dataset must be used by one row and every row find its dataset;
    otherwise a `ValueError` lists the missing and unexpected paths.
    Shapes are checked when the result is loaded.

    Args:
        arrays: The `.weights.h5` datasets (`layers/.../vars/0`) to arrays.
        config: keras-sam constructor arguments of the three parts, as read
            from the preset's `config.json`.

    Returns:
        Official parameter names to arrays in PyTorch layouts.
    """
    official = _official_rows(config)
    rows = table(config)
    missing = [r.h5_path for r in rows if r.h5_path not in arrays]
    used = {r.h5_path for r in rows}
    unexpected = sorted(set(arrays) - used)
    uncovered = sorted(set(official) - {r.keras_path for r in rows})
    unknown = [r.keras_path for r in rows if r.keras_path not in official]
    problems = []
    for title, items in (
        ("missing weights", missing),
        ("rows of no official variable", unknown),
        ("unexpected weights", unexpected),
        ("variables without a source", uncovered),
    ):
        if items:
            problems.append(f"{title} ({len(items)}): " + ", ".join(items))
    if problems:
        raise ValueError(
            "The weights do not match the SAM backbone of the preset's "
            "config.json; " + "; ".join(problems)
        )
    out = {}
    for row in rows:
        name, transform = official[row.keras_path]
        out[name] = np.ascontiguousarray(
            INVERSE_TRANSFORMS[transform](arrays[row.h5_path])
        )
    return out
