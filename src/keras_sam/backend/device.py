"""Where the backend computes: on the CPU or on an accelerator."""

import functools

import keras


@functools.cache
def on_accelerator() -> bool:
    """Whether new tensors of the backend live on a GPU or TPU (JAX's
    default backend, Keras' default PyTorch device, a visible TensorFlow
    GPU). Fixed for the process: the backend and its devices are."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if backend == "torch":
        return keras.ops.zeros(()).device.type != "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return any(
            tf.config.list_logical_devices(kind) for kind in ("GPU", "TPU")
        )
    return False
