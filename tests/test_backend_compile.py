"""compile_inference: compiled results equal eager ones on every backend."""

import keras
import numpy as np
import pytest

from keras_sam import SAMMaskDecoder
from keras_sam._backend_compile import compile_inference
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
    import torch

    monkeypatch.setenv("KERAS_SAM_TORCH_COMPILE", "1")
    decoder, inputs = _decoder_and_inputs()
    run = compile_inference(decoder, decoder.call)
    out = run(**inputs)
    assert not out["masks"].requires_grad  # under no_grad
    torch._dynamo.reset()
    eager = decoder(**inputs)
    helpers.assert_close(
        out["masks"],
        helpers.to_numpy(eager["masks"]),
        helpers.SAME_BACKEND_RTOL,
    )
