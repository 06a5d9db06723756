"""The held-out shapes evaluation: helpers against NumPy, a tiny run."""

import numpy as np
import pytest

from keras_sam.models.sam import SAM
from keras_sam.training import evaluation
from tests import helpers

ENCODER = helpers.TINY_64_ENCODER
PROMPT = helpers.TINY_64_PROMPT
DECODER = dict(helpers.TINY_64_DECODER, iou_head_hidden_dim=32)


def test_mask_iou_matches_numpy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.uniform(size=(17, 23)) > 0.5
        b = rng.uniform(size=(17, 23)) > 0.3
        # Independent formula: |A n B| / (|A| + |B| - |A n B|), floats.
        inter = float((a.astype(np.float64) * b).sum())
        expected = inter / (a.sum() + b.sum() - inter)
        np.testing.assert_allclose(
            evaluation.mask_iou(a, b), expected, rtol=1e-12
        )
    empty = np.zeros((4, 4), bool)
    assert evaluation.mask_iou(empty, empty) == 0.0
    assert evaluation.mask_iou(~empty, ~empty) == 1.0
    with pytest.raises(ValueError, match="shape"):
        evaluation.mask_iou(empty, empty[:3])


def test_interior_point_and_tight_box():
    mask = np.zeros((20, 30), bool)
    mask[4:15, 6:27] = True  # rows 4-14, cols 6-26: centre (16, 9)
    np.testing.assert_array_equal(evaluation.interior_point(mask), [16, 9])
    np.testing.assert_array_equal(evaluation.tight_box(mask), [6, 4, 26, 14])
    # An L shape: the point stays inside the mask.
    mask[:] = False
    mask[2:18, 2:6] = True
    mask[14:18, 2:28] = True
    x, y = evaluation.interior_point(mask).astype(int)
    assert mask[y, x]
    with pytest.raises(ValueError, match="empty"):
        evaluation.tight_box(np.zeros((3, 3), bool))


@pytest.mark.integration  # the predictor's numbers: tests/inference
def test_evaluate_shapes_tiny_model():
    model = SAM.from_config_dicts(ENCODER, PROMPT, DECODER)
    model.build()
    result = evaluation.evaluate_shapes(
        model, num_images=3, image_size=(64, 64)
    )
    assert set(result) == {
        "point_miou",
        "box_miou",
        "num_objects",
        "num_images",
    }
    assert result["num_images"] == 3
    assert result["num_objects"] >= 3
    for key in ("point_miou", "box_miou"):
        assert 0.0 <= result[key] <= 1.0, result
    with pytest.raises(ValueError, match="num_images"):
        evaluation.evaluate_shapes(model, num_images=0)


@pytest.mark.integration  # the predictor's numbers: tests/inference
def test_shapes_objects_are_the_summary_per_object():
    from keras_sam.training.datasets.shapes import make_scene

    model = SAM.from_config_dicts(ENCODER, PROMPT, DECODER)
    model.build()
    kwargs = dict(num_images=3, image_size=(64, 64))
    objects = list(evaluation.shapes_objects(model, **kwargs))
    summary = evaluation.evaluate_shapes(model, **kwargs)
    assert len(objects) == summary["num_objects"]
    for key in ("point_iou", "box_iou"):
        mean = np.mean([o[key] for o in objects])
        np.testing.assert_allclose(mean, summary[f"{key[:-4]}_miou"])
    for o in objects:
        _, masks = make_scene(
            (evaluation.EVALUATION_SEED, o["image"], 0, 1), (64, 64)
        )
        assert o["area"] == np.count_nonzero(masks[o["object"]])
        assert 0.0 <= o["point_iou"] <= o["point_best_iou"] <= 1.0
        assert len(o["point_scores"]) == 3
