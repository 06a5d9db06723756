"""Shared pytest set-up: a fresh, seeded Keras session for every test."""

import os

# On JAX the suite is bound by XLA's compiles: every test builds fresh
# models, and a layer called eagerly compiles each of its operations on its
# own (800 programs for the six mask-decoder parity tests). Two settings
# make a compile take about half the time: LLVM's code generation at -O0
# (a quarter less) and XLA's earlier element-wise code emitters instead of
# its newer MLIR "fusion emitters" (per operation 45 -> 25 ms; both are
# XLA's supported CPU code paths). The float arithmetic is the same
# operations on the same values (XLA's graph passes still run, and without
# fast-math, which XLA leaves off, LLVM does not reorder float operations
# at any level); the parity tests pass with their tolerances unchanged.
# Set before JAX is imported; a caller's own XLA_FLAGS wins.
if os.environ.get("KERAS_BACKEND") == "jax":
    os.environ.setdefault(
        "XLA_FLAGS",
        "--xla_backend_optimization_level=0"
        " --xla_cpu_use_fusion_emitters=false",
    )

# keras_sam before Keras: the suite runs with the settings a user's process
# gets (keras_sam sets TensorFlow's oneDNN switch, read at its import).
import keras_sam  # noqa: E402, F401, I001
import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_keras_session():
    # No gc.collect per test (0.2-0.4 s each with three frameworks loaded).
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


def pytest_configure(config):
    """keras-sam's user cache folder (`$KERAS_SAM_CACHE`: downloads, the
    cache of checkpoints read, compiled programs) is a temporary folder of
    the session, removed at the end, never the user's; commands run by the
    tests inherit it.

    On JAX, a persistent compilation cache for the session (a temporary
    folder, removed at the end): a test that compiles a program an earlier
    one already compiled (e.g. the four training runs of the same tiny model
    in `tests/scripts/test_train_shapes.py`) loads the executable XLA built
    instead of compiling it anew. Only compiles over 0.5 s are kept. The
    xdist workers share the folder the controller made (passed to them in
    `$KERAS_SAM_TEST_XLA_CACHE`; JAX writes its entries atomically), so a
    program compiled in one worker's file is loaded in the other's."""
    import atexit
    import os
    import shutil
    import tempfile

    user_cache = tempfile.mkdtemp(prefix="keras_sam_cache_")
    atexit.register(shutil.rmtree, user_cache, ignore_errors=True)
    os.environ["KERAS_SAM_CACHE"] = user_cache
    if keras.backend.backend() != "jax":
        return
    import jax

    folder = os.environ.get("KERAS_SAM_TEST_XLA_CACHE")
    if not folder:  # the controller (or a run without xdist)
        folder = tempfile.mkdtemp(prefix="keras_sam_xla_cache_")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        os.environ["KERAS_SAM_TEST_XLA_CACHE"] = folder
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
