"""Checkpoint formats: which one a path holds, read into official names.

Every format is read into the one form the loader knows, an official SAM
state dict plus the keras-sam configuration of its architecture, so that
loading, `keras-sam info` and `keras-sam convert` share one path:

- `"official"`: a `.pth`, `.pt`, `.bin` or `.safetensors` file with the
  official names; the architecture from the tensor shapes
  (`checkpoint.detect_architecture`), the decoder's heads assumed 8.
- `"mobile_sam"`: the same, with MobileSAM's TinyViT image encoder
  (told by its names, `image_encoder.layers.*`).
- `"huggingface"`: a transformers `SamModel` checkpoint, a folder with
  `config.json` (`model_type` `"sam"`) and `model.safetensors`,
  `pytorch_model.bin` or a sharded `model.safetensors.index.json`, or the
  weights file alone (told by its names, `vision_encoder.*`). Renamed by
  `hf_mapping`; the architecture from the shapes, with the heads, window
  and global blocks of `config.json` when there is one (which must agree
  with the shapes).
- `"keras_hub"`: a KerasHub SAM preset folder, `config.json` of a
  `SAMBackbone` and `model.weights.h5` or a sharded `model.weights.json`;
  the architecture from `config.json`, the weights read with h5py
  (`h5_weights`; keras-hub is not needed) through `keras_hub_mapping`.

The keras-sam safetensors format (config and Keras variable paths) is
read by `SAM.from_keras_safetensors`. A new format joins `_DIRECTORY_FORMATS`
(folders) or `read_checkpoint` (files) with its reader.
"""

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from keras_sam.convert import cache
from keras_sam.convert import checkpoint
from keras_sam.convert import h5_weights
from keras_sam.convert import hf_mapping
from keras_sam.convert import keras_hub_mapping
from keras_sam.convert import tiny_vit_mapping

OFFICIAL = "official"
MOBILE_SAM = "mobile_sam"
HUGGINGFACE = "huggingface"
KERAS_HUB = "keras_hub"
_HEADS = "mask_decoder.num_heads"
# Keys of a keras-hub layer config that are no constructor argument of ours.
_BASE_KEYS = ("name", "trainable", "dtype")


class Checkpoint(NamedTuple):
    """A checkpoint read into official names.

    Attributes:
        format: `"official"`, `"mobile_sam"`, `"huggingface"` or
            `"keras_hub"`.
        state: Official parameter names to arrays (PyTorch layouts).
        config: keras-sam constructor arguments of `"image_encoder"`,
            `"prompt_encoder"` and `"mask_decoder"`.
        assumed: Values in no file, taken by default
            (`{"mask_decoder.num_heads": 8}`).
    """

    format: str
    state: dict
    config: dict
    assumed: dict


def read_checkpoint(
    path: str | os.PathLike,
    *,
    mask_decoder_num_heads: int | None = None,
    use_cache: bool = True,
) -> Checkpoint:
    """Read a checkpoint file or folder of any supported format, safely.

    Args:
        path: An official or Hugging Face weights file, or a Hugging Face
            or KerasHub folder.
        mask_decoder_num_heads: The decoder's attention heads; None: the
            value the checkpoint stores, else the official 8. A value that
            disagrees with a stored one is refused.
        use_cache: Whether a PyTorch weights file is read through the
            cache of checkpoints already read (`keras_sam.convert.cache`).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: naming the path: unreadable, unsafe, of no known
            format, mixing formats, or not a SAM this package can build.
    """
    return read_checkpoint_then(
        path,
        lambda found: found,
        mask_decoder_num_heads=mask_decoder_num_heads,
        use_cache=use_cache,
    )


def read_checkpoint_then(
    path: str | os.PathLike,
    make,
    *,
    mask_decoder_num_heads: int | None = None,
    use_cache: bool = True,
):
    """`make(read_checkpoint(path, ...))`, with a cache entry's data
    verified while `make` runs (`keras_sam.convert.cache.OpenedCheckpoint`):
    its result is returned only once the data match their digest, and
    `make` runs again on the file when they do not. Same arguments and
    errors as `read_checkpoint`, and those of `make`."""
    path = Path(path)
    if path.is_dir():
        for is_format, read in _DIRECTORY_FORMATS:
            if is_format(path):
                return make(read(path, mask_decoder_num_heads))
        raise ValueError(
            f"Checkpoint folder {str(path)!r} is neither a Hugging Face "
            'SamModel (config.json with model_type "sam") nor a KerasHub '
            "SAM preset (config.json of a SAMBackbone)."
        )

    def from_state(state):
        if hf_mapping.is_hf_state_dict(state):
            found = _huggingface(path, state, {}, mask_decoder_num_heads)
        else:
            file_format = (
                MOBILE_SAM if tiny_vit_mapping.is_tiny_vit(state) else OFFICIAL
            )
            found = _official(path, state, mask_decoder_num_heads, file_format)
        return make(found)

    return cache.open_checkpoint(path, use_cache=use_cache).result(from_state)


