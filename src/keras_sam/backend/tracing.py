"""Whether a tensor holds values or is a placeholder of a trace."""

import keras


def is_tracing(x) -> bool:
    """Whether `x` is a placeholder of a trace rather than concrete values:
    a symbolic Keras tensor, a JAX tracer, a tensor inside a TensorFlow
    graph, or a tensor under `torch.compile`."""
    if isinstance(x, keras.KerasTensor):
        return True
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return isinstance(x, jax.core.Tracer)
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.executing_eagerly()
    if backend == "torch":
        import torch

        return bool(torch.compiler.is_compiling())
    return False
