"""Argument and tensor checks shared by every room of keras-sam.

Static checks (rank, last dimension, batch sizes) run on every call, symbolic
or eager. Value checks (label values, finite coordinates) need concrete
numbers, so they run only when the tensor holds them: in eager execution, not
under `jax.jit`, `tf.function` or symbolic Keras tensors.
"""

import keras
import numpy as np

from keras_sam.backend.tracing import is_tracing


def concrete_values(x):
    """Return `x` as a NumPy array, or None when it has no values yet."""
    if x is None or is_tracing(x):
        return None
    return np.asarray(keras.ops.convert_to_numpy(x))


def static_shape(x) -> tuple:
    """The static shape of a tensor or array, with None for unknown dims."""
    shape = x.shape if hasattr(x, "shape") else np.shape(x)
    return tuple(None if d is None else int(d) for d in shape)


def check_rank(name: str, shape: tuple, rank: int, layout: str) -> None:
    if len(shape) != rank:
        raise ValueError(
            f"`{name}` must have rank {rank} with layout {layout}. "
            f"Received: {name}.shape={shape}"
        )


def check_dim(
    name: str, shape: tuple, axis: int, expected: int, what: str
) -> None:
    got = shape[axis]
    if got is not None and got != expected:
        raise ValueError(
            f"`{name}` must have {what} {expected} on axis {axis}. "
            f"Received: {name}.shape={shape}"
        )


def common_batch_size(named_shapes: dict) -> int | None:
    """The one batch size that all given inputs share.

    Args:
        named_shapes: argument name -> static shape; None values are skipped.

    Raises:
        ValueError: two inputs have different known batch sizes.
    """
    batch, first = None, None
    for name, shape in named_shapes.items():
        if shape is None or shape[0] is None:
            continue
        if batch is None:
            batch, first = shape[0], name
        elif shape[0] != batch:
            raise ValueError(
                "All prompt inputs must have the same batch size. "
                f"Received: {first} batch {batch} and {name} batch "
                f"{shape[0]}"
            )
    return batch


def boolean(name: str, value) -> bool:
    """`value` as a bool: Python and NumPy booleans only (an array or a
    number is refused instead of being truth-tested)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(
        f"`{name}` must be a bool (True or False). Received: {name}={value!r}"
    )


def integer(name: str, value, low: int = 1) -> int:
    """`value` as an int >= `low`, or a ValueError naming `name`.

    Rejects booleans, non-integral floats and non-numbers instead of
    truncating them silently.
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        ok, value = True, int(value)
    if not ok or int(value) < low:
        raise ValueError(
            f"`{name}` must be an integer >= {low}. Received: {name}={value!r}"
        )
    return int(value)


def integer_pair(name: str, value) -> tuple[int, int]:
    """An int or a pair of ints >= 1 as `(height, width)`."""
    if isinstance(value, (int, np.integer, float, np.floating)) and not (
        isinstance(value, (bool, np.bool_))
    ):
        value = (value, value)
    try:
        items = tuple(value)
    except TypeError:
        items = ()
    if len(items) != 2:
        raise ValueError(
            f"`{name}` must be a positive int or a pair of positive ints "
            f"(height, width). Received: {name}={value!r}"
        )
    return tuple(integer(name, v) for v in items)
