"""Image embeddings kept on disk: encode each picture once, prompt it later.

An embedding file is a NumPy `.npz` archive (read with
`allow_pickle=False`, so loading one never runs code) holding:

- `format`: `FORMAT`, the version of this layout.
- `embedding`: float32 `(1, He, We, C)`, what `SAMPredictor.
  get_image_embedding()` returns after `set_image`.
- `original_size`, `input_size`, `image_size`: int64 `(2,)` `(H, W)`: the
  picture's size, its size once resized into the model's input, and the
  model's input size.
- `model_fingerprint`: `model_fingerprint(model)` of the model that encoded
  it: a SHA-256 over the model's architecture and every weight.
- `image_digest`: `image_digest(image)` of the picture: a SHA-256 over the
  decoded RGB uint8 pixels and their shape. It is taken on the pixels as
  `keras_sam.io.read_image` decodes them, so the EXIF orientation (and the
  conversion of the file's mode to RGB) is part of it: the same file read
  the same way gives the same digest, re-encoding it to another format
  does not unless the pixels stay the same.

The file holds nothing that depends on the Keras backend, so a file saved
on one backend loads on the others (the fingerprint is the same on all
three for the same weights).
"""

import dataclasses
import hashlib
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from keras_sam import io

FORMAT = "keras-sam image embedding 1"
SUFFIX = ".embedding.npz"
"""What `keras-sam embed` appends to a picture's name below its folder."""

_FINGERPRINT_FORMAT = b"keras-sam model fingerprint 1\0"
_DIGEST_FORMAT = "keras-sam image digest 1"
_SIZES = ("original_size", "input_size", "image_size")
_DIGESTS = ("model_fingerprint", "image_digest")
_KEYS = ("format", "embedding", *_SIZES, *_DIGESTS)
# Members larger than this (uncompressed) are refused before being read: the
# largest SAM embedding, (1, 64, 64, 256) float32, is 4 MiB.
_MAX_MEMBER_BYTES = 1 << 30
_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"
# What reading a damaged or truncated archive raises.
_TRUNCATED = (zipfile.BadZipFile, EOFError, zlib.error, struct.error)
# What reading a damaged or foreign file can raise.
_DAMAGED = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    TypeError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
)


@dataclasses.dataclass(frozen=True)
class StoredEmbedding:
    """The contents of an embedding file (see the module docs).

    Attributes:
        path: the file it was read from or written to.
        embedding: float32 `(1, He, We, C)`.
        original_size: `(H, W)` of the picture.
        input_size: `(h, w)` of the picture resized into the model input.
        image_size: `(H, W)` of the model input.
        model_fingerprint: `model_fingerprint` of the model that encoded it.
        image_digest: `image_digest` of the picture.
    """

    path: str
    embedding: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    image_size: tuple[int, int]
    model_fingerprint: str
    image_digest: str


def model_fingerprint(model) -> str:
    """A SHA-256 (hex) of a SAM's architecture and weights.

    It covers the model's config (every layer's constructor arguments and
    dtype policy, without the model's own name and the `trainable` flags,
    which do not change what the model computes) and each weight's path
    below the model, dtype, shape and bytes, in order. The same weights give
    the same fingerprint on every backend, whatever the model is called.
    It reads every weight once (about a second per GiB of weights): compute
    it once per model and pass it on where a function takes `fingerprint`.
    """
    import keras  # here: the command line reads `SUFFIX` before Keras loads

    if not model.built:
        model.build()
    config = _without_trainable(dict(model.get_config()))
    config.pop("name", None)
    digest = hashlib.sha256(_FINGERPRINT_FORMAT)
    digest.update(_canonical_json(config) + b"\0")
    prefix = model.name + "/"
    for variable in model.weights:
        path = variable.path
        if path.startswith(prefix):
            path = path[len(prefix) :]
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        header = [path, value.dtype.str, list(value.shape)]
        digest.update(_canonical_json(header) + b"\0")
        digest.update(value.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def _without_trainable(value):
    if isinstance(value, dict):
        return {
            k: _without_trainable(v)
            for k, v in value.items()
            if k != "trainable"
        }
    if isinstance(value, (list, tuple)):
        return [_without_trainable(v) for v in value]
    return value


def _canonical_json(value) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), default=str
    ).encode()


def image_digest(image) -> str:
    """A SHA-256 (hex) of a decoded picture, uint8 `(H, W, 3)` RGB: its
    shape and pixel bytes. Digest the array `keras_sam.io.read_image` gives
    (EXIF orientation applied), as `keras-sam embed` does."""
    image = _check_image(image)
    h, w = image.shape[:2]
    digest = hashlib.sha256(f"{_DIGEST_FORMAT} {h}x{w}x3 uint8\0".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            "`image` must be a uint8 RGB array (H, W, 3). Received: "
            f"image.dtype={image.dtype}, image.shape={image.shape}"
        )
    return image


def _check_fingerprint(fingerprint) -> str:
    if not _is_digest(fingerprint):
        raise ValueError(
            "`fingerprint` must be a model_fingerprint() string (64 hex "
            f"digits). Received: fingerprint={fingerprint!r}"
        )
    return fingerprint


