"""Reading users' pictures and writing outputs, for every front end.

The command line (and later the server and bulk runs) read pictures and
write results only through this module, so that every picture is read the
same way and every output is written atomically: to a temporary file in the
destination folder, then renamed over the final name, so that an
interrupted run never leaves a half-written file.
"""

import contextlib
import json
import os
import tempfile

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A picture file as RGB uint8 `(H, W, 3)`.

    Raises:
        ValueError: the file is not a picture Pillow can read.
    """
    from PIL import Image
    from PIL import UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read {path} as an image ({e})") from e


def collect_images(inputs: list[str]) -> list[str]:
    """Picture files named by `inputs`: files as given, folders' pictures
    (by suffix, `IMAGE_SUFFIXES`) in sorted order.

    Raises:
        ValueError: an input is neither a file nor a folder, or nothing was
            found.
    """
    images = []
    for item in inputs:
        if os.path.isdir(item):
            images += sorted(
                os.path.join(item, name)
                for name in os.listdir(item)
                if name.lower().endswith(IMAGE_SUFFIXES)
            )
        elif os.path.isfile(item):
            images.append(item)
        else:
            raise ValueError(f"no such file or folder: {item}")
    if not images:
        raise ValueError("no images found")
    return images


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str):
    """Yield a binary file object whose contents replace `path` only when
    the block completes; on any error the temporary file is removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=suffix + ".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 `(H, W, 3)` or `(H, W)` array as a PNG, atomically."""
    from PIL import Image

    with atomic_output(path, ".png") as f:
        Image.fromarray(np.asarray(array)).save(f, format="PNG")


def jsonable(value):
    """`value` with NumPy arrays and scalars turned into lists and numbers."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_json(data, path: str | os.PathLike) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_output(path, ".json") as f:
        f.write(json.dumps(data, indent=2).encode())
