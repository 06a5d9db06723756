"""Safe reading of Keras `.weights.h5` files, whole or sharded.

Keras 3 writes a layer's variables as datasets `<layer path>/vars/<i>`;
a sharded save writes `<name>.weights.json`, whose `weight_map` names the
`<name>_0000N.weights.h5` shard of each layer. Only what plain weights
need is accepted: groups and datasets reached through hard links (no soft
or external links, no external or virtual storage, which could read other
files), uncompressed floating-point arrays, never empty, finite, whose
sizes together fit in what the file can hold. Reading runs no code from
the file (h5py reads data, never objects).
"""

import json
import os
from pathlib import Path

import numpy as np

# As for the other formats: an honest file declares at most its own size.
_DECLARED_RATIO = 1.5
_DECLARED_SLACK = 1 << 20
# Far deeper than the layer nesting of any SAM backbone.
_MAX_DEPTH = 32


def _import_h5py():
    try:
        import h5py
    except ImportError as e:  # keras depends on h5py; a broken install
        raise ImportError(
            "Reading KerasHub presets needs `h5py`: pip install h5py"
        ) from e
    return h5py


def _bad(path: Path, reason: str) -> ValueError:
    return ValueError(f"Cannot read weights file {str(path)!r}: {reason}")


def read_weights_h5(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The datasets of one `.weights.h5` file, by path.

    Args:
        path: The file.

    Returns:
        Dataset paths (`layers/.../vars/0`) to float32 or float64 arrays.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: naming the file: not HDF5, truncated or corrupt, a link
            or storage that points elsewhere, a compressed, non-float,
            empty or non-finite dataset, or more data declared than the
            file holds.
    """
    h5py = _import_h5py()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No weights file at {str(path)!r}")
    try:
        handle = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e) else "no details"
        raise _bad(
            path, f"not an HDF5 file, or truncated or corrupt ({reason})"
        ) from e
    with handle as f:
        datasets = {}
        _collect(h5py, path, f, "", datasets, 0)
        declared = sum(d.size * d.dtype.itemsize for d in datasets.values())
        limit = int(_DECLARED_RATIO * path.stat().st_size) + _DECLARED_SLACK
        if declared > limit:
            raise ValueError(
                f"Refusing weights file {str(path)!r}: its datasets declare "
                f"{declared} bytes, more than its {path.stat().st_size} "
                f"bytes can hold (limit {limit})."
            )
        out = {}
        for name, dataset in datasets.items():
            try:
                array = dataset[()]
            except (OSError, ValueError) as e:
                raise _bad(
                    path, f"dataset {name!r} is truncated or corrupt ({e})"
                ) from e
            if array.dtype == np.float16:
                array = array.astype(np.float32)
            if not np.isfinite(array).all():
                raise ValueError(
                    f"Refusing weights file {str(path)!r}: dataset {name!r} "
                    "holds non-finite values (NaN or infinity)."
                )
            out[name] = array
    return out


def _collect(h5py, path: Path, group, prefix: str, out: dict, depth: int):
    if depth > _MAX_DEPTH:
        raise _bad(path, f"groups nested deeper than {_MAX_DEPTH} levels")
    for name in group:
        full = f"{prefix}{name}"
        link = group.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise ValueError(
                f"Refusing weights file {str(path)!r}: {full!r} is a "
                f"{type(link).__name__}, which could read another file."
            )
        item = group[name]
        if isinstance(item, h5py.Group):
            _collect(h5py, path, item, full + "/", out, depth + 1)
            continue
        if not isinstance(item, h5py.Dataset):
            raise _bad(path, f"{full!r} is neither a group nor a dataset")
        if item.is_virtual or item.external:
            raise ValueError(
                f"Refusing weights file {str(path)!r}: dataset {full!r} "
                "keeps its data outside the file."
            )
        if item.compression is not None:
            raise ValueError(
                f"Refusing weights file {str(path)!r}: dataset {full!r} is "
                f"compressed ({item.compression}); Keras writes weights "
                "uncompressed."
            )
        if item.dtype.kind != "f" or item.dtype.itemsize not in (2, 4, 8):
            raise ValueError(
                f"Refusing weights file {str(path)!r}: dataset {full!r} has "
                f"dtype {item.dtype}, but SAM weights are floating point."
            )
        if item.shape is None or 0 in item.shape:
            raise ValueError(
                f"Refusing weights file {str(path)!r}: dataset {full!r} has "
                f"shape {item.shape}, empty, which no SAM weight is."
            )
        out[full] = item


def read_sharded_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The datasets of a sharded save: `path` is its `.weights.json`.

    Each shard the `weight_map` names must be a file of the same folder
    (a bare name ending in `.weights.h5`); no dataset may be in two shards.

    Raises:
        FileNotFoundError: `path` or a shard does not exist.
        ValueError: naming the file: malformed JSON or weight map, a shard
            name outside the folder, a dataset in two shards, or a shard
            refused by `read_weights_h5`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No weights file at {str(path)!r}")
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise _bad(path, f"not a Keras sharded weights map ({e})") from e
    shards = set()
    for value in weight_map.values():
        for name in value if isinstance(value, list) else [value]:
            if (
                not isinstance(name, str)
                or Path(name).name != name
                or not name.endswith(".weights.h5")
            ):
                raise ValueError(
                    f"Refusing weights file {str(path)!r}: shard name "
                    f"{name!r} is not a .weights.h5 file of its folder."
                )
            shards.add(name)
    out: dict[str, np.ndarray] = {}
    for name in sorted(shards):
        for key, array in read_weights_h5(path.parent / name).items():
            if key in out:
                raise ValueError(
                    f"Refusing weights file {str(path)!r}: dataset {key!r} "
                    "is in two shards."
                )
            out[key] = array
    return out
