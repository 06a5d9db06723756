"""The name table from Hugging Face `SamModel` parameters to official names.

transformers' `SamModel` holds the official SAM's weights in the official
layouts (torch `Linear`, `Conv2d`, `ConvTranspose2d`) under other names.
`official_state_dict` renames them, so that the official table
(`keras_sam.convert.torch_mapping`, `image_encoder_mapping`) and the
official architecture detection load them: no values change.

The renaming is one table of `(Hugging Face pattern, official pattern)`
regular-expression rows (`RENAMES`), applied first match wins, plus the
MLP rule: a Hugging Face `SamFeedForward` of depth `n` names its linear
layers `proj_in`, `layers.0` .. `layers.{n-3}`, `proj_out`, the official
`MLP` `layers.0` .. `layers.{n-1}`.

The prompt encoder's random Fourier matrix is tied to the model's
top-level `shared_image_embedding`; a file may hold it under either name
or both (then they must be equal).
"""

import re
from collections.abc import Mapping

import numpy as np

from keras_sam.convert.checkpoint import as_array

# Hugging Face pattern -> official replacement, first match wins. Each
# pattern matches a whole key.
RENAMES = (
    # Image encoder (official ImageEncoderViT).
    (r"vision_encoder\.pos_embed", r"image_encoder.pos_embed"),
    (
        r"vision_encoder\.patch_embed\.projection\.(weight|bias)",
        r"image_encoder.patch_embed.proj.\1",
    ),
    (
        r"vision_encoder\.layers\.(\d+)\.layer_norm([12])\.(weight|bias)",
        r"image_encoder.blocks.\1.norm\2.\3",
    ),
    (
        r"vision_encoder\.layers\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)",
        r"image_encoder.blocks.\1.attn.\2.\3",
    ),
    (
        r"vision_encoder\.layers\.(\d+)\.attn\.rel_pos_([hw])",
        r"image_encoder.blocks.\1.attn.rel_pos_\2",
    ),
    (
        r"vision_encoder\.layers\.(\d+)\.mlp\.(lin[12])\.(weight|bias)",
        r"image_encoder.blocks.\1.mlp.\2.\3",
    ),
    # Neck: official Sequential indices 0 conv, 1 norm, 2 conv, 3 norm.
    (r"vision_encoder\.neck\.conv1\.weight", r"image_encoder.neck.0.weight"),
    (
        r"vision_encoder\.neck\.layer_norm1\.(weight|bias)",
        r"image_encoder.neck.1.\1",
    ),
    (r"vision_encoder\.neck\.conv2\.weight", r"image_encoder.neck.2.weight"),
    (
        r"vision_encoder\.neck\.layer_norm2\.(weight|bias)",
        r"image_encoder.neck.3.\1",
    ),
    # Prompt encoder (official PromptEncoder).
    (
        r"(?:shared_image_embedding|prompt_encoder\.shared_embedding)"
        r"\.positional_embedding",
        r"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    ),
    (
        r"prompt_encoder\.point_embed\.(\d+)\.weight",
        r"prompt_encoder.point_embeddings.\1.weight",
    ),
    (
        r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight",
        r"prompt_encoder.\1.weight",
    ),
    # Mask downscaling: official indices 0 conv, 1 norm, 3 conv, 4 norm,
    # 6 conv (2 and 5 are activations).
    (
        r"prompt_encoder\.mask_embed\.conv1\.(weight|bias)",
        r"prompt_encoder.mask_downscaling.0.\1",
    ),
    (
        r"prompt_encoder\.mask_embed\.layer_norm1\.(weight|bias)",
        r"prompt_encoder.mask_downscaling.1.\1",
    ),
    (
        r"prompt_encoder\.mask_embed\.conv2\.(weight|bias)",
        r"prompt_encoder.mask_downscaling.3.\1",
    ),
    (
        r"prompt_encoder\.mask_embed\.layer_norm2\.(weight|bias)",
        r"prompt_encoder.mask_downscaling.4.\1",
    ),
    (
        r"prompt_encoder\.mask_embed\.conv3\.(weight|bias)",
        r"prompt_encoder.mask_downscaling.6.\1",
    ),
    # Mask decoder (official MaskDecoder and TwoWayTransformer).
    (
        r"mask_decoder\.transformer\.layers\.(\d+)\.layer_norm([1-4])"
        r"\.(weight|bias)",
        r"mask_decoder.transformer.layers.\1.norm\2.\3",
    ),
    (
        r"mask_decoder\.transformer\.layers\.(\d+)\.(self_attn|"
        r"cross_attn_token_to_image|cross_attn_image_to_token)\."
        r"([qkv]_proj|out_proj)\.(weight|bias)",
        r"mask_decoder.transformer.layers.\1.\2.\3.\4",
    ),
    (
        r"mask_decoder\.transformer\.layers\.(\d+)\.mlp\.(lin[12])"
        r"\.(weight|bias)",
        r"mask_decoder.transformer.layers.\1.mlp.\2.\3",
    ),
    (
        r"mask_decoder\.transformer\.final_attn_token_to_image\."
        r"([qkv]_proj|out_proj)\.(weight|bias)",
        r"mask_decoder.transformer.final_attn_token_to_image.\1.\2",
    ),
    (
        r"mask_decoder\.transformer\.layer_norm_final_attn\.(weight|bias)",
        r"mask_decoder.transformer.norm_final_attn.\1",
    ),
    (
        r"mask_decoder\.(iou_token|mask_tokens)\.weight",
        r"mask_decoder.\1.weight",
    ),
    # Output upscaling: official indices 0 deconv, 1 norm, 3 deconv.
    (
        r"mask_decoder\.upscale_conv1\.(weight|bias)",
        r"mask_decoder.output_upscaling.0.\1",
    ),
    (
        r"mask_decoder\.upscale_layer_norm\.(weight|bias)",
        r"mask_decoder.output_upscaling.1.\1",
    ),
    (
        r"mask_decoder\.upscale_conv2\.(weight|bias)",
        r"mask_decoder.output_upscaling.3.\1",
    ),
)
# The MLPs whose layers the MLP rule renumbers.
_MLP = re.compile(
    r"(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))"
    r"\.(proj_in|layers\.(\d+)|proj_out)\.(weight|bias)"
)
_COMPILED = tuple((re.compile(p), r) for p, r in RENAMES)
# Names that only a Hugging Face SamModel has: they tell its files apart.
HF_PREFIXES = ("vision_encoder.", "shared_image_embedding.")
_TIED = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"


def is_hf_state_dict(state_dict: Mapping) -> bool:
    """Whether `state_dict` has the names of a Hugging Face `SamModel`."""
    return any(str(k).startswith(HF_PREFIXES) for k in state_dict)


def official_name(key: str, mlp_depths: Mapping[str, int]) -> str | None:
    """The official name of Hugging Face parameter `key`; None if unknown.

    Args:
        key: A `SamModel` parameter name.
        mlp_depths: Each MLP's prefix (`mask_decoder.iou_prediction_head`)
            to its number of linear layers.
    """
    match = _MLP.fullmatch(key)
    if match is not None:
        prefix, layer, index, kind = match.groups()
        if layer == "proj_in":
            j = 0
        elif layer == "proj_out":
            j = mlp_depths[prefix] - 1
        else:
            j = int(index) + 1
        return f"{prefix}.layers.{j}.{kind}"
    for pattern, replacement in _COMPILED:
        if pattern.fullmatch(key):
            return pattern.sub(replacement, key)
    return None


def _mlp_depths(keys) -> dict[str, int]:
    """Each MLP prefix to its depth: proj_in, proj_out and its layers.i."""
    layers: dict[str, set] = {}
    for key in keys:
        match = _MLP.fullmatch(key)
        if match is not None:
            layers.setdefault(match.group(1), set()).add(match.group(2))
    return {prefix: len(names) for prefix, names in layers.items()}


def official_state_dict(state_dict: Mapping) -> dict[str, np.ndarray]:
    """Rename a Hugging Face `SamModel` state dict to official names.

    Every key must translate, and no two keys may give one official name
    (except the tied Fourier matrix, whose two copies must be equal).

    Args:
        state_dict: `SamModel` parameter names to arrays or tensors.

    Returns:
        Official parameter names to arrays, values unchanged.

    Raises:
        ValueError: listing the keys no row translates, or the official
            names that two keys give.
    """
    keys = [str(k) for k in state_dict]
    depths = _mlp_depths(keys)
    out: dict[str, np.ndarray] = {}
    unknown, clashes = [], []
    for key in keys:
        name = official_name(key, depths)
        if name is None:
            unknown.append(key)
            continue
        value = as_array(key, state_dict[key])
        if name in out:
            # The one name two keys may give: the tied Fourier matrix.
            if name != _TIED or not np.array_equal(out[name], value):
                clashes.append(name)
            continue
        out[name] = value
    problems = []
    if unknown:
        problems.append(
            f"keys of no Hugging Face SamModel ({len(unknown)}): "
            + ", ".join(sorted(unknown))
        )
    if clashes:
        problems.append(
            f"official names given by two keys with different values "
            f"({len(clashes)}): " + ", ".join(sorted(clashes))
        )
    if problems:
        raise ValueError(
            "`state_dict` is not a Hugging Face SamModel state dict: "
            + "; ".join(problems)
        )
    return out
