"""build_without_values: the loaded weights as if built then assigned, and
no variable left waiting."""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam.backend import variables
from keras_sam.convert import checkpoint
from support.fixtures import ENCODER
from support.reference import official


@pytest.fixture(scope="module")
def state() -> dict:
    ref = official.make_sam(
        ENCODER, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2
    )
    return {k: v.numpy() for k, v in ref.state_dict().items()}


def _model(state):
    return keras_sam.SAM.from_config_dicts(
        **checkpoint.detect_architecture(state)
    )


def _values(model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in model.weights]


def test_loaded_without_values_equals_built_then_assigned(state):
    plain = _model(state)
    plain.build()
    plain.load_state_dict(state)
    model = _model(state)
    variables.build_without_values(model)
    model.load_state_dict(state)
    for a, b in zip(_values(model), _values(plain), strict=True):
        np.testing.assert_array_equal(a, b)
    # Nothing left waiting: a later stateless scope initializes nothing,
    # and the model runs, compiled and not.
    with keras.StatelessScope():
        pass
    for a, b in zip(_values(model), _values(plain), strict=True):
        np.testing.assert_array_equal(a, b)
    images = np.zeros((1, 256, 256, 3), "float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(
            model.compiled_method("encode_image")(images)
        ),
        keras.ops.convert_to_numpy(
            plain.compiled_method("encode_image")(images)
        ),
    )


def _failed_load(state):
    """A model built without values whose loading failed (a key missing)."""
    model = _model(state)
    variables.build_without_values(model)
    broken = dict(state)
    broken.pop("mask_decoder.iou_token.weight")
    with pytest.raises(ValueError, match="iou_token"):
        model.load_state_dict(broken)
    return model


def test_a_failed_load_leaves_no_variable_waiting(state):
    model = _failed_load(state)
    variables.initialize_pending()
    # Every variable holds its initializer's value now.
    assert all(np.all(np.isfinite(v)) for v in _values(model))
    with keras.StatelessScope():
        pass


def test_a_variable_with_a_value_is_left_alone():
    variable = keras.Variable(np.ones((2,), "float32"))
    assert not variables.set_initial_value(variable, np.zeros((2,), "float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), 1.0)


def test_variables_not_given_a_value_get_their_initializers():
    layer = keras.layers.Dense(3, kernel_initializer="ones")
    layer.build((None, 2))  # the reference
    waiting = keras.layers.Dense(3, kernel_initializer="ones")
    with keras.StatelessScope(initialize_variables=False):
        waiting.build((None, 2))
    assert variables.set_initial_value(
        waiting.bias, np.full((3,), 7.0, "float32")
    )
    variables.initialize_pending()
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(waiting.kernel), np.ones((2, 3))
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(waiting.bias), np.full((3,), 7.0)
    )


def test_a_model_dropped_after_a_failed_load_gets_zeros(state):
    model = _failed_load(state)
    variables.discard_pending(model)  # no random values drawn
    assert all(not np.any(v) for v in _values(model))
    with keras.StatelessScope():
        pass


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="JAX compiles conversions"
)
def test_loading_on_jax_compiles_nothing():
    # Keras converts a NumPy initial value with `jnp.asarray`: one compiled
    # conversion per distinct shape (shapes no other test uses here, so
    # that none is compiled already). Loaded values go to the device as
    # they are.
    import jax.monitoring

    class Odd(keras.layers.Layer):
        def build(self, shape=None):
            self.kernel = self.add_weight(shape=(7, 13))
            self.bias = self.add_weight(shape=(13,), initializer="zeros")

    fresh = Odd()
    variables.build_without_values(fresh)
    values = [
        np.arange(7 * 13, dtype="float32").reshape(7, 13),
        np.linspace(0, 1, 13, dtype="float32"),
    ]
    compiles = []

    def listen(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for variable, value in zip(fresh.weights, values, strict=True):
            assert variables.set_initial_value(variable, value)
        variables.initialize_pending()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []
    for variable, value in zip(fresh.weights, values, strict=True):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(variable), value
        )


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a.T,  # a transposed matrix: copied in tiles
        lambda a: a,
        lambda a: a[::2],
        lambda a: a.T.astype("float64"),  # cast as it is copied
        lambda a: a.reshape(3, 100, 131).transpose(2, 0, 1),
    ],
)
def test_c_ordered_copies_equal_numpys(make):
    base = np.arange(300 * 131, dtype="float32").reshape(300, 131)
    value = make(base)
    copy = variables.c_ordered(value, "float32")
    assert copy.flags.c_contiguous
    assert copy.dtype == np.float32
    assert not np.shares_memory(copy, base)
    np.testing.assert_array_equal(copy, np.array(value, dtype="float32"))
