"""Backend-specific compilation of inference functions.

`compile_inference(layers, fn)` returns a function with `fn`'s signature
that runs `fn` as one compiled program where that pays: `jax.jit` over the
variable values of `layers` (a layer or a list of the layers `fn` reads;
JAX eager dispatch compiles every op separately),
`tf.function` on TensorFlow, and eager PyTorch under `torch.no_grad()` (no
autograd graph is kept). `torch.compile` is opt-in with the environment
variable `KERAS_SAM_TORCH_COMPILE=1`: it makes each decoder call faster,
but its first call compiles for tens of seconds and every new prompt count
compiles again, which an interactive predictor or a one-image command never
earns back (figures in BENCHMARKS.md). Arguments are NumPy arrays or None;
shapes that change trigger a new trace, as usual.

`compile_function(fn)` compiles a function of tensors alone (no layer, no
variables) the same way.

`fuse_elementwise(fn)` runs a function of element-wise work (a residual
addition and layer norm, a bias and activation) as one fused kernel on
TensorFlow, whose graphs otherwise run such work op by op, a pass over
memory each (exact GELU is five); see its docstring.

`use_persistent_cache(folder)` keeps JAX's compiled programs on disk across
processes.

One of the backend helpers (`keras_sam.backend`), the only modules of the
library that import a backend directly.
"""

import hashlib
import os
import platform
from pathlib import Path

import keras

from keras_sam import io

# JAX: programs that took at least this long to compile are kept, up to
# this many bytes in all (least recently used removed first).
JAX_CACHE_MIN_COMPILE_S = 0.2
JAX_CACHE_MAX_BYTES = 512 << 20


def compile_inference(layers, fn):
    if keras.backend.backend() == "jax":
        return _jax(layers, fn)
    # TensorFlow and PyTorch read the layer's variables themselves.
    return compile_function(fn)


def compile_function(fn):
    """`fn`, a function of tensors alone, as one compiled program:
    `jax.jit`, `tf.function`, or eager PyTorch under `torch.no_grad()`.
    Each new input shape traces once."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        # No Python control flow on tensors in our code: autograph's
        # source rewriting would only add to the first call.
        return tf.function(fn, reduce_retracing=True, autograph=False)
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


def _jax(layers, fn):
    import jax

    if not isinstance(layers, (list, tuple)):
        layers = [layers]
    # A variable `fn` reads that is not passed would be traced as a
    # constant: pass every variable of the layers it uses.
    variables = list(
        {id(v): v for layer in layers for v in layer.variables}.values()
    )

    def stateless(values, *args, **kwargs):
        mapping = list(zip(variables, values, strict=True))
        with keras.StatelessScope(state_mapping=mapping):
            return fn(*args, **kwargs)

    jitted = jax.jit(stateless)

    def call(*args, **kwargs):
        return jitted([v.value for v in variables], *args, **kwargs)

    return call


def use_persistent_cache(folder: str | os.PathLike) -> Path | None:
    """Keep JAX's compiled programs in a folder below `folder`.

    The folder is `jax-<version>-<machine>-<CPU>` (a hash of the CPU's
    feature flags), so that programs compiled by another version or for
    another processor are never loaded; it is created private (0o700) and
    used only if it belongs to this user and others cannot write in it: its
    files are machine code that JAX runs. Programs that took over
    `JAX_CACHE_MIN_COMPILE_S` to compile are kept, `JAX_CACHE_MAX_BYTES`
    in all (JAX removes the least recently used); a failed write (a full
    disk) is a warning and the program runs. A cache directory already set
    is left alone. The setting applies to the whole process.

    TensorFlow has none: XLA's persistent cache
    (`--tf_xla_persistent_cache_directory`) fails the running graph when
    an entry cannot be written, so a full disk would fail the user's
    command. PyTorch (eager) compiles nothing.

    Returns:
        The folder used, or None (another backend, a folder that cannot be
        made private, or a setting already made).
    """
    if keras.backend.backend() != "jax":
        return None
    import jax

    if jax.config.jax_compilation_cache_dir:
        return None
    name = f"jax-{jax.__version__}-{platform.machine()}-{_cpu_id()}"
    path = Path(folder) / name
    if not io.private_folder(path, create=True):
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs", JAX_CACHE_MIN_COMPILE_S
    )
    jax.config.update("jax_compilation_cache_max_size", JAX_CACHE_MAX_BYTES)
    return path


def _cpu_id() -> str:
    """A short hash of the processor's name and feature flags."""
    text = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    text += line
                if line.strip() == "":
                    break  # the first processor is enough
    except OSError:
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:12]
