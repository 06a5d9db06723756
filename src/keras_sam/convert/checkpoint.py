"""Safe reading and writing of checkpoint files, and SAM config detection.

Checkpoints are read into plain `dict[str, np.ndarray]`, never through bare
`pickle`: safetensors files with the `safetensors` package (no torch
needed), PyTorch files with `torch.load(..., weights_only=True)`, which
refuses any pickled object other than tensors and plain containers, so a
malicious file cannot run code. Every failure to read a file becomes a
`ValueError` naming the file and the reason.
"""

import json
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_SAFETENSORS_SUFFIXES = (".safetensors",)
_ZIP_MAGIC = b"PK\x03\x04"
# Keys under which training scripts commonly nest the state dict.
_WRAPPER_KEYS = ("model", "state_dict")
# The official decoder's head count is not visible in any weight shape;
# every official SAM checkpoint (ViT-B, -L, -H) uses 8.
OFFICIAL_MASK_DECODER_NUM_HEADS = 8


def _import_safetensors():
    try:
        import safetensors  # noqa: F401
        from safetensors import safe_open
    except ImportError as e:
        raise ImportError(
            "Reading and writing .safetensors files needs the `safetensors` "
            'package: pip install "keras-sam[convert]"'
        ) from e
    return safe_open


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "Reading PyTorch checkpoints (.pth, .pt, .bin) needs `torch`: "
            'pip install "keras-sam[torch]"'
        ) from e
    return torch


