"""SAM's training step (`keras_sam.training.trainer`): what `fit` and
`train_on_batch` do before Keras' own."""

import keras
import pytest

from keras_sam.models.sam import SAM
from keras_sam.training import losses
from keras_sam.training.datasets import ShapesDataset
from tests import helpers


def _compiled_model(build=True):
    model = SAM.from_config_dicts(
        helpers.TINY_64_ENCODER, helpers.TINY_64_PROMPT, helpers.TINY_64_DECODER
    )
    if build:
        model.build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.SAMLoss())
    return model


@pytest.mark.parametrize("method", ["fit", "train_on_batch"])
@pytest.mark.parametrize("build", [True, False])
def test_the_optimizer_is_built_before_keras_trains(monkeypatch, method, build):
    """Built model: Keras' method finds the optimizer's variables made for
    the trainable weights. Unbuilt: left to Keras, as without keras_sam."""
    seen = {}

    def keras_method(self, *args, **kwargs):
        seen["built"] = self.optimizer.built
        seen["variables"] = len(self.optimizer.variables)

    monkeypatch.setattr(keras.Model, method, keras_method)
    model = _compiled_model(build)
    getattr(model, method)(None)
    assert seen["built"] is build
    if not build:
        return
    # Adam: a momentum and a velocity per trainable weight, and more.
    assert seen["variables"] >= 2 * len(model.trainable_variables) > 0


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="JAX's and PyTorch's trainers build the optimizer in fit anyway",
)
def test_fit_creates_no_variable_inside_the_traced_step():
    """On TensorFlow a `tf.function` that creates variables is traced
    twice; Keras' TensorFlow trainer would create the optimizer's in the
    first trace of the training step."""
    import tensorflow as tf

    model = _compiled_model()
    x, y = ShapesDataset(2, 2, seed=0, image_size=(64, 64), input_size=64)[0]
    created = []

    def creator(next_creator, **kwargs):
        created.append((kwargs.get("name"), tf.executing_eagerly()))
        return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert created, "the optimizer made no variable"
    assert all(eager for _, eager in created), created
    assert model.optimizer.iterations.numpy() == 1
