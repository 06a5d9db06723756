"""Side by side with KerasHub's SAM layers: same weights, same inputs.

Shows where we match KerasHub (every prompt with labels -1, 0, 1) and where
we deliberately differ (labels 2/3, compute_output_shape of the dense
positional embedding).
"""

import numpy as np
import pytest

from keras_sam.layers import SAMMaskDecoder
from keras_sam.layers import SAMPromptEncoder
from tests import helpers
from tests.layers import test_prompt_encoder as tpe

# Same backend, same weights; op order differs slightly (label selection,
# broadcasting). Measured worst: 2.0e-7 (JAX), 0 (torch, TensorFlow).
KERAS_HUB_RTOL = 1e-5

ENCODER = dict(
    hidden_size=32, image_embedding_size=(4, 6), input_image_size=(64, 96)
)
DECODER = dict(
    hidden_size=32,
    num_layers=2,
    intermediate_dim=48,
    num_heads=2,
    embedding_dim=32,
    iou_head_hidden_dim=24,
)


def _copy(source_layer, target_layer):
    """Copy weights between sublayers of the same structure, in order."""
    pairs = list(zip(source_layer.weights, target_layer.weights, strict=True))
    for src, dst in pairs:
        assert tuple(src.shape) == tuple(dst.shape), (src.path, dst.path)
        dst.assign(src)


def encoder_pair():
    import keras_hub  # on use: it imports TensorFlow, seconds at collection

    ours = SAMPromptEncoder(**ENCODER)
    ours.build()
    for v in ours.weights:
        v.assign(np.random.default_rng(len(v.path)).normal(size=v.shape))
    theirs = keras_hub.layers.SAMPromptEncoder(**ENCODER)
    theirs.build()
    _copy(ours.positional_embedding_layer, theirs.positional_embedding_layer)
    for name in (
        "background_point_embed",
        "foreground_point_embed",
        "top_left_corner_embed",
        "bottom_right_corner_embed",
        "not_a_point_embed",
        "no_mask_embed",
        "mask_downscaler",
    ):
        _copy(getattr(ours, name), getattr(theirs, name))
    return ours, theirs


def decoder_pair():
    import keras_hub

    ours = SAMMaskDecoder(**DECODER)
    ours.build()
    for v in ours.weights:
        v.assign(0.2 * np.random.default_rng(len(v.path)).normal(size=v.shape))
    theirs = keras_hub.layers.SAMMaskDecoder(**DECODER)
    theirs.build()
    for name in (
        "transformer",
        "iou_token",
        "mask_tokens",
        "output_upscaling",
        "iou_prediction_head",
    ):
        _copy(getattr(ours, name), getattr(theirs, name))
    for a, b in zip(
        ours.output_hypernetworks_mlps,
        theirs.output_hypernetworks_mlps,
        strict=True,
    ):
        _copy(a, b)
    return ours, theirs


@pytest.mark.parametrize("case", sorted(tpe.PROMPT_CASES))
def test_same_outputs_for_labels_minus_one_zero_one(case):
    ours, theirs = encoder_pair()
    num_points, num_boxes, with_mask = tpe.PROMPT_CASES[case]
    prompts = tpe.random_prompts(ours, 2, num_points, num_boxes, with_mask)
    if num_points:
        prompts = tpe.with_padding_point(prompts)
    a, b = ours(**prompts), theirs(**prompts)
    for key in a:
        helpers.assert_close(
            a[key], helpers.to_numpy(b[key]), KERAS_HUB_RTOL, key
        )

    decoder, hub_decoder = decoder_pair()
    image = np.random.default_rng(1).normal(size=(1, 4, 6, 32))
    image = image.astype("float32")
    x, y = decoder(image_embeddings=image, **a), hub_decoder(image, **a)
    for key in ("masks", "iou_pred"):
        helpers.assert_close(
            x[key], helpers.to_numpy(y[key]), KERAS_HUB_RTOL, key
        )


def test_labels_two_and_three_differ_on_purpose():
    """Ours: box corners (official ONNX, SAM 2). KerasHub: foreground."""
    ours, theirs = encoder_pair()
    points = np.array([[[10.0, 12.0], [40.0, 50.0]]], "float32")
    labels = np.array([[2, 3]])
    a = helpers.to_numpy(
        ours(points=points, labels=labels)["prompt_sparse_embeddings"]
    )
    b = helpers.to_numpy(
        theirs(points=points, labels=labels)["prompt_sparse_embeddings"]
    )
    box = helpers.to_numpy(
        ours(boxes=points[:, None])["prompt_sparse_embeddings"]
    )
    np.testing.assert_allclose(a, box, rtol=0, atol=0)
    as_foreground = helpers.to_numpy(
        theirs(points=points, labels=np.array([[1, 1]]))[
            "prompt_sparse_embeddings"
        ]
    )
    np.testing.assert_allclose(b, as_foreground, rtol=0, atol=0)
    assert not np.allclose(a, b)


def test_dense_positional_shape_differs_on_purpose():
    ours, theirs = encoder_pair()
    shapes = dict(points_shape=(3, 2, 2), labels_shape=(3, 2))
    key = "prompt_dense_positional_embeddings"
    assert ours.compute_output_shape(**shapes)[key] == (1, 4, 6, 32)
    assert theirs.compute_output_shape(**shapes)[key][0] == 3  # claimed
    actual = ours(
        points=np.zeros((3, 2, 2), "float32"), labels=np.ones((3, 2))
    )[key]
    assert tuple(actual.shape) == (1, 4, 6, 32)