def _sniff(path: Path) -> str:
    """Format of a file by its content: "torch" or "safetensors"."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(_ZIP_MAGIC):
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len <= path.stat().st_size - 8:
            return "safetensors"
    raise ValueError(
        f"Cannot read checkpoint {str(path)!r}: unrecognised format (neither "
        "a PyTorch zip archive nor a safetensors file); use a .safetensors, "
        ".pth, .pt or .bin file."
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a checkpoint file into a dict of NumPy arrays, safely.

    The format follows the file extension: `.safetensors` is read with the
    `safetensors` package; `.pth`, `.pt` and `.bin` with
    `torch.load(path, map_location="cpu", weights_only=True)` (torch is
    imported only here). For another extension the content decides: a zip
    archive is a PyTorch file, an 8-byte little-endian header length
    followed by `{` a safetensors file.

    A PyTorch file may hold the state dict itself, or a dict that has it
    under `"model"` or `"state_dict"` (checked in this order; the other
    entries of such a wrapper, e.g. optimizer state, are ignored). bfloat16
    and float16 tensors become float32 arrays; other dtypes are kept.

    Args:
        path: The checkpoint file.

    Returns:
        Parameter names to arrays, in file order.

    Raises:
        FileNotFoundError: `path` does not exist.
        ImportError: the package needed for the format is missing.
        ValueError: the file is truncated, corrupt or of unknown format; a
            PyTorch file holds objects that `weights_only` loading refuses
            (code could run when unpickling them); the state dict holds
            anything but tensors (the key is named).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint file at {str(path)!r}")
    if not path.is_file():
        raise ValueError(f"Checkpoint path {str(path)!r} is not a file")
    suffix = path.suffix.lower()
    if suffix in _SAFETENSORS_SUFFIXES:
        kind = "safetensors"
    elif suffix in _TORCH_SUFFIXES:
        kind = "torch"
    else:
        kind = _sniff(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


def _bad_file(path: Path, reason) -> ValueError:
    reason = str(reason).strip().splitlines()[0] if str(reason) else ""
    return ValueError(
        f"Cannot read checkpoint {str(path)!r}: the file is truncated or "
        f"corrupt ({reason or 'no details'})"
    )


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` strings of a safetensors file ({} if none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such checkpoint file: {path}")
    try:
        header, _ = _safetensors_header(path)
    except (ValueError, OSError) as e:
        raise _bad_file(path, e) from e
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"Checkpoint {str(path)!r}: malformed metadata")
    return {str(k): str(v) for k, v in metadata.items()}


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The safetensors JSON header and the offset where the data starts."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    return header, 8 + header_len


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    safe_open = _import_safetensors()
    out = {}
    bfloat16_keys = []
    key = None
    try:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                dtype = f.get_slice(key).get_dtype()
                if dtype == "BF16":
                    # NumPy has no bfloat16; read the raw bits below.
                    bfloat16_keys.append(key)
                    out[key] = None
                    continue
                array = f.get_tensor(key)
                if array.dtype == np.float16:
                    array = array.astype(np.float32)
                out[key] = array
    except TypeError as e:
        raise ValueError(
            f"Cannot read checkpoint {str(path)!r}: tensor {key!r} has a "
            f"dtype NumPy cannot represent ({e})"
        ) from e
    except Exception as e:  # safetensors raises its own SafetensorError
        raise _bad_file(path, e) from e
    if bfloat16_keys:
        header, data_start = _safetensors_header(path)
        for key in bfloat16_keys:
            begin, end = header[key]["data_offsets"]
            bits = np.fromfile(
                path,
                dtype="<u2",
                count=(end - begin) // 2,
                offset=data_start + begin,
            )
            # bfloat16 is the top half of a float32.
            out[key] = (
                (bits.astype(np.uint32) << 16)
                .view(np.float32)
                .reshape(header[key]["shape"])
            )
    return out


def _weights_only_reason(message: str) -> str:
    match = re.search(r"(Trying to load unsupported [^\n]*)", message)
    if match is None:
        match = re.search(r"(Unsupported [^\n]*)", message)
    return f" ({match.group(1).strip().rstrip('.')})" if match else ""


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    torch = _import_torch()
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        if "weights only" in message.lower():
            raise ValueError(
                f"Refusing to load checkpoint {str(path)!r}: it contains "
                "pickled objects other than tensors, whose unpickling could "
                "run arbitrary code; it was read with torch.load("
                "weights_only=True), which refuses them"
                f"{_weights_only_reason(message)}. Convert the file to "
                "safetensors from a trusted environment instead."
            ) from e
        raise _bad_file(path, e) from e
    except (PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # RuntimeError, EOFError, OSError, IndexError...
        raise _bad_file(path, f"{type(e).__name__}: {e}") from e

    state_dict = loaded
    if isinstance(loaded, Mapping):
        for wrapper_key in _WRAPPER_KEYS:
            if isinstance(loaded.get(wrapper_key), Mapping):
                state_dict = loaded[wrapper_key]
                break
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"Checkpoint {str(path)!r} holds a {type(state_dict).__name__} "
            "not a state dict (a dict of parameter names to tensors, "
            'possibly under a "model" or "state_dict" key)'
        )
    out = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(
                f"Checkpoint {str(path)!r} is not a plain state dict: entry "
                f"{key!r} is of type {type(value).__name__}, not a tensor"
            )
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        try:
            out[key] = value.numpy()
        except (TypeError, RuntimeError) as e:
            raise ValueError(
                f"Checkpoint {str(path)!r}: tensor {key!r} of dtype "
                f"{value.dtype} cannot become a NumPy array ({e})"
            ) from e
    return out


def as_array(key: str, value) -> np.ndarray:
    """A state-dict value (NumPy array or torch tensor) as a NumPy array;
    bfloat16 tensors become float32. Raises ValueError naming `key`."""
    if hasattr(value, "detach"):  # a torch tensor; no torch import needed
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    if not isinstance(value, np.ndarray):
        raise ValueError(
            "`state_dict` values must be NumPy arrays or torch tensors. "
            f"Received: state_dict[{key!r}] of type {type(value).__name__}"
        )
    return np.ascontiguousarray(value)


def write_safetensors(
    state_dict: Mapping,
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a state dict to a safetensors file, atomically.

    The data go to a temporary file in the destination directory, which is
    flushed to disk (`fsync`) and then renamed over `path` (`os.replace`):
    readers see either the old file or the complete new one, never a
    partial write.

    Args:
        state_dict: Parameter names to NumPy arrays or torch tensors
            (bfloat16 tensors are written as float32).
        path: The destination file.
        metadata: Optional string-to-string metadata stored in the header.

    Raises:
        ImportError: `safetensors` is missing.
        ValueError: a key is not a string, a value is not an array, or
            metadata is not string to string.
    """
    _import_safetensors()
    from safetensors.numpy import save_file

    arrays = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise ValueError(
                f"`state_dict` keys must be strings. Received: {key!r}"
            )
        arrays[key] = as_array(key, value)
    if metadata is not None:
        metadata = dict(metadata)
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ValueError(
                    "`metadata` must map strings to strings. Received: "
                    f"{k!r}: {v!r}"
                )
    path = Path(path)
    directory = path.parent
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=f".{path.name}.", suffix=".tmp"
    )
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    # Persist the rename itself; not possible on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# Architecture detection


def _shape(key: str, value) -> tuple[int, ...]:
    shape = getattr(value, "shape", value)
    try:
        return tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ValueError(
            "`state_dict` values must be arrays, tensors or shapes. "
            f"Received: state_dict[{key!r}] of type {type(value).__name__}"
        ) from None