def _is_digest(text) -> bool:
    return (
        isinstance(text, str)
        and len(text) == 64
        and all(c in "0123456789abcdef" for c in text)
    )


def save_embedding(
    path: str | os.PathLike,
    predictor,
    image,
    *,
    fingerprint: str | None = None,
) -> StoredEmbedding:
    """Encode `image` with `predictor` and keep its embedding in `path`.

    Runs `predictor.set_image(image)` (so the predictor is ready to predict
    on it afterwards) and writes the file atomically (a temporary file in
    the same folder, renamed when complete; the folder must exist).

    Args:
        path: the file to write, by convention ending in `.npz`.
        predictor: a `keras_sam.SAMPredictor`.
        image: uint8 `(H, W, 3)` RGB array, as `keras_sam.io.read_image`
            gives it.
        fingerprint: `model_fingerprint(predictor.model)`, if already
            computed.

    Returns:
        What was written, as `load_embedding` reads it.

    Raises:
        ValueError: a bad image or fingerprint (see `SAMPredictor.
            set_image`).
        OSError: the file cannot be written.
    """
    image = _check_image(image)
    if fingerprint is None:
        fingerprint = model_fingerprint(predictor.model)
    fingerprint = _check_fingerprint(fingerprint)
    predictor.set_image(image)
    stored = StoredEmbedding(
        path=os.fspath(path),
        embedding=np.asarray(predictor.get_image_embedding(), np.float32),
        original_size=tuple(predictor.original_size),
        input_size=tuple(predictor.input_size),
        image_size=tuple(predictor.image_size),
        model_fingerprint=fingerprint,
        image_digest=image_digest(image),
    )
    arrays = {
        "format": np.array(FORMAT),
        "embedding": stored.embedding,
        **{k: np.array(getattr(stored, k), np.int64) for k in _SIZES},
        **{k: np.array(getattr(stored, k)) for k in _DIGESTS},
    }
    with io.output_group() as group, group.open(path) as f:
        np.savez(f, **arrays)
    return stored


def load_embedding(
    path: str | os.PathLike, *, model=None, image=None
) -> StoredEmbedding:
    """Read an embedding file and check that it is the one wanted.

    Args:
        path: a file written by `save_embedding` (or `keras-sam embed`).
        model: a `keras_sam.SAM`, or its `model_fingerprint`: the file must
            have been made by this model (None: not checked).
        image: uint8 `(H, W, 3)` RGB array: the file must hold the
            embedding of this picture (None: not checked).

    Returns:
        The `StoredEmbedding`.

    Raises:
        ValueError: the file is missing, damaged, truncated or not an
            embedding file, or was made by another model or of another
            picture; the message names the file and what differs.
    """
    path = os.fspath(path)
    stored = _read(path)
    expected_model = expected_image = None
    if model is not None:
        expected_model = (
            _check_fingerprint(model)
            if isinstance(model, str)
            else model_fingerprint(model)
        )
    if image is not None:
        image = _check_image(image)
        expected_image = image_digest(image)
    differences = []
    if expected_model is not None and stored.model_fingerprint != (
        expected_model
    ):
        differences.append(
            "another model (model fingerprint "
            f"{stored.model_fingerprint[:12]}..., this model's is "
            f"{expected_model[:12]}...)"
        )
    if expected_image is not None and stored.image_digest != expected_image:
        h, w = stored.original_size
        differences.append(
            f"another picture ({h}x{w} pixels with digest "
            f"{stored.image_digest[:12]}..., this picture is "
            f"{image.shape[0]}x{image.shape[1]} with digest "
            f"{expected_image[:12]}...)"
        )
    if differences:
        raise ValueError(
            f"{path} holds the image embedding of "
            + " and of ".join(differences)
        )
    return stored


class _Damaged(Exception):
    """Why a file is not a usable embedding file."""


def _read(path: str) -> StoredEmbedding:
    """The file's contents, checked for shape and type (not for identity)."""
    try:
        return _parse(path)
    except _Damaged as e:
        raise ValueError(
            f"cannot read {path} as a keras-sam embedding file ({e})"
        ) from e.__cause__


def _members(f) -> dict:
    """The arrays of an open `.npz` file, read without pickle."""
    head = f.read(len(_ZIP_MAGIC))
    f.seek(0)
    if head != _ZIP_MAGIC:
        # NumPy would take any other content for a pickle.
        if not head:
            raise _Damaged("the file is empty")
        if head == _NPY_MAGIC[: len(head)]:
            raise _Damaged("a single .npy array, not an .npz archive")
        raise _Damaged("not an .npz archive")
    data = np.load(f, allow_pickle=False)
    with data:
        missing = [k for k in _KEYS if k not in data.files]
        if missing:
            raise _Damaged(f"no {', '.join(missing)} in it")
        for key in _KEYS:
            size = data.zip.getinfo(key + ".npy").file_size
            if size > _MAX_MEMBER_BYTES:
                raise _Damaged(f"{key} takes {size} bytes")
        try:
            return {key: data[key] for key in _KEYS}
        except ValueError as e:
            if "allow_pickle" not in str(e):
                raise
            raise _Damaged(
                "it holds pickled Python objects, which are never loaded"
            ) from e


