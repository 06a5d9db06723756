"""Building a model whose weights are about to be loaded, without drawing
random initial values first.

Building ViT-B draws 90 million random numbers for its initializers, which
loading a checkpoint then overwrites: about a second on TensorFlow and
PyTorch, and tens of seconds on JAX (eager random draws on the CPU).
`build_without_values(layer)` builds `layer` inside a
`keras.StatelessScope(initialize_variables=False)`, Keras' own way of
creating variables whose values come later; `set_initial_value` gives such
a variable its loaded value as its initial value (through its initializer,
which Keras calls once); `initialize_pending` then lets Keras initialize
every variable still waiting, as a `StatelessScope` does when it ends (with
its own initializer, for any the loader did not set).

Keras has no public setter for a waiting variable's initializer; this
module is the one place that sets it (`_initializer`, read by every backend's
`_deferred_initialize`), and checks first that the variable is one Keras
left waiting (no value, an initializer), else leaves it alone.
"""

import keras
import numpy as np


def build_without_values(layer) -> None:
    """Build `layer`; its variables wait for `set_initial_value` or
    `initialize_pending`, and hold no values until then."""
    with keras.StatelessScope(initialize_variables=False):
        layer.build()


def set_initial_value(variable, value) -> bool:
    """Make `value` (an array of the variable's shape, or a view of one) the
    value a waiting variable gets when it is initialized; False (nothing
    done) if `variable` is not waiting, i.e. holds a value already.

    The array the backend receives is a new C-ordered copy in the
    variable's dtype, made only when Keras initializes the variable, so that
    each copy lives only until the backend has its own. On JAX it is handed
    over already on the device (`jax.device_put`): given a NumPy array,
    Keras converts it with `jnp.asarray`, which compiles a conversion
    program for every distinct shape (36 for ViT-B, 0.5-0.8 s of a load).
    On PyTorch it is handed over as a tensor sharing its memory
    (`torch.from_numpy`), which Keras takes without copying it again.
    """
    if (
        getattr(variable, "_initializer", None) is None
        or getattr(variable, "_value", None) is not None
    ):
        return False

    to_backend = _to_backend()

    def initial(shape, dtype=None):
        return to_backend(c_ordered(value, dtype or variable.dtype))

    variable._initializer = initial
    return True


# Two 128 x 128 float32 tiles (64 KiB each) fit in a core's L2 cache.
_TILE = 128


def c_ordered(array, dtype) -> np.ndarray:
    """A new C-ordered copy of `array` in `dtype`.

    A transposed matrix (the official `(out, in)` weights read as Keras'
    `(in, out)` kernels) is copied in square tiles: element by element
    along its rows, every read would be a stride away (about half the
    speed, 0.3 s of loading ViT-B).
    """
    dtype = np.dtype(dtype)
    if (
        array.ndim != 2
        or array.flags.c_contiguous
        or not array.flags.f_contiguous
        or array.dtype != dtype
    ):
        return np.array(array, dtype=dtype, order="C")
    out = np.empty(array.shape, dtype)
    rows, cols = array.shape
    for i in range(0, rows, _TILE):
        for j in range(0, cols, _TILE):
            out[i : i + _TILE, j : j + _TILE] = array[
                i : i + _TILE, j : j + _TILE
            ]
    return out


def _to_backend():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.device_put
    if backend == "torch":
        import torch

        # Keras copies a NumPy array once more before `torch.as_tensor`; a
        # tensor sharing the new copy's memory goes through as it is.
        return torch.from_numpy
    return lambda array: array


def initialize_pending() -> None:
    """Initialize every waiting variable (with the value it was given, else
    its initializer's), as Keras does when a `StatelessScope` ends."""
    with keras.StatelessScope():
        pass


def discard_pending(layer) -> None:
    """`initialize_pending`, with zeros for the waiting variables of
    `layer`, a model whose loading failed and which is dropped: none of its
    random values are drawn for nothing."""
    for variable in layer.weights:
        set_initial_value(variable, np.zeros(variable.shape, "float32"))
    initialize_pending()
