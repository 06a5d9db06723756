"""Backend-specific compilation of inference functions.

`compile_inference(layer, fn)` returns a function with `fn`'s signature that
runs `fn` as one compiled program where that pays: `jax.jit` over the
layer's variable values (JAX eager dispatch compiles every op separately),
`tf.function` on TensorFlow, and eager PyTorch under `torch.no_grad()` (no
autograd graph is kept). `torch.compile` is opt-in with the environment
variable `KERAS_SAM_TORCH_COMPILE=1`: it makes each decoder call faster,
but its first call compiles for tens of seconds and every new prompt count
compiles again, which an interactive predictor or a one-image command never
earns back (figures in BENCHMARKS.md). Arguments are NumPy arrays or None;
shapes that change trigger a new trace, as usual.

`fuse_elementwise(fn)` runs a function of element-wise work (a residual
addition and layer norm, a bias and activation) as one fused kernel on
TensorFlow, whose graphs otherwise run such work op by op, a pass over
memory each (exact GELU is five); see its docstring.

This is the only module of the library that imports a backend directly.
"""

import os

import keras


def compile_inference(layer, fn):
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax(layer, fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True)
    if backend == "torch":
        return _torch(fn)
    return fn


def fuse_elementwise(fn):
    """`fn` as one fused kernel where that pays, else `fn` itself.

    On TensorFlow: `tf.function(fn, jit_compile=True)`, an XLA cluster that
    runs eagerly, inside other `tf.function`s and under a gradient tape,
    with one pass over memory instead of one per op (the results differ
    from op-by-op only in float rounding). JAX's `jit` fuses element-wise
    work by itself and PyTorch runs eagerly, so there `fn` is returned
    unchanged. Each new input shape compiles once.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, autograph=False)
    return fn


def _torch(fn):
    import torch

    if os.environ.get("KERAS_SAM_TORCH_COMPILE") == "1":
        fn = torch.compile(fn)

    def call(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return call


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
