"""Safe reading and writing of checkpoint files, and SAM config detection.

Checkpoints are read into plain `dict[str, np.ndarray]`, never through bare
`pickle`: safetensors files with the `safetensors` package (no torch
needed), PyTorch files with `torch.load(..., weights_only=True)`, which
refuses any pickled object other than tensors and plain containers, so a
malicious file cannot run code. Every failure to read a file becomes a
`ValueError` naming the file and the reason.

A file cannot make the reader allocate much more than its own size: the
sizes it declares are checked against the bytes it holds before anything is
read (safetensors header, zip entries), and so are the tensors PyTorch
rebuilds (no zero strides, storages as large as the tensors on them). SAM
weights are floating point, never empty and finite; anything else is
refused. `detect_architecture` refuses models larger than twice ViT-H in
any dimension, or larger than the weights given, so that no checkpoint
makes the loader build an enormous model.
"""

import json
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_sam import io
from keras_sam.convert import tiny_vit_mapping

# The `format` in the metadata of a keras-sam safetensors file (Keras
# variable paths and the architecture; `SAM.save_keras_safetensors`).
KERAS_SAFETENSORS_FORMAT = "keras_sam.variable_paths"

_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_SAFETENSORS_SUFFIXES = (".safetensors",)
_ZIP_MAGIC = b"PK\x03\x04"
# Keys under which training scripts commonly nest the state dict.
_WRAPPER_KEYS = ("model", "state_dict")
# The official decoder's head count is not visible in any weight shape;
# every official SAM checkpoint (ViT-B, -L, -H) uses 8.
OFFICIAL_MASK_DECODER_NUM_HEADS = 8
# The most tensor bytes a file may declare: its size times this, plus
# _DECLARED_SLACK. Safetensors and torch.save store tensors uncompressed,
# so an honest file declares at most its own size.
_DECLARED_RATIO = 1.5
_DECLARED_SLACK = 1 << 20
# The largest JSON header the safetensors package itself accepts.
_MAX_SAFETENSORS_HEADER = 100_000_000
# Safetensors dtypes of SAM weights (to their sizes in bytes), and readable
# names of the others.
_SAFETENSORS_FLOATS = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_SAFETENSORS_DTYPE_NAMES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "U32": "uint32",
    "I32": "int32",
    "U64": "uint64",
    "I64": "int64",
    "C64": "complex64",
    "C128": "complex128",
}
_FLOAT_NAMES = "float16, bfloat16, float32 or float64"


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


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in _TORCH_SUFFIXES:
        return "torch"
    return _sniff(path)


def checkpoint_format(path: str | os.PathLike) -> str:
    """How `read_state_dict` reads `path`: "torch" or "safetensors" (by
    its extension, else its content; see there)."""
    path = Path(path)
    _check_path(path)
    return _kind(path)


