import numpy as np
import pytest
import torch

from keras_sam.layers import RandomFrequencyPositionalEmbeddings
from support.reference import official
from tests import helpers
from tests.layers import _subparity


def make_pair(num_features=12):
    torch.manual_seed(0)
    ref = official.PositionEmbeddingRandom(num_features)
    ours = RandomFrequencyPositionalEmbeddings(
        num_positional_features=num_features
    )
    rows = _subparity.encoder_rows("pe_layer.", "positional_embedding_layer/")
    _subparity.load(ours, ref, rows)
    return ours, ref


@pytest.mark.parity
@pytest.mark.parametrize("size", [(4, 4), (6, 10), (64, 64)])
def test_grid_matches_official(size):
    ours, ref = make_pair()
    with torch.no_grad():
        expected = official.to_numpy(ref(size)).transpose(1, 2, 0)
    helpers.assert_close(
        ours.encode_image(size), expected, helpers.PROMPT_ENCODER_RTOL
    )


@pytest.mark.parity
def test_coordinates_match_official():
    ours, ref = make_pair()
    coords = np.random.default_rng(0).uniform(-5, 200, (2, 7, 2))
    coords = coords.astype("float32")
    with torch.no_grad():
        expected = official.to_numpy(
            ref.forward_with_coords(torch.from_numpy(coords), (96, 160))
        )
    helpers.assert_close(
        ours.encode_coordinates(coords, (96, 160)),
        expected,
        helpers.PROMPT_ENCODER_RTOL,
    )


def test_gaussian_matrix_is_a_float32_buffer():
    import keras

    keras.config.set_dtype_policy("mixed_bfloat16")
    layer = RandomFrequencyPositionalEmbeddings(num_positional_features=4)
    layer.build()
    assert layer.trainable_weights == []
    (matrix,) = layer.non_trainable_weights
    assert matrix.dtype == "float32"
    out = layer.encode_image((3, 5))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert tuple(out.shape) == (3, 5, 8)


def test_rejects_bad_feature_count():
    with pytest.raises(ValueError, match="num_positional_features"):
        RandomFrequencyPositionalEmbeddings(num_positional_features=0)


def test_config_round_trip():
    layer = RandomFrequencyPositionalEmbeddings(
        num_positional_features=3, scale=2.0
    )
    clone = RandomFrequencyPositionalEmbeddings.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