def _parse(path: str) -> StoredEmbedding:
    try:
        with open(path, "rb") as f:
            values = _members(f)
    except _TRUNCATED as e:
        raise _Damaged(f"damaged or truncated: {_reason(e)}") from e
    except _DAMAGED as e:
        raise _Damaged(_reason(e)) from e
    texts = {}
    for key in ("format", *_DIGESTS):
        value = values[key]
        if value.dtype.kind != "U" or value.ndim != 0:
            raise _Damaged(f"{key} is not a string")
        texts[key] = str(value)
    if texts["format"] != FORMAT:
        raise _Damaged(
            f"format {texts['format'][:60]!r}, not {FORMAT!r}: written by "
            "another version of keras-sam"
        )
    for key in _DIGESTS:
        if not _is_digest(texts[key]):
            raise _Damaged(f"{key} is not a SHA-256 hex digest")
    sizes = {}
    for key in _SIZES:
        value = values[key]
        if value.dtype.kind not in "iu" or value.shape != (2,):
            raise _Damaged(f"{key} is not two integers")
        if value.min() < 1:
            raise _Damaged(f"{key} {value.tolist()} is not positive")
        sizes[key] = tuple(int(v) for v in value)
    embedding = values["embedding"]
    if (
        embedding.dtype != np.float32
        or embedding.ndim != 4
        or embedding.shape[0] != 1
        or 0 in embedding.shape
    ):
        raise _Damaged(
            "embedding is not a float32 (1, He, We, C) array: "
            f"{embedding.dtype} {embedding.shape}"
        )
    if not np.all(np.isfinite(embedding)):
        raise _Damaged("embedding holds NaN or infinity")
    return StoredEmbedding(
        path=path,
        embedding=embedding,
        **sizes,
        model_fingerprint=texts["model_fingerprint"],
        image_digest=texts["image_digest"],
    )


def _reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return " ".join(text.split()) or type(error).__name__


def use_stored_embedding(
    predictor,
    path: str | os.PathLike,
    image,
    *,
    fingerprint: str | None = None,
) -> StoredEmbedding:
    """Set `predictor`'s image from a stored embedding instead of encoding.

    `load_embedding(path, model=predictor.model, image=image)`, then
    `predictor.set_image_embedding(...)`: afterwards `predictor.predict`
    gives exactly the masks it gives after `predictor.set_image(image)` on
    the model that stored it.

    Args:
        predictor: a `keras_sam.SAMPredictor`.
        path: the embedding file.
        image: uint8 `(H, W, 3)` RGB array: the picture it must be of.
        fingerprint: `model_fingerprint(predictor.model)`, if already
            computed (it reads every weight; pass it when using many
            files).

    Returns:
        The `StoredEmbedding` used.

    Raises:
        ValueError: as `load_embedding`; the predictor is left as it was.
    """
    stored = load_embedding(
        path,
        model=fingerprint if fingerprint is not None else predictor.model,
        image=image,
    )
    predictor.set_image_embedding(stored.embedding, stored.original_size)
    return stored


def candidate_paths(folder: str | os.PathLike, picture: str) -> list[str]:
    """Where `keras-sam embed` may have written `picture`'s embedding below
    `folder`: `folder/<name>.embedding.npz` for each trailing part of the
    picture's absolute path as `name` (`a.png`, `photos/a.png`, ...), the
    most specific first. `embed` names a picture by its path relative to
    the folder holding all its inputs (`keras_sam.io.mirrored_names`), which
    is one of these whatever the inputs were."""
    parts = Path(os.path.abspath(picture)).parts[1:]
    return [
        os.path.join(folder, *parts[i:-1], parts[-1] + SUFFIX)
        for i in range(len(parts))
    ]


def find_embedding(
    folder: str | os.PathLike, picture: str, image, *, model
) -> StoredEmbedding | None:
    """The embedding of `picture` kept below `folder`, checked.

    Looks at the `candidate_paths` that exist, the most specific first, and
    returns the first that holds the embedding of `image` made by `model`.

    Args:
        folder: the folder `keras-sam embed` wrote to.
        picture: the picture's path.
        image: its pixels, uint8 `(H, W, 3)` RGB (`keras_sam.io.
            read_image(picture)`).
        model: a `keras_sam.SAM` or its `model_fingerprint`.

    Returns:
        The `StoredEmbedding`, or None when no candidate file exists.

    Raises:
        ValueError: candidate files exist but none is for this picture and
            this model, or they are damaged: the error of the most specific
            one (it names the file and what differs).
    """
    if not isinstance(model, str):
        model = model_fingerprint(model)
    first_error = None
    for path in candidate_paths(folder, picture):
        if not os.path.isfile(path):
            continue
        try:
            return load_embedding(path, model=model, image=image)
        except ValueError as e:
            first_error = first_error or e
    if first_error is not None:
        raise first_error
    return None
