"""compile_inference: compiled results equal eager ones on every backend."""

import keras
import numpy as np
import pytest

from keras_sam import SAMMaskDecoder
from keras_sam.backend.compile import compile_inference
from keras_sam.backend.compile import use_persistent_cache
from tests import helpers


def _decoder_and_inputs():
    decoder = SAMMaskDecoder(
        hidden_size=32,
        num_layers=1,
        intermediate_dim=16,
        num_heads=2,
        embedding_dim=32,
        iou_head_hidden_dim=16,
    )
    decoder.build()
    rng = np.random.default_rng(0)
    inputs = dict(
        image_embeddings=rng.normal(size=(1, 4, 4, 32)).astype("float32"),
        prompt_dense_positional_embeddings=rng.normal(
            size=(1, 4, 4, 32)
        ).astype("float32"),
        prompt_sparse_embeddings=rng.normal(size=(3, 2, 32)).astype("float32"),
        prompt_dense_embeddings=rng.normal(size=(1, 4, 4, 32)).astype(
            "float32"
        ),
    )
    return decoder, inputs


def _check():
    decoder, inputs = _decoder_and_inputs()
    eager = decoder(**inputs)
    compiled = compile_inference(decoder, decoder.call)(**inputs)
    for key in ("masks", "iou_pred"):
        helpers.assert_close(
            compiled[key],
            helpers.to_numpy(eager[key]),
            helpers.SAME_BACKEND_RTOL,
        )


def test_compiled_equals_eager():
    _check()


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch.compile is torch-only"
)
def test_opt_in_torch_compile(monkeypatch):
    """`KERAS_SAM_TORCH_COMPILE=1` runs the function through torch.compile
    (Inductor), under no_grad, with eager's results. On one attention
    layer of the decoder, on image-to-token shapes (its folded product
    order, with its graph breaks), not the whole decoder, which took 159 s
    of a CI run on 2 cores for the same proof (the decoder under
    torch.compile is timed in benchmarks/decoder.py)."""
    import torch

    from keras_sam.layers.attention import MultiHeadAttentionWithDownsampling

    monkeypatch.setenv("KERAS_SAM_TORCH_COMPILE", "1")
    attention = MultiHeadAttentionWithDownsampling(
        hidden_size=32, num_heads=2, downsample_rate=2
    )
    attention.build()
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 16, 32)).astype("float32")  # (B, HW, C)
    tokens = rng.normal(size=(1, 3, 32)).astype("float32")  # (1, N, C)
    assert attention._cheapest_path(16, 3, 3, 1) == "few_keys"
    run = compile_inference(attention, attention.call)
    out = run(image, tokens, tokens)
    assert not out.requires_grad  # under no_grad
    torch._dynamo.reset()
    eager = attention(image, tokens, tokens)
    helpers.assert_close(
        out, helpers.to_numpy(eager), helpers.SAME_BACKEND_RTOL
    )


def test_fuse_elementwise_same_values_and_gradients():
    """The fused function (an XLA cluster on TensorFlow, `fn` itself
    elsewhere) gives fn's values and gradients, eagerly and compiled."""
    from keras_sam.backend.compile import fuse_elementwise

    norm = keras.layers.LayerNormalization(epsilon=1e-6)
    norm.build((None, 8))
    norm.gamma.assign(np.linspace(0.5, 1.5, 8).astype("float32"))

    def fn(x, bias):
        return keras.activations.gelu(norm(x + bias), approximate=False)

    fused = fuse_elementwise(fn)
    if keras.backend.backend() == "tensorflow":
        assert fused is not fn
        assert fused._jit_compile
    else:
        assert fused is fn
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 8)).astype("float32")
    bias = rng.normal(size=(8,)).astype("float32")
    expected = helpers.to_numpy(fn(x, bias))
    helpers.assert_close(fused(x, bias), expected, 1e-6, "eager")

    class Wrap(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.norm = norm

        def call(self, x, bias):
            return fused(x, bias)

    layer = Wrap()
    compiled = compile_inference(layer, layer.call)
    helpers.assert_close(compiled(x, bias), expected, 1e-6, "compiled")

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xt)
            a = tf.reduce_sum(fused(xt, bias) ** 2)
            b = tf.reduce_sum(fn(xt, bias) ** 2)
        for wrt in (xt, norm.gamma):
            helpers.assert_close(
                tape.gradient(a, wrt),
                helpers.to_numpy(tape.gradient(b, wrt)),
                1e-5,
                "gradient",
            )


def test_persistent_cache_in_a_private_folder(tmp_path, monkeypatch):
    import os

    backend = keras.backend.backend()
    if backend != "jax":
        # Eager PyTorch compiles nothing to keep; TensorFlow's XLA cache
        # fails the graph on a full disk, so it is not used.
        assert use_persistent_cache(tmp_path) is None
        assert "persistent_cache" not in os.environ.get("TF_XLA_FLAGS", "")
        return
    import jax

    # The test session's own cache is left alone.
    assert jax.config.jax_compilation_cache_dir
    assert use_persistent_cache(tmp_path) is None
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_compilation_cache_max_size",
    )
    saved = {n: getattr(jax.config, n) for n in names}
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        folder = use_persistent_cache(tmp_path)
        assert jax.config.jax_compilation_cache_dir == str(folder)
        assert jax.config.jax_compilation_cache_max_size > 0
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
    assert folder.parent == tmp_path
    assert folder.name.startswith(f"{backend}-")
    assert folder.stat().st_mode & 0o777 == 0o700
    # A folder others can write in is not used: its files are code.
    folder.chmod(0o777)
    if backend == "jax":
        try:
            jax.config.update("jax_compilation_cache_dir", None)
            assert use_persistent_cache(tmp_path) is None
        finally:
            jax.config.update("jax_compilation_cache_dir", saved[names[0]])
    else:
        assert use_persistent_cache(tmp_path) is None