def _official(path, state, heads, file_format, **detect) -> Checkpoint:
    used = (
        checkpoint.OFFICIAL_MASK_DECODER_NUM_HEADS if heads is None else heads
    )
    config = checkpoint.detect_checkpoint_architecture(
        path, state, mask_decoder_num_heads=used, **detect
    )
    assumed = {_HEADS: used} if heads is None else {}
    return Checkpoint(file_format, state, config, assumed)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"Cannot read {str(path)!r}: not JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"Cannot read {str(path)!r}: not a JSON object")
    return data


def _check_heads(path: Path, stored, heads) -> None:
    """Refuse a `mask_decoder_num_heads` other than config.json's."""
    if stored is not None and heads not in (None, stored):
        raise ValueError(
            f"`mask_decoder_num_heads` disagrees with the {stored} heads in "
            f"the config.json of {str(path)!r}. Received: "
            f"mask_decoder_num_heads={heads}"
        )


def _config_json(folder: Path) -> dict | None:
    path = folder / "config.json"
    return _read_json(path) if path.is_file() else None


# ---------------------------------------------------------------------------
# Hugging Face SamModel


def _is_huggingface(folder: Path) -> bool:
    config = _config_json(folder)
    return config is not None and config.get("model_type") == "sam"


def _read_huggingface_folder(folder: Path, heads) -> Checkpoint:
    config = _config_json(folder)
    if (folder / "model.safetensors").is_file():
        state = checkpoint.read_state_dict(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        state = checkpoint.read_state_dict(folder / "pytorch_model.bin")
    elif (folder / "model.safetensors.index.json").is_file():
        state = _read_hf_shards(folder / "model.safetensors.index.json")
    else:
        raise ValueError(
            f"Hugging Face checkpoint folder {str(folder)!r} has no "
            "model.safetensors, pytorch_model.bin or "
            "model.safetensors.index.json."
        )
    if not hf_mapping.is_hf_state_dict(state):
        raise ValueError(
            f"Checkpoint folder {str(folder)!r}: config.json describes a "
            "Hugging Face SamModel, but its weights do not have SamModel's "
            "names (vision_encoder.*)."
        )
    return _huggingface(folder, state, config, heads)


def _read_hf_shards(index: Path) -> dict:
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(v, str) and Path(v).name == v for v in weight_map.values()
    ):
        raise ValueError(
            f"Cannot read {str(index)!r}: its weight_map does not name "
            "shard files of its folder."
        )
    state: dict = {}
    for shard in sorted(set(weight_map.values())):
        for key, value in checkpoint.read_state_dict(
            index.parent / shard
        ).items():
            if weight_map.get(key) != shard or key in state:
                raise ValueError(
                    f"Cannot read {str(index)!r}: tensor {key!r} of shard "
                    f"{shard!r} is not mapped to it."
                )
            state[key] = value
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise ValueError(
            f"Cannot read {str(index)!r}: tensors of its weight_map are in "
            f"no shard ({len(missing)}): " + ", ".join(missing[:10])
        )
    return state


def _huggingface(path: Path, state, config: Mapping, heads) -> Checkpoint:
    if any(str(k).startswith("image_encoder.") for k in state):
        raise ValueError(
            f"Refusing checkpoint {str(path)!r}: it mixes Hugging Face "
            "SamModel names (vision_encoder.*) with official ones "
            "(image_encoder.*)."
        )
    try:
        official = hf_mapping.official_state_dict(state)
        detect = _hf_architecture(config)
    except ValueError as e:
        raise ValueError(f"Checkpoint {str(path)!r}: {e}") from e
    stored = detect.pop("mask_decoder_num_heads", None)
    _check_heads(path, stored, heads)
    found = _official(
        path,
        official,
        stored if heads is None else heads,
        HUGGINGFACE,
        **detect,
    )
    _check_hf_sizes(path, config, found.config)
    return found


# transformers' values of what keras-sam does not make configurable.
_HF_FIXED = (
    ("vision_config", "hidden_act", "gelu"),
    ("prompt_encoder_config", "hidden_act", "gelu"),
    ("prompt_encoder_config", "num_point_embeddings", 4),
    ("mask_decoder_config", "hidden_act", "relu"),
    ("mask_decoder_config", "attention_downsample_rate", 2),
)


def _hf_architecture(config: Mapping) -> dict:
    """`detect_architecture` keyword arguments from a SamModel config."""
    for section, key, value in _HF_FIXED:
        given = (config.get(section) or {}).get(key, value)
        if given != value:
            raise ValueError(
                f"config.json {section}.{key}={given!r} is not supported "
                f"(SAM uses {value!r})."
            )
    vision = config.get("vision_config") or {}
    decoder = config.get("mask_decoder_config") or {}
    out = {}
    for ours, section, key in (
        ("image_encoder_num_heads", vision, "num_attention_heads"),
        ("window_size", vision, "window_size"),
        ("global_attention_layer_indices", vision, "global_attn_indexes"),
        ("mask_decoder_num_heads", decoder, "num_attention_heads"),
    ):
        if section.get(key) is not None:
            value = section[key]
            out[ours] = tuple(value) if isinstance(value, list) else value
    return out


