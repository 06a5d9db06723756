"""The upscaling in `keras.ops` (for accelerators) against the NumPy one,
on every backend's CPU."""

import numpy as np
import pytest

from keras_sam.inference import device_upscale
from keras_sam.inference import transforms


def _both(logits, original, threshold=None):
    input_size = transforms.preprocess_shape(original, 256)
    args = (logits, input_size, original, (256, 256))
    return (
        device_upscale.postprocess_masks(*args, threshold=threshold),
        transforms.postprocess_masks(*args, threshold=threshold),
    )


@pytest.mark.parametrize(
    "lead, original",
    [((3,), (150, 225)), ((2, 3), (97, 31)), ((1,), (7, 300))],
)
def test_logits_and_masks_equal_numpy(lead, original):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=lead + (64, 64)).astype("float32")
    got, expected = _both(logits, original)
    assert got.shape == expected.shape == lead + original
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    masks, expected_masks = _both(logits, original, threshold=0.0)
    assert masks.dtype == bool
    # The same sums in the same order; a fused multiply-add may round a
    # value at the threshold the other way.
    settled = np.abs(expected) > 1e-5
    np.testing.assert_array_equal(masks[settled], expected_masks[settled])


def test_large_batches_go_in_chunks(monkeypatch):
    # 7 masks of 40x50 with room for 3 per call: chunks of 3, 3, 1 (padded).
    monkeypatch.setattr(device_upscale, "MAX_VALUES_PER_CALL", 3 * 40 * 50)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(7, 64, 64)).astype("float32")
    got, expected = _both(logits, (40, 50))
    assert got.shape == (7, 40, 50)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