def _check_path(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint file at {str(path)!r}")
    if not path.is_file():
        raise ValueError(f"Checkpoint path {str(path)!r} is not a file")


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
    and float16 tensors become float32 arrays; float32 and float64 are kept.
    BatchNorm step counters (`*.num_batches_tracked`, one int64 each, in
    MobileSAM's TinyViT) are dropped: they are no weights.

    The file cannot make the reader allocate much beyond its own size:
    before any tensor is read, the sizes the file declares (safetensors
    header; zip entries of a PyTorch file, deflated ones included) must fit
    in 1.5 times its size plus 1 MiB, and each safetensors tensor's shape
    must match its data offsets. The tensors PyTorch rebuilds must not
    repeat their data (a zero stride, or a storage smaller than the
    tensor), and together fit in the same limit.

    Args:
        path: The checkpoint file.

    Returns:
        Parameter names to arrays, in file order.

    Raises:
        FileNotFoundError: `path` does not exist.
        ImportError: the package needed for the format is missing.
        ValueError: the file is truncated, corrupt or of unknown format; it
            declares more data than it holds; a PyTorch file holds objects
            that `weights_only` loading refuses (code could run when
            unpickling them); the state dict holds anything but tensors, or
            a tensor that is not floating point, has a zero dimension, or
            holds NaN or infinity (the key is named).
    """
    path = Path(path)
    _check_path(path)
    if _kind(path) == "safetensors":
        state = _read_safetensors(path)
    else:
        state = _read_torch(path)
    for key, array in state.items():
        check_finite(path, key, array)
    return state


def check_finite(path: str | os.PathLike, key: str, array: np.ndarray) -> None:
    """Refuse a tensor holding NaN or infinity, naming file and key.

    Two reductions without a temporary array (NaN propagates through
    `min`/`max`, an infinity is the one or the other); the values are only
    counted once one is found.
    """
    if not array.size or (
        np.isfinite(array.min()) and np.isfinite(array.max())
    ):
        return
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    raise ValueError(
        f"Refusing checkpoint {str(path)!r}: tensor {key!r} holds "
        f"{bad} non-finite values (NaN or infinity)."
    )


def _bad_file(path: Path, reason) -> ValueError:
    reason = str(reason).strip().splitlines()[0] if str(reason) else ""
    return ValueError(
        f"Cannot read checkpoint {str(path)!r}: the file is truncated or "
        f"corrupt ({reason or 'no details'})"
    )


def _declared_limit(file_size: int) -> int:
    return int(_DECLARED_RATIO * file_size) + _DECLARED_SLACK


def _too_much_declared(path: Path, what: str, declared: int) -> ValueError:
    size = path.stat().st_size
    return ValueError(
        f"Refusing checkpoint {str(path)!r}: {what} {declared} bytes, more "
        f"than a {size}-byte file can hold (limit: 1.5 times its size plus "
        f"1 MiB, {_declared_limit(size)} bytes)."
    )


def _refuse_dtype(path: Path, key: str, dtype: str) -> ValueError:
    return ValueError(
        f"Refusing checkpoint {str(path)!r}: tensor {key!r} has dtype "
        f"{dtype}, but SAM weights are floating point ({_FLOAT_NAMES})."
    )


def _refuse_empty(path: Path, key: str, shape) -> ValueError:
    return ValueError(
        f"Refusing checkpoint {str(path)!r}: tensor {key!r} has shape "
        f"{list(shape)} with a zero dimension, which no SAM weight has."
    )


def safetensors_format(path: str | os.PathLike) -> str | None:
    """The `format` metadata of a safetensors file; None if it has none or
    `path` is a PyTorch file. `"keras_sam.variable_paths"` marks a file of
    `SAM.save_keras_safetensors` (config and Keras variable paths)."""
    path = Path(path)
    _check_path(path)
    if _kind(path) != "safetensors":
        return None
    return read_safetensors_metadata(path).get("format")


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` strings of a safetensors file ({} if none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such checkpoint file: {path}")
    header, _ = _safetensors_header(path)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"Checkpoint {str(path)!r}: malformed metadata")
    return {str(k): str(v) for k, v in metadata.items()}


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The safetensors JSON header and the offset where the data starts;
    every tensor entry checked against the file's size. Reads only the
    header."""
    size = path.stat().st_size
    try:
        f = open(path, "rb")
    except OSError as e:
        raise _bad_file(path, f"{type(e).__name__}: {e}") from e
    with f:
        return read_safetensors_header(f, path, size)


def read_safetensors_header(f, path: Path, size: int) -> tuple[dict, int]:
    """The JSON header of the safetensors file open as `f` (at its start)
    and the offset where its data starts, every tensor entry checked
    against `size`, the file's size: floating-point dtypes only, no zero
    dimension, data offsets inside the file that match each shape, and no
    more bytes declared than the file holds. `path` names the file in the
    `ValueError`s."""
    try:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes, shorter than the header")
        header_len = int.from_bytes(head, "little")
        if header_len > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise ValueError(
                f"header of {header_len} bytes in a {size}-byte file"
            )
        header = json.loads(f.read(header_len))
    except (ValueError, OSError, RecursionError) as e:  # bad JSON, UTF-8
        raise _bad_file(path, f"{type(e).__name__}: {e}") from e
    if not isinstance(header, dict):
        raise _bad_file(path, "the header is not a JSON object")
    data_start = 8 + header_len
    data_size = size - data_start
    declared = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        declared += _check_safetensors_entry(path, key, entry, data_size)
    if declared > data_size:
        raise _too_much_declared(path, "its tensors declare", declared)
    return header, data_start


def _check_safetensors_entry(path: Path, key, entry, data_size: int) -> int:
    """The bytes one header entry declares, checked against the file."""
    shape = entry.get("shape") if isinstance(entry, dict) else None
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    dtype = entry.get("dtype") if isinstance(entry, dict) else None
    if (
        not isinstance(dtype, str)
        or not isinstance(shape, list)
        or not all(type(d) is int and d >= 0 for d in shape)
        or not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
    ):
        raise _bad_file(path, f"malformed header entry for tensor {key!r}")
    if dtype not in _SAFETENSORS_FLOATS:
        raise _refuse_dtype(
            path, key, _SAFETENSORS_DTYPE_NAMES.get(dtype, dtype)
        )
    if 0 in shape:
        raise _refuse_empty(path, key, shape)
    nbytes = math.prod(shape) * _SAFETENSORS_FLOATS[dtype]
    begin, end = offsets
    if not 0 <= begin <= end <= data_size or end - begin != nbytes:
        raise _bad_file(
            path,
            f"tensor {key!r} of shape {shape} and dtype {dtype} needs "
            f"{nbytes} bytes, but its data offsets are {offsets} in "
            f"{data_size} bytes of tensor data",
        )
    return nbytes


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    safe_open = _import_safetensors()
    # Checks every declared size against the file before reading any data.
    header, data_start = _safetensors_header(path)
    out = {}
    bfloat16_keys = []
    try:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                if header[key]["dtype"] == "BF16":
                    # NumPy has no bfloat16; read the raw bits below.
                    bfloat16_keys.append(key)
                    out[key] = None
                    continue
                array = f.get_tensor(key)
                if array.dtype == np.float16:
                    array = array.astype(np.float32)
                out[key] = array
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
    except Exception as e:  # safetensors raises its own SafetensorError
        raise _bad_file(path, e) from e
    return out


def _weights_only_reason(message: str) -> str:
    match = re.search(r"(Trying to load unsupported [^\n]*)", message)
    if match is None:
        match = re.search(r"(Unsupported [^\n]*)", message)
    return f" ({match.group(1).strip().rstrip('.')})" if match else ""


def _check_zip(path: Path) -> None:
    """Refuse a PyTorch zip archive whose entries expand beyond what the
    file can hold (torch.save stores them uncompressed; a deflated archive
    could expand a small file into gigabytes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise _bad_file(path, f"{type(e).__name__}: {e}") from e
    expanded = sum(info.file_size for info in infos)
    if expanded > _declared_limit(path.stat().st_size):
        compressed = sum(
            info.compress_type != zipfile.ZIP_STORED for info in infos
        )
        raise _too_much_declared(
            path,
            f"its zip entries ({compressed} of {len(infos)} compressed) "
            "expand to",
            expanded,
        )


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    torch = _import_torch()
    with open(path, "rb") as f:
        is_zip = f.read(4) == _ZIP_MAGIC
    if is_zip:
        _check_zip(path)
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
    floats = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    # BatchNorm's step counter (MobileSAM's TinyViT): one integer, no
    # weight; dropped.
    state_dict = {
        k: v
        for k, v in state_dict.items()
        if not (
            isinstance(k, str)
            and k.endswith(".num_batches_tracked")
            and isinstance(v, torch.Tensor)
            and v.dtype == torch.int64
            and v.numel() == 1
        )
    }
    declared = 0
    # Every tensor checked before any is converted (which may copy).
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(
                f"Checkpoint {str(path)!r} is not a plain state dict: entry "
                f"{key!r} is of type {type(value).__name__}, not a tensor"
            )
        if value.layout != torch.strided:
            raise ValueError(
                f"Refusing checkpoint {str(path)!r}: tensor {key!r} has "
                f"layout {str(value.layout).removeprefix('torch.')}, not a "
                "dense (strided) tensor."
            )
        if value.dtype not in floats:
            raise _refuse_dtype(
                path, key, str(value.dtype).removeprefix("torch.")
            )
        shape = tuple(value.shape)
        if 0 in shape:
            raise _refuse_empty(path, key, shape)
        nbytes = value.numel() * value.element_size()
        stride = value.stride()
        if any(s == 0 and n > 1 for s, n in zip(stride, shape, strict=True)):
            raise ValueError(
                f"Refusing checkpoint {str(path)!r}: tensor {key!r} of shape "
                f"{list(shape)} has strides {list(stride)}, a view repeating "
                "its data (zero stride), which no saved SAM weight is."
            )
        storage = value.untyped_storage().nbytes()
        if storage < nbytes:
            raise ValueError(
                f"Refusing checkpoint {str(path)!r}: tensor {key!r} of shape "
                f"{list(shape)} declares {nbytes} bytes but its storage "
                f"holds only {storage}, a view repeating its data."
            )
        declared += nbytes
    if declared > _declared_limit(path.stat().st_size):
        raise _too_much_declared(path, "its tensors declare", declared)
    out = {}
    for key, value in state_dict.items():
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        out[key] = value.numpy()
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

    The data go to a temporary file in the destination directory
    (`keras_sam.io.output_group`), which is flushed to disk (`fsync`),
    given the umask's mode and then renamed over `path`: readers see either
    the old file or the complete new one, never a partial write.

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
    # io's temporary name (removed by `io.remove_leftovers` if a killed run
    # leaves it), the umask's mode, fsync, then the rename.
    with io.output_group() as group, group.path(path, ".safetensors") as tmp:
        save_file(arrays, tmp, metadata=metadata)
    _fsync_directory(path.parent)


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


# Sizes of ViT-H, the largest official SAM: (part, key, index in a sequence
# value or None, ViT-H's value, smallest valid value). No dimension may
# exceed _SIZE_MARGIN times ViT-H's, so that no checkpoint can make the
# loader build an enormous model.
_SIZE_MARGIN = 2
_VIT_H_SIZES = (
    ("image_encoder", "hidden_size", None, 1280, 1),
    ("image_encoder", "num_layers", None, 32, 1),
    ("image_encoder", "intermediate_dim", None, 5120, 1),
    ("image_encoder", "num_heads", None, 16, 1),
    ("image_encoder", "image_shape", 0, 1024, 1),
    ("image_encoder", "image_shape", 1, 1024, 1),
    ("image_encoder", "image_shape", 2, 3, 1),
    ("image_encoder", "patch_size", None, 16, 1),
    ("image_encoder", "num_output_channels", None, 256, 1),
    ("image_encoder", "window_size", None, 14, 0),
    ("prompt_encoder", "hidden_size", None, 256, 1),
    ("prompt_encoder", "image_embedding_size", 0, 64, 1),
    ("prompt_encoder", "image_embedding_size", 1, 64, 1),
    ("prompt_encoder", "input_image_size", 0, 1024, 1),
    ("prompt_encoder", "input_image_size", 1, 1024, 1),
    ("prompt_encoder", "mask_in_channels", None, 16, 1),
    ("mask_decoder", "hidden_size", None, 256, 1),
    ("mask_decoder", "num_layers", None, 2, 1),
    ("mask_decoder", "intermediate_dim", None, 2048, 1),
    ("mask_decoder", "num_heads", None, 8, 1),
    ("mask_decoder", "embedding_dim", None, 256, 1),
    ("mask_decoder", "num_multimask_outputs", None, 3, 0),
    ("mask_decoder", "iou_head_depth", None, 3, 1),
    ("mask_decoder", "iou_head_hidden_dim", None, 256, 1),
)
_VIT_H_GRID = 64  # 1024 / 16 patches a side
_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_architecture(
    config: Mapping, *, parameters: int | None = None
) -> None:
    """Refuse a SAM configuration larger than any this package builds.

    Every width, depth and size must be at most twice ViT-H's (hidden size
    2560, 64 blocks, MLP 10240, 32 heads, 2048-pixel images and 6 channels,
    patches of 32, a 128 x 128 token grid, windows of 28; decoder width
    512, 4 layers, MLP 4096, 16 heads, 6 extra masks, IoU head 6 deep and
    512 wide; 32 mask channels) and at least 1 (window size and extra masks:
    0). Keys absent from `config` are not checked (the layers' defaults are
    within the limits).

    Args:
        config: `{"image_encoder": ..., "prompt_encoder": ...,
            "mask_decoder": ...}` as `detect_architecture` returns.
        parameters: The number of values of the weights at hand; the
            weights of the blocks `config` describes must not need more
            (a file naming many blocks but holding the weights of few
            would otherwise make the loader build them all).

    Raises:
        ValueError: a part is not a dict, a size is not an integer or out
            of bounds, or the weights are too few for the architecture.
    """
    for part in _PARTS:
        if not isinstance(config.get(part), Mapping):
            raise ValueError(
                f"The SAM configuration must have a dict `{part}`. "
                f"Received: {part}={_short(config.get(part))}"
            )
    tiny_vit = "hidden_sizes" in config["image_encoder"]
    if tiny_vit:
        tiny_vit_mapping.check_tiny_vit(config["image_encoder"])
    for part, key, index, vit_h, minimum in _VIT_H_SIZES:
        if key not in config[part] or (tiny_vit and part == "image_encoder"):
            continue
        value = config[part][key]
        label = f"{part}.{key}"
        if index is not None:
            length = 3 if key == "image_shape" else 2
            if not isinstance(value, (list, tuple)) or len(value) != length:
                raise ValueError(
                    f"`{label}` must be a list of {length} integers. "
                    f"Received: {label}={_short(value)}"
                )
            value, label = value[index], f"{label}[{index}]"
        _check_size(label, value, minimum, _SIZE_MARGIN * vit_h, vit_h)
    encoder = config["image_encoder"]
    patch = encoder.get("patch_size", 16)
    for side in encoder.get("image_shape", (1024, 1024))[:2]:
        _check_size(
            "the image encoder's token grid side (image_shape / patch_size)",
            side // patch,
            1,
            _SIZE_MARGIN * _VIT_H_GRID,
            _VIT_H_GRID,
        )
    if parameters is not None:
        needed = _minimum_parameters(config)
        if needed > parameters:
            raise ValueError(
                f"The weights hold {parameters} values, fewer than the "
                f"{needed} at least that the architecture they describe "
                f"needs ({encoder.get('num_layers')} image encoder blocks "
                f"of width {encoder.get('hidden_size')}), so they are not "
                "a whole SAM checkpoint."
            )


def _check_size(label, value, minimum, limit, vit_h) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(
            f"`{label}` must be an integer. Received: {label}={_short(value)}"
        )
    if value < minimum:
        raise ValueError(
            f"`{label}` must be at least {minimum}. Received: {label}={value}"
        )
    if value > limit:
        raise ValueError(
            f"The architecture is larger than any SAM this package builds: "
            f"{label}={value} exceeds the limit {limit} (twice ViT-H's "
            f"{vit_h})."
        )


def _minimum_parameters(config: Mapping) -> int:
    """A lower bound of the parameter count of a SAM `config` (the weight
    matrices of the encoder blocks, patch embedding, absolute positions and
    neck, and of the decoder MLPs)."""
    enc, dec = config["image_encoder"], config["mask_decoder"]
    try:
        h = enc["hidden_size"]
        image = enc.get("image_shape", (1024, 1024, 3))
        patch = enc.get("patch_size", 16)
        out = enc.get("num_output_channels", 256)
        grid = (image[0] // patch) * (image[1] // patch)
        n = enc["num_layers"] * (4 * h * h + 2 * h * enc["intermediate_dim"])
        n += h * image[2] * patch * patch + out * h + 9 * out * out
        if enc.get("use_abs_pos", True):
            n += grid * h
        n += (
            dec["num_layers"] * 2 * dec["hidden_size"] * dec["intermediate_dim"]
        )
    except KeyError:
        return 0  # the constructors will say what is missing
    return int(n)


def _shape(key: str, value, ndim: int | None = None) -> tuple[int, ...]:
    shape = getattr(value, "shape", value)
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ValueError(
            "`state_dict` values must be arrays, tensors or shapes. "
            f"Received: state_dict[{key!r}] of type {type(value).__name__}"
        ) from None
    if ndim is not None and len(shape) != ndim:
        raise ValueError(
            f"`state_dict[{key!r}]` must have {ndim} dimensions. Received: "
            f"shape {shape}"
        )
    return shape


def _indices(keys, prefix: str) -> list[int]:
    """Sorted `i` of the keys `prefix{i}.*`; must be 0..n-1."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})
    if found != list(range(len(found))):
        shown = found if len(found) <= 20 else [*found[:20], "..."]
        raise ValueError(
            f"`state_dict` entries {prefix}{{i}} are not numbered 0..n-1. "
            f"Received indices: {shown}"
        )
    return found


# Keys whose shapes give the configuration, with their ranks.
_REQUIRED_KEYS = {
    "image_encoder.patch_embed.proj.weight": 4,
    "image_encoder.blocks.0.mlp.lin1.weight": 2,
    "image_encoder.neck.0.weight": 4,
    "prompt_encoder.no_mask_embed.weight": 2,
    "prompt_encoder.mask_downscaling.3.weight": 4,
    "mask_decoder.iou_token.weight": 2,
    "mask_decoder.mask_tokens.weight": 2,
    "mask_decoder.transformer.layers.0.mlp.lin1.weight": 2,
    "mask_decoder.iou_prediction_head.layers.0.weight": 2,
}
_OPTIONAL_RANKS = {"image_encoder.pos_embed": 4}


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

    The decoder's head count cannot be checked: a checkpoint trained with
    4 heads, detected with the default 8, gives a model that loads without
    error but computes wrong masks. Pass the count it was trained with.

    The result is checked by `check_architecture`: no size beyond twice
    ViT-H's, and no more blocks than the state dict holds weights for.

    Args:
        state_dict: Official parameter names to arrays, tensors or shapes.
        mask_decoder_num_heads: Attention heads of the two-way transformer;
            must divide half the decoder width.
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
            inconsistent or beyond the limits, or a value the shapes cannot
            give is not passed.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            "`state_dict` must be a mapping of parameter names to arrays. "
            f"Received: state_dict of type {type(state_dict).__name__}"
        )
    if isinstance(mask_decoder_num_heads, bool) or not isinstance(
        mask_decoder_num_heads, (int, np.integer)
    ):
        raise ValueError(
            "`mask_decoder_num_heads` must be a positive integer. Received: "
            f"mask_decoder_num_heads={_short(mask_decoder_num_heads)}"
        )
    # MobileSAM: a TinyViT image encoder under SAM's other two parts.
    tiny_vit = tiny_vit_mapping.is_tiny_vit(state_dict)
    missing = [
        k
        for k in _REQUIRED_KEYS
        if k not in state_dict
        and not (tiny_vit and k.startswith("image_encoder."))
    ]
    if missing:
        raise ValueError(
            "`state_dict` is not an official SAM state dict; missing keys "
            f"({len(missing)}): " + ", ".join(missing)
        )
    keys = list(state_dict)
    parameters = sum(
        math.prod(_shape(k, v, _REQUIRED_KEYS.get(k, _OPTIONAL_RANKS.get(k))))
        for k, v in state_dict.items()
    )

    def shape(key: str, ndim: int | None = None) -> tuple[int, ...]:
        return _shape(key, state_dict[key], ndim)

    if tiny_vit:
        encoder = tiny_vit_mapping.detect_tiny_vit(keys, shape)
        grid = tiny_vit_mapping.tiny_vit_grid(encoder)
    else:
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
    heads = int(mask_decoder_num_heads)
    if heads < 1 or (decoder_width // 2) % heads:
        raise ValueError(
            "`mask_decoder_num_heads` must be a positive divisor of half the "
            f"decoder width ({decoder_width // 2}, from "
            "mask_decoder.iou_token.weight). Received: "
            f"mask_decoder_num_heads={heads}"
        )
    decoder = {
        "hidden_size": decoder_width,
        "num_layers": len(_indices(keys, "mask_decoder.transformer.layers.")),
        "intermediate_dim": shape(
            "mask_decoder.transformer.layers.0.mlp.lin1.weight"
        )[0],
        "num_heads": heads,
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
    config = {
        "image_encoder": encoder,
        "prompt_encoder": prompt,
        "mask_decoder": decoder,
    }
    check_architecture(config, parameters=parameters)
    return config


def detect_checkpoint_architecture(
    path: str | os.PathLike, state_dict: Mapping, **kwargs
) -> dict[str, dict]:
    """`detect_architecture(state_dict, **kwargs)` of the checkpoint read
    from `path`; its `ValueError`s name the file."""
    try:
        return detect_architecture(state_dict, **kwargs)
    except ValueError as e:
        raise ValueError(
            f"Checkpoint {str(path)!r} does not describe a SAM this package "
            f"can build: {e}"
        ) from e


def read_metadata_config(
    path: str | os.PathLike, state_dict: Mapping
) -> dict[str, dict]:
    """The SAM configuration stored in a keras-sam safetensors file (the
    `config` metadata `SAM.save_keras_safetensors` writes), checked by
    `check_architecture` against `state_dict`, the file's tensors.

    Raises:
        ValueError: naming the file, when the metadata has no valid config
            or it is beyond the limits.
    """
    path = Path(path)
    try:
        text = read_safetensors_metadata(path).get("config")
        if text is None:
            raise ValueError("its metadata has no `config` entry")
        try:
            config = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"its `config` metadata is not JSON ({e})") from e
        if not isinstance(config, dict):
            raise ValueError("its `config` metadata is not a JSON object")
        parameters = sum(math.prod(_shape(k, v)) for k, v in state_dict.items())
        check_architecture(config, parameters=parameters)
    except ValueError as e:
        raise ValueError(
            f"Checkpoint {str(path)!r} does not describe a SAM this package "
            f"can build: {e}"
        ) from e
    return {part: dict(config[part]) for part in _PARTS}


def _detect_image_encoder(
    keys, shape, *, num_heads, window_size, global_indices
) -> dict:
    p = "image_encoder."
    proj = shape(p + "patch_embed.proj.weight", 4)  # (C, in, p, p)
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
                shape(f"{p}blocks.{i}.attn.rel_pos_h", 2)[0],
                shape(f"{p}blocks.{i}.attn.rel_pos_w", 2)[0],
            )
            for i in blocks
        ]
        if use_rel_pos
        else []
    )
    if use_abs_pos:
        pos = shape(p + "pos_embed", 4)  # (1, H/p, W/p, C)
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
        head_dim = shape(f"{p}blocks.0.attn.rel_pos_h", 2)[1]
        if head_dim < 1 or hidden_size % head_dim:
            raise ValueError(
                "`state_dict` relative position tables are not a head's "
                f"width: image_encoder.blocks.0.attn.rel_pos_h has {head_dim} "
                f"columns, which do not divide the hidden size {hidden_size}"
            )
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
