import numpy as np
import pytest

from keras_sam import visualize


def _scene():
    image = np.full((60, 80, 3), 200, np.uint8)
    masks = np.zeros((2, 60, 80), bool)
    masks[0, 10:30, 10:40] = True
    masks[1, 35:55, 45:75] = True
    return image, masks


def test_overlay_colours_masks_and_keeps_the_rest():
    image, masks = _scene()
    out = visualize.overlay(image, masks, legend=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    # Inside mask 0 (away from its outline): blended towards colour 0.
    expected = 0.55 * 200 + 0.45 * np.array(visualize.color(0))
    np.testing.assert_allclose(out[20, 25], expected, atol=1)
    # Outline pixels take the mask colour; background is untouched.
    assert tuple(out[10, 25]) == visualize.color(0)
    assert tuple(out[5, 5]) == (200, 200, 200)


def test_legend_panel_is_beside_the_image():
    image, masks = _scene()
    out = visualize.overlay(image, masks, scores=[0.91, 0.5])
    assert out.shape[0] == 60 and out.shape[1] > 80
    plain = visualize.overlay(image, masks, legend=False)
    np.testing.assert_array_equal(out[:, :80], plain)


def test_points_and_boxes_are_drawn():
    image, masks = _scene()
    out = visualize.overlay(
        image,
        masks[:0],
        points=[[70, 10]],
        point_labels=[0],
        boxes=[[2, 2, 50, 50]],
        legend=False,
    )
    assert tuple(out[10, 70]) == visualize.BACKGROUND
    assert tuple(out[2, 20]) != (200, 200, 200)


def test_colours_are_distinct():
    colours = {visualize.color(i) for i in range(40)}
    assert len(colours) == 40


@pytest.mark.parametrize(
    "image,masks,match",
    [
        (np.zeros((4, 4, 3), np.float32), np.zeros((1, 4, 4)), "image"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((1, 5, 4)), "masks"),
    ],
)
def test_bad_inputs(image, masks, match):
    with pytest.raises(ValueError, match=match):
        visualize.overlay(image, masks)
