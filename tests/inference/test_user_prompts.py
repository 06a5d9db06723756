"""`keras_sam.inference.user_prompts`: the one check of users' prompts."""

import numpy as np
import pytest

from keras_sam.inference import user_prompts

SIZE = (40, 60)  # (H, W)


def test_check_prompts_returns_arrays_keyed_by_argument():
    checked = user_prompts.check_prompts(
        [[1, 2], [59.5, 40]], [1, 0], [0, 0, 60, 40], image_size=SIZE
    )
    assert sorted(checked) == ["box", "point_coords", "point_labels"]
    np.testing.assert_array_equal(checked["point_labels"], [1.0, 0.0])
    assert checked["box"].dtype == np.float64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(point_coords=[[1, 2]]), "point_labels=None"),
        (dict(point_coords=[[61, 2]], point_labels=[1]), "inside the image"),
        (dict(point_coords=[[1, 2]], point_labels=[4]), "point_labels"),
        (dict(point_coords=[[np.nan, 2]], point_labels=[1]), "finite"),
        (dict(point_coords=[1, 2], point_labels=[1]), r"\(N, 2\)"),
        (dict(box=[5, 5, 1, 1]), "x2 >= x1"),
        (dict(box=[0, 0, 5]), "box.shape"),
        (dict(mask_input=np.zeros((1, 8, 8))), "mask_input.shape"),
    ],
)
def test_bad_prompts_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        user_prompts.check_prompts(**kwargs, image_size=SIZE)


def test_a_batch_must_agree_on_its_size():
    with pytest.raises(ValueError, match="one box per prompt"):
        user_prompts.check_prompts(
            np.zeros((3, 1, 2)),
            np.ones((3, 1)),
            np.zeros((2, 4)),
            image_size=SIZE,
            batch_shape=("B",),
        )