# (config.json section, key, part, our key, index or None): sizes the
# shapes give, which config.json must repeat.
_HF_SIZES = (
    ("vision_config", "hidden_size", "image_encoder", "hidden_size", None),
    ("vision_config", "num_hidden_layers", "image_encoder", "num_layers", None),
    ("vision_config", "mlp_dim", "image_encoder", "intermediate_dim", None),
    ("vision_config", "patch_size", "image_encoder", "patch_size", None),
    ("vision_config", "image_size", "image_encoder", "image_shape", 0),
    ("vision_config", "num_channels", "image_encoder", "image_shape", 2),
    (
        "vision_config",
        "output_channels",
        "image_encoder",
        "num_output_channels",
        None,
    ),
    (
        "prompt_encoder_config",
        "hidden_size",
        "prompt_encoder",
        "hidden_size",
        None,
    ),
    (
        "prompt_encoder_config",
        "mask_input_channels",
        "prompt_encoder",
        "mask_in_channels",
        None,
    ),
    ("mask_decoder_config", "hidden_size", "mask_decoder", "hidden_size", None),
    (
        "mask_decoder_config",
        "num_hidden_layers",
        "mask_decoder",
        "num_layers",
        None,
    ),
    (
        "mask_decoder_config",
        "mlp_dim",
        "mask_decoder",
        "intermediate_dim",
        None,
    ),
    (
        "mask_decoder_config",
        "iou_head_depth",
        "mask_decoder",
        "iou_head_depth",
        None,
    ),
    (
        "mask_decoder_config",
        "iou_head_hidden_dim",
        "mask_decoder",
        "iou_head_hidden_dim",
        None,
    ),
    (
        "mask_decoder_config",
        "num_multimask_outputs",
        "mask_decoder",
        "num_multimask_outputs",
        None,
    ),
)


def _check_hf_sizes(path: Path, config: Mapping, detected: Mapping) -> None:
    wrong = []
    for section, key, part, ours, index in _HF_SIZES:
        given = (config.get(section) or {}).get(key)
        if given is None:
            continue
        value = detected[part][ours]
        value = value if index is None else value[index]
        if given != value:
            wrong.append(f"{section}.{key}={given!r} (weights: {value})")
    if wrong:
        raise ValueError(
            f"Checkpoint {str(path)!r}: its config.json disagrees with its "
            "weights: " + ", ".join(wrong)
        )


# ---------------------------------------------------------------------------
# KerasHub SAM presets


def _is_keras_hub(folder: Path) -> bool:
    config = _config_json(folder)
    return (
        config is not None
        and str(config.get("module", "")).startswith("keras_hub.")
        and "config" in config
    )


def _read_keras_hub_folder(folder: Path, heads) -> Checkpoint:
    config = _keras_hub_config(folder, _config_json(folder))
    _check_heads(folder, config["mask_decoder"].get("num_heads"), heads)
    if (folder / "model.weights.h5").is_file():
        arrays = h5_weights.read_weights_h5(folder / "model.weights.h5")
    elif (folder / "model.weights.json").is_file():
        arrays = h5_weights.read_sharded_weights(folder / "model.weights.json")
    else:
        raise ValueError(
            f"KerasHub preset {str(folder)!r} has no model.weights.h5 or "
            "model.weights.json."
        )
    try:
        checkpoint.check_architecture(
            config,
            parameters=sum(math.prod(a.shape) for a in arrays.values()),
        )
        state = keras_hub_mapping.official_state_dict(arrays, config)
    except ValueError as e:
        raise ValueError(
            f"KerasHub preset {str(folder)!r} does not describe a SAM this "
            f"package can build: {e}"
        ) from e
    return Checkpoint(KERAS_HUB, state, config, {})


def _keras_hub_config(folder: Path, config: Mapping) -> dict:
    """Our three config dicts from a preset's config.json."""
    where = f"KerasHub preset {str(folder)!r}"
    if config.get("class_name") != "SAMBackbone":
        raise ValueError(
            f"{where} holds a {config.get('class_name')!r}, not a SAMBackbone."
        )
    expected = {
        "image_encoder": "ViTDetBackbone",
        "prompt_encoder": "SAMPromptEncoder",
        "mask_decoder": "SAMMaskDecoder",
    }
    out = {}
    for part, class_name in expected.items():
        entry = (config.get("config") or {}).get(part)
        if (
            not isinstance(entry, dict)
            or entry.get("class_name") != class_name
            or not isinstance(entry.get("config"), dict)
        ):
            raise ValueError(
                f"{where}: config.json has no {class_name} as {part}."
            )
        out[part] = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in entry["config"].items()
            if k not in _BASE_KEYS
        }
    return out


_DIRECTORY_FORMATS = (
    (_is_huggingface, _read_huggingface_folder),
    (_is_keras_hub, _read_keras_hub_folder),
)
