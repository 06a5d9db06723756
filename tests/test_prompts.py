"""`keras_sam.prompts`: the prompts-per-image convention of `SAM`."""

import numpy as np
import pytest

from keras_sam import prompts


def test_prompts_per_image():
    one = {"points": np.zeros((2, 3, 2)), "labels": np.zeros((2, 3))}
    assert prompts.prompts_per_image(one) is None
    many = {"points": np.zeros((2, 4, 3, 2)), "labels": np.zeros((2, 4, 3))}
    assert prompts.prompts_per_image(many) == 4
    with pytest.raises(ValueError, match="all K per image"):
        prompts.prompts_per_image(
            {"points": np.zeros((2, 4, 3, 2)), "labels": np.zeros((2, 3))}
        )


def test_unknown_rank_says_to_compile_again():
    class Unknown:
        class shape:  # noqa: N801  (a TensorShape of unknown rank)
            rank = None

    with pytest.raises(ValueError, match=r"model\.compile"):
        prompts.prompts_per_image({"points": Unknown(), "labels": Unknown()})
