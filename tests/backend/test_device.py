"""on_accelerator: what the backend itself says about its devices."""

import keras

from keras_sam.backend.device import on_accelerator


def test_on_accelerator_is_the_backends_default_device():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        expected = jax.devices()[0].platform != "cpu"
    elif backend == "torch":
        import torch

        mps = torch.backends.mps.is_available()
        expected = torch.cuda.is_available() or mps
    else:
        import tensorflow as tf

        expected = bool(tf.config.list_logical_devices("GPU"))
    assert on_accelerator() is expected
