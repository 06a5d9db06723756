"""Tiny seeded SAM configurations and synthetic pictures.

Shared by the tests and the benchmarks: a two-block ViT on 256x256 inputs
with a 32-wide decoder, small enough for parity tests on every backend.
"""

import numpy as np

ENCODER = dict(
    hidden_size=64,
    num_layers=2,
    intermediate_dim=128,
    num_heads=4,
    global_attention_layer_indices=(1,),
    image_shape=(256, 256, 3),
    patch_size=16,
    num_output_channels=32,
    window_size=4,
)
PROMPT = dict(
    hidden_size=32, image_embedding_size=(16, 16), input_image_size=(256, 256)
)
DECODER = dict(
    hidden_size=32,
    num_layers=2,
    intermediate_dim=64,
    num_heads=2,
    embedding_dim=32,
)
IMAGE_SHAPE = (480, 640, 3)  # non-square, larger than the model input


def smooth_image(shape=IMAGE_SHAPE, seed=0):
    """A smooth random picture (blobs), so that masks have structure."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.zeros(shape, np.float64)
    for _ in range(6):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(30, 150)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        image += blob[..., None] * rng.uniform(0, 255, 3)
    image += rng.normal(0, 8, shape)
    return np.clip(image, 0, 255).astype(np.uint8)