def _indices(keys, prefix: str) -> list[int]:
    """Sorted `i` of the keys `prefix{i}.*`; must be 0..n-1."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})
    if found != list(range(len(found))):
        raise ValueError(
            f"`state_dict` entries {prefix}{{i}} are not numbered 0..n-1. "
            f"Received indices: {found}"
        )
    return found


_REQUIRED_KEYS = (
    "image_encoder.patch_embed.proj.weight",
    "image_encoder.blocks.0.mlp.lin1.weight",
    "image_encoder.neck.0.weight",
    "prompt_encoder.no_mask_embed.weight",
    "prompt_encoder.mask_downscaling.3.weight",
    "mask_decoder.iou_token.weight",
    "mask_decoder.mask_tokens.weight",
    "mask_decoder.transformer.layers.0.mlp.lin1.weight",
    "mask_decoder.iou_prediction_head.layers.0.weight",
)


def detect_architecture(
    state_dict: Mapping,
    *,
    mask_decoder_num_heads: int = OFFICIAL_MASK_DECODER_NUM_HEADS,
    image_encoder_num_heads: int | None = None,
    window_size: int | None = None,
    global_attention_layer_indices: Sequence[int] | None = None,
) -> dict[str, dict]:
    """Infer the keras-sam configuration of an official SAM state dict.

    Only tensor shapes are read, so the values may be arrays, tensors (meta
    tensors included) or plain shapes. Keys are those of a whole official
    `Sam` (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`).

    What the shapes fix: widths, depths and patch size directly; the image
    size from `pos_embed` `(1, H/p, W/p, C)` (or, without it, from a global
    block's relative position table); the encoder heads from
    `rel_pos_h` `(2 * side - 1, C / heads)`; the global-attention blocks as
    those whose table spans the whole grid, the window size from the
    others' `(2 * window - 1)`. When every block's table spans the grid,
    all are reported global with `window_size=0`, which computes the same
    as windows of the grid's size. Not in any shape: the decoder's heads
    (8 in every official checkpoint; `mask_decoder_num_heads`), and, for
    an encoder without relative positions, its heads, window size and
    global blocks (then required as arguments).

    Args:
        state_dict: Official parameter names to arrays, tensors or shapes.
        mask_decoder_num_heads: Attention heads of the two-way transformer.
        image_encoder_num_heads: Encoder heads; only used, and then needed,
            without relative position tables, else must agree with them.
        window_size: Like `image_encoder_num_heads`, for the window size.
        global_attention_layer_indices: Like `image_encoder_num_heads`, for
            the global-attention blocks.

    Returns:
        `{"image_encoder": ..., "prompt_encoder": ..., "mask_decoder": ...}`,
        keyword arguments of `SAMImageEncoder`, `SAMPromptEncoder` and
        `SAMMaskDecoder`.

    Raises:
        ValueError: keys of a SAM checkpoint are missing, shapes are
            inconsistent, or a value the shapes cannot give is not passed.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            "`state_dict` must be a mapping of parameter names to arrays. "
            f"Received: state_dict of type {type(state_dict).__name__}"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in state_dict]
    if missing:
        raise ValueError(
            "`state_dict` is not an official SAM state dict; missing keys "
            f"({len(missing)}): " + ", ".join(missing)
        )
    keys = list(state_dict)

    def shape(key: str) -> tuple[int, ...]:
        return _shape(key, state_dict[key])

    encoder = _detect_image_encoder(
        keys,
        shape,
        num_heads=image_encoder_num_heads,
        window_size=window_size,
        global_indices=global_attention_layer_indices,
    )
    grid = (
        encoder["image_shape"][0] // encoder["patch_size"],
        encoder["image_shape"][1] // encoder["patch_size"],
    )
    prompt = {
        "hidden_size": shape("prompt_encoder.no_mask_embed.weight")[1],
        "image_embedding_size": grid,
        "input_image_size": tuple(encoder["image_shape"][:2]),
        "mask_in_channels": shape("prompt_encoder.mask_downscaling.3.weight")[
            0
        ],
    }
    decoder_width = shape("mask_decoder.iou_token.weight")[1]
    decoder = {
        "hidden_size": decoder_width,
        "num_layers": len(_indices(keys, "mask_decoder.transformer.layers.")),
        "intermediate_dim": shape(
            "mask_decoder.transformer.layers.0.mlp.lin1.weight"
        )[0],
        "num_heads": int(mask_decoder_num_heads),
        "embedding_dim": decoder_width,
        "num_multimask_outputs": shape("mask_decoder.mask_tokens.weight")[0]
        - 1,
        "iou_head_depth": len(
            _indices(keys, "mask_decoder.iou_prediction_head.layers.")
        ),
        "iou_head_hidden_dim": shape(
            "mask_decoder.iou_prediction_head.layers.0.weight"
        )[0],
    }
    widths = {
        "image_encoder.neck.0.weight (output channels)": encoder[
            "num_output_channels"
        ],
        "prompt_encoder.no_mask_embed.weight (width)": prompt["hidden_size"],
        "mask_decoder.iou_token.weight (width)": decoder_width,
    }
    if len(set(widths.values())) != 1:
        raise ValueError(
            "`state_dict` embedding widths disagree: "
            + ", ".join(f"{k}={v}" for k, v in widths.items())
        )
    return {
        "image_encoder": encoder,
        "prompt_encoder": prompt,
        "mask_decoder": decoder,
    }


def _detect_image_encoder(
    keys, shape, *, num_heads, window_size, global_indices
) -> dict:
    p = "image_encoder."
    proj = shape(p + "patch_embed.proj.weight")  # (C, in, p, p)
    hidden_size, in_channels, patch_size = proj[0], proj[1], proj[-1]
    blocks = _indices(keys, p + "blocks.")
    use_abs_pos = p + "pos_embed" in keys
    use_rel_pos = all(
        f"{p}blocks.{i}.attn.rel_pos_{a}" in keys for i in blocks for a in "hw"
    )
    # (2 * side_h - 1, 2 * side_w - 1) per block.
    tables = (
        [
            (
                shape(f"{p}blocks.{i}.attn.rel_pos_h")[0],
                shape(f"{p}blocks.{i}.attn.rel_pos_w")[0],
            )
            for i in blocks
        ]
        if use_rel_pos
        else []
    )
    if use_abs_pos:
        pos = shape(p + "pos_embed")  # (1, H/p, W/p, C)
        grid = (pos[1], pos[2])
    elif tables:
        largest = max(tables)
        grid = ((largest[0] + 1) // 2, (largest[1] + 1) // 2)
    else:
        raise ValueError(
            "Cannot infer the image size: `state_dict` has neither "
            "image_encoder.pos_embed nor relative position tables"
        )
    image_shape = (grid[0] * patch_size, grid[1] * patch_size, in_channels)

    if use_rel_pos:
        head_dim = shape(f"{p}blocks.0.attn.rel_pos_h")[1]
        detected_heads = hidden_size // head_dim
        full = (2 * grid[0] - 1, 2 * grid[1] - 1)
        detected_global = tuple(i for i in blocks if tables[i] == full)
        sides = {tables[i] for i in blocks if tables[i] != full}
        if len(sides) > 1 or any(h != w for h, w in sides):
            raise ValueError(
                "`state_dict` relative position tables fit neither the "
                f"grid {grid} nor one square window. Received table lengths "
                f"(rel_pos_h, rel_pos_w) per block: {tables}"
            )
        detected_window = (sides.pop()[0] + 1) // 2 if sides else 0
        for name, given, detected in (
            ("image_encoder_num_heads", num_heads, detected_heads),
            ("window_size", window_size, detected_window),
            (
                "global_attention_layer_indices",
                None if global_indices is None else tuple(global_indices),
                detected_global,
            ),
        ):
            if given is not None and given != detected:
                raise ValueError(
                    f"`{name}` disagrees with the relative position tables "
                    f"of `state_dict`, which give {detected}. Received: "
                    f"{name}={given}"
                )
        num_heads, window_size = detected_heads, detected_window
        global_indices = detected_global
    else:
        for name, given in (
            ("image_encoder_num_heads", num_heads),
            ("window_size", window_size),
            ("global_attention_layer_indices", global_indices),
        ):
            if given is None:
                raise ValueError(
                    f"`{name}` cannot be inferred from a state dict without "
                    "relative position tables (rel_pos_h/rel_pos_w); pass "
                    "it explicitly."
                )
        global_indices = tuple(int(i) for i in global_indices)

    return {
        "hidden_size": hidden_size,
        "num_layers": len(blocks),
        "intermediate_dim": shape(f"{p}blocks.0.mlp.lin1.weight")[0],
        "num_heads": int(num_heads),
        "global_attention_layer_indices": global_indices,
        "image_shape": image_shape,
        "patch_size": patch_size,
        "num_output_channels": shape(p + "neck.0.weight")[0],
        "window_size": int(window_size),
        "use_bias": f"{p}blocks.0.attn.qkv.bias" in keys,
        "use_abs_pos": use_abs_pos,
        "use_rel_pos": use_rel_pos,
    }
