"""The exporters' TensorFlow pieces (`keras_sam.backend.export`) on their
own: the crop size and the LiteRT form of large transposes."""

import math

import keras
import numpy as np
import pytest

from keras_sam.inference.transforms import preprocess_shape

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the exporters run on the TensorFlow backend",
)


def _half_integer_sizes(long_side: int, max_side: int, rng) -> set:
    """Sizes `(x, M)` and `(M, x)` where `x L / M` is a half-integer (the
    only ones where float64 rounding can differ from exact rounding), a
    few per long side `M`."""
    sizes = set()
    for m in range(1, max_side + 1):
        g = math.gcd(2 * long_side, m)
        if (2 * long_side // g) % 2 == 0:
            continue  # x L / M is never a half-integer
        xs = np.arange(m // g, m + 1, 2 * (m // g))
        for x in rng.choice(xs, min(len(xs), 2), replace=False):
            sizes |= {(int(x), m), (m, int(x))}
    return sizes


@pytest.mark.parametrize("long_side", [1024, 256, 1000])
def test_crop_size_rounds_as_the_predictor(long_side):
    """`resized_size` (int64, LiteRT builtins) equals the predictor's
    float64 `preprocess_shape` on every half-integer case up to 120,000
    pixels a side and on random sizes up to float32's exact 2^24, among
    them sizes where exact rounding would differ."""
    import tensorflow as tf

    from keras_sam.backend.export import resized_size

    rng = np.random.default_rng(long_side)
    sizes = _half_integer_sizes(long_side, 120_000, rng)
    m = rng.integers(1, 2**24, 5000)
    sizes |= set(zip(rng.integers(1, m + 1).tolist(), m.tolist(), strict=True))
    sizes |= {(x, m) for m in range(1, 300) for x in range(1, m + 1, 7)}
    sizes = np.array(sorted(sizes))
    expected = np.array([preprocess_shape(tuple(s), long_side) for s in sizes])
    actual = resized_size(tf.constant(sizes, tf.float32), long_side).numpy()
    np.testing.assert_array_equal(actual, expected)
    # Exact rounding half up would get some of them wrong.
    longest = sizes.max(axis=1, keepdims=True)
    exact = (2 * sizes * long_side + longest) // (2 * longest)
    assert np.any(exact != expected)


def test_large_transposes_in_steps():
    """A rank-8 transpose as rank-4 steps moves every element as one
    transpose does, for dynamic sizes."""
    import tensorflow as tf

    from keras_sam.backend.export import _transpose_in_steps

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 1, 2, 2, 4, 2, 3)).astype(np.float32)
    for perm in ([0, 7, 1, 3, 5, 2, 4, 6], rng.permutation(8).tolist()):

        @tf.function(input_signature=[tf.TensorSpec([None] * 8, tf.float32)])
        def steps(t, perm=tuple(perm)):
            return _transpose_in_steps(t, list(perm), tf.transpose)

        np.testing.assert_array_equal(steps(x).numpy(), np.transpose(x, perm))
