"""Shared pytest set-up: a fresh, seeded Keras session for every test."""

import keras
import pytest


@pytest.fixture(autouse=True)
def fresh_keras_session():
    # No gc.collect per test (0.2-0.4 s each with three frameworks loaded).
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


def pytest_configure(config):
    """On JAX, a persistent compilation cache for the session (a temporary
    folder, removed at the end): a test that compiles a program an earlier
    one already compiled (e.g. the four training runs of the same tiny model
    in `tests/scripts/test_train_shapes.py`) loads the executable XLA built
    instead of compiling it anew. Only compiles over 0.5 s are kept."""
    if keras.backend.backend() != "jax":
        return
    import atexit
    import shutil
    import tempfile

    import jax

    folder = tempfile.mkdtemp(prefix="keras_sam_xla_cache_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
