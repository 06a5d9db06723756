import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keras_sam.inference import transforms
from support.reference import official
from tests import helpers


def _official_postprocess(logits, input_size, original_size, padded):
    """The official `Sam.postprocess_masks` (PyTorch interpolate)."""
    x = torch.from_numpy(logits)
    x = F.interpolate(x, padded, mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    x = F.interpolate(x, original_size, mode="bilinear", align_corners=False)
    return x.numpy()


@pytest.mark.parametrize(
    "original",
    [(480, 640), (1500, 2250), (100, 37), (1024, 1024), (7, 2000)],
)
def test_postprocess_matches_official_interpolation(original):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 64, 64)).astype("float32")
    input_size = transforms.preprocess_shape(original, 256)
    expected = _official_postprocess(logits, input_size, original, (256, 256))
    got = transforms.postprocess_masks(logits, input_size, original, (256, 256))
    assert got.shape == expected.shape
    helpers.assert_close(got, expected, 1e-5)


@pytest.mark.parametrize("size", [(480, 640), (1500, 2250), (1, 5), (999, 3)])
def test_preprocess_shape_is_official(size):
    expected = official.SamPredictor.__init__.__globals__[
        "ResizeLongestSide"
    ].get_preprocess_shape(size[0], size[1], 1024)
    assert transforms.preprocess_shape(size, 1024) == tuple(expected)


def test_bilinear_matrix_rows_sum_to_one():
    m = transforms.bilinear_matrix(7, 20)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    np.testing.assert_allclose(transforms.bilinear_matrix(5, 5), np.eye(5))


def test_apply_coords_scales_each_axis():
    coords = np.array([[10.0, 20.0], [0.0, 479.0]])
    out = transforms.apply_coords(coords, (480, 640), (768, 1024))
    np.testing.assert_allclose(out, coords * [1024 / 640, 768 / 480])


def test_postprocess_threads_blocks_and_threshold_agree(monkeypatch):
    """Row blocks on several threads give exactly the one-thread result, and
    `threshold` gives exactly `logits > threshold`."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 64, 64)).astype("float32")
    original = (1500, 2250)  # > 1M output pixels: the threaded path
    input_size = transforms.preprocess_shape(original, 256)
    args = (input_size, original, (256, 256))
    threaded = transforms.postprocess_masks(logits, *args)
    masks = transforms.postprocess_masks(logits, *args, threshold=0.0)
    monkeypatch.setattr(transforms, "_num_threads", lambda: 1)
    single = transforms.postprocess_masks(logits, *args)
    np.testing.assert_array_equal(threaded, single)
    assert masks.dtype == bool
    np.testing.assert_array_equal(masks, single > 0.0)
    expected = _official_postprocess(logits[None], *args[:2], (256, 256))[0]
    helpers.assert_close(single, expected, 1e-5)
