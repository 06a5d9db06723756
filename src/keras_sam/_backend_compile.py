"""Backend-specific compilation of inference functions.

`compile_inference(layer, fn)` returns a function with `fn`'s signature that
runs `fn` as one compiled program where that pays: `jax.jit` over the
layer's variable values (JAX eager dispatch compiles every op separately),
`tf.function` on TensorFlow, and plain eager on PyTorch. Arguments are
NumPy arrays or None; shapes that change trigger a new trace, as usual.
This is the only module of the library that imports a backend directly.
"""

import keras


def compile_inference(layer, fn):
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax(layer, fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True)
    return fn


def _jax(layer, fn):
    import jax

    variables = list(layer.variables)

    def stateless(values, *args, **kwargs):
        mapping = list(zip(variables, values, strict=True))
        with keras.StatelessScope(state_mapping=mapping):
            return fn(*args, **kwargs)

    jitted = jax.jit(stateless)

    def call(*args, **kwargs):
        return jitted([v.value for v in variables], *args, **kwargs)

    return call
