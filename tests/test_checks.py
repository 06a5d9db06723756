import numpy as np
import pytest

from keras_sam import checks
from keras_sam.layers import SAMMaskDecoder
from keras_sam.layers import SAMPromptEncoder


@pytest.mark.parametrize("value", [8.7, True, "abc", None, 0, -2, (8,)])
def test_integer_rejects_non_integers(value):
    with pytest.raises(ValueError, match="hidden_size"):
        checks.integer("hidden_size", value)


@pytest.mark.parametrize("value", [8, np.int64(8), 8.0])
def test_integer_accepts_integral_values(value):
    assert checks.integer("hidden_size", value) == 8


@pytest.mark.parametrize("value", [(2.5, 3), True, (1, 2, 3), "ab", (0, 4)])
def test_integer_pair_rejects(value):
    with pytest.raises(ValueError, match="image_embedding_size"):
        checks.integer_pair("image_embedding_size", value)


def test_layers_reject_truncation():
    with pytest.raises(ValueError, match="hidden_size"):
        SAMPromptEncoder(hidden_size=8.7)
    with pytest.raises(ValueError, match="image_embedding_size"):
        SAMPromptEncoder(image_embedding_size=(2.5, 3))
    with pytest.raises(ValueError, match="num_heads"):
        SAMMaskDecoder(
            hidden_size=16,
            num_layers=1,
            intermediate_dim=8,
            num_heads="2",
            embedding_dim=16,
        )
